"""`fewshot soup`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fewshot.cli.app import app, err, out


@app.command()
def soup(
    runs: Annotated[Optional[list[Path]], typer.Argument(help="Fine-tunes of one base: full runs, or adapters of one kind.")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="The soup's run directory (with --example: a folder for everything).")] = Path("runs/soup"),
    greedy: Annotated[bool, typer.Option("--greedy/--uniform", help="Greedy soup (needs --val) or uniform soup.")] = True,
    val: Annotated[Optional[Path], typer.Option(help="Task file: its seeded halves are the greedy soup's validation set and the report's held-out set.")] = None,
    queries: Annotated[int, typer.Option(help="Queries in each half of --val at most.")] = 100,
    ensemble: Annotated[bool, typer.Option(help="Also score the logit ensemble of all ingredients (N models in memory).")] = True,
    example: Annotated[bool, typer.Option(help="Fine-tune BASE (the one run given) 5 times on an example task, then soup.")] = False,
    method: Annotated[str, typer.Option(help="--example: full, lora or ia3 ingredients.")] = "full",
    steps: Annotated[int, typer.Option(help="--example: fine-tuning steps per ingredient.")] = 40,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Model soups (Wortsman et al. 2022): average fine-tunes of one base, uniformly or greedily, and compare."""
    from fewshot.errors import FewshotError
    from fewshot.experiments.soup_report import run_example, run_soup

    runs = runs or []
    if queries < 1 or steps < 1:
        raise FewshotError("--queries and --steps must be >= 1")
    if example:
        if len(runs) != 1 or val is not None:
            raise FewshotError("soup --example takes one run, the base to fine-tune (e.g. runs/smollm2), and no --val")
        if method not in ("full", "lora", "ia3"):
            raise FewshotError(f"--method must be full, lora or ia3, got {method!r}")
        run_example(runs[0], out_dir, method=method, steps=steps, queries=queries, seed=seed, console=err)
        out.print((out_dir / "soup" / "soup.md").read_text(encoding="utf-8"), markup=False, highlight=False)
        out.print(f"wrote {out_dir}")
        return
    summary = run_soup(runs, out_dir, how="greedy" if greedy else "uniform", val_file=val, queries=queries, seed=seed,
                       ensemble=ensemble, console=err)
    if summary is not None:
        out.print((out_dir / "soup.md").read_text(encoding="utf-8"), markup=False, highlight=False)
    out.print(f"soup written to {out_dir} (a run directory: generate, eval, serve and finetune take it)")
