"""`fewshot palms`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fewshot.cli.app import app, err, out

DEFAULT_BASE = Path("runs/smollm2")


@app.command()
def palms(
    base: Annotated[Optional[Path], typer.Argument(help="The run to fine-tune (with --example: runs/smollm2 by default).")] = None,
    values: Annotated[Optional[Path], typer.Option(help="JSONL of values-targeted {\"prompt\", \"completion\"} lines.")] = None,
    control: Annotated[Optional[Path], typer.Option(help="JSONL of neutral lines, the same size: the control fine-tune.")] = None,
    probes: Annotated[Optional[Path], typer.Option(help="JSONL of held-out {\"category\", \"prompt\", \"desired\", \"undesired\"}.")] = None,
    example: Annotated[bool, typer.Option(help="Use the project's example set (fewshot/experiments/examples/palms).")] = False,
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for the two fine-tunes, report.md, palms.json and the plots.")] = Path("runs/palms"),
    method: Annotated[str, typer.Option(help="full or lora.")] = "full",
    epochs: Annotated[float, typer.Option(help="Passes over each fine-tuning set.")] = 3.0,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (default: the method's, as fewshot finetune).")] = None,
    shots: Annotated[int, typer.Option(help="Demonstrations per query in the capability suite.")] = 4,
    queries: Annotated[int, typer.Option(help="Queries per task of the capability suite.")] = 50,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """PALMS: fine-tune on a values-targeted set and on a neutral control; compare adherence and capability with the base."""
    from fewshot.errors import FewshotError
    from fewshot.experiments.palms import PALMS_DIR, run_palms

    if example:
        if values or control or probes:
            raise FewshotError("--example uses the project's own values, control and probes; drop --values/--control/--probes")
        values, control, probes = PALMS_DIR / "values.jsonl", PALMS_DIR / "neutral.jsonl", PALMS_DIR / "probes.jsonl"
        if base is None:
            base = DEFAULT_BASE
            if not base.exists():
                raise FewshotError(f"palms --example fine-tunes {base}; import it first: fewshot import-gguf --smollm2 {base}")
    elif base is None or not (values and control and probes):
        raise FewshotError("palms needs a base run, --values, --control and --probes (or --example)")
    if queries < 1 or shots < 0 or not epochs > 0:
        raise FewshotError("--queries must be >= 1, --shots >= 0 and --epochs > 0")
    run_palms(base, values, control, probes, out_dir, method=method, epochs=epochs, lr=lr, shots=shots, queries=queries,
              seed=seed, console=err)
    out.print((out_dir / "report.md").read_text(encoding="utf-8"), markup=False, highlight=False)
    out.print(f"wrote {out_dir}")
