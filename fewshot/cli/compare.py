"""`fewshot compare`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fewshot.cli.app import app, err, out


@app.command()
def compare(
    base: Annotated[Path, typer.Argument(help="The run every method starts from (e.g. runs/smollm2).")],
    task_file: Annotated[Optional[Path], typer.Option(help="JSONL task file (input/target or input/choices/label).")] = None,
    example: Annotated[bool, typer.Option(help="Use the project's two example task files (a classification and a short-answer task).")] = False,
    k: Annotated[str, typer.Option("--k", help="Comma-separated K values.")] = "4,16,32",
    methods: Annotated[str, typer.Option(help="Comma-separated: icl, ia3, lora, full.")] = "icl,ia3,lora,full",
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for compare.json, compare.md, the plots and the runs.")] = Path("runs/compare"),
    queries: Annotated[int, typer.Option(help="Held-out queries, the same for every method and K.")] = 100,
    steps: Annotated[int, typer.Option(help="Fine-tuning steps for every method and K.")] = 40,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """T-Few's comparison: K-shot in-context learning against fine-tuning (full, LoRA, (IA)3) on the same K examples."""
    from fewshot.errors import FewshotError
    from fewshot.eval.harness import parse_shots
    from fewshot.experiments.compare import EXAMPLES_DIR, run_compare
    from fewshot.files import check_new_dir
    from fewshot.runs import RunDir

    if example == (task_file is not None):
        raise FewshotError("give --task-file FILE or --example (the project's two example tasks), one of them")
    if queries < 1 or steps < 1:
        raise FewshotError("--queries and --steps must be >= 1")
    try:
        ks = parse_shots(k)
    except FewshotError:
        raise FewshotError(f"--k takes comma-separated integers such as 4,16,32, got {k!r}") from None
    chosen = [m.strip() for m in methods.split(",") if m.strip()]
    check_new_dir(out_dir)
    RunDir.open(base)
    files = sorted(EXAMPLES_DIR.glob("*.jsonl")) if example else [task_file]
    for path in files:
        where = out_dir / path.stem if example else out_dir
        run_compare(base, path, ks, chosen, where, queries=queries, steps=steps, seed=seed, console=err)
        out.print((where / "compare.md").read_text(encoding="utf-8"), markup=False, highlight=False)
    out.print(f"wrote {out_dir}")
