"""`fewshot eval`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fewshot.cli.app import app, out, unescape
from fewshot.cli.options import config_options
from fewshot.config import DTYPE_HELP, check_dtype
from fewshot.eval.options import QUERIES, EvalOptions


@app.command("eval")
@config_options(EvalOptions)
def eval_command(
    given: dict,
    runs: Annotated[list[Path], typer.Argument(help="Run directories; several give one curve each.")],
    tasks: Annotated[Optional[str], typer.Option(help="Synthetic tasks or groups, e.g. arithmetic,wordscramble,2D+.")] = None,
    task_file: Annotated[list[Path], typer.Option(help="JSONL task file, repeatable.")] = [],  # noqa: B006
    template: Annotated[Optional[str], typer.Option(help="Task-file template with {input} and {target}; synthetic tasks keep GPT-3's formats.")] = None,
    shots: Annotated[str, typer.Option(help="Comma-separated K values.")] = "0,1,4",
    n: Annotated[int, typer.Option(help="Queries per task (task files: the first n lines).")] = QUERIES,
    seed: Annotated[int, typer.Option()] = 0,
    out_path: Annotated[Optional[Path], typer.Option("--out", help="results.json; results.md goes beside it.")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="ICL-curve PNG; <stem>_bars.png goes beside it.")] = None,
    device: Annotated[str, typer.Option()] = "cpu",
    dtype: Annotated[str, typer.Option(help=DTYPE_HELP)] = "fp32",
    contamination: Annotated[Optional[Path], typer.Option(
        help="Prepared data dir: flag queries sharing a 13-gram with its train split (GPT-3 §4) and also score the clean ones.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing --out and --plot files.")] = False,
    adapter: Annotated[Optional[Path], typer.Option(help="A LoRA/(IA)3 run from `fewshot finetune`, applied to each run "
                                                         "(an adapter run given as a run loads onto its own base).")] = None,
) -> None:
    """Few-shot accuracy with 95% intervals, GPT-3 style: K demonstrations, then the query."""
    import fewshot
    from fewshot.eval.harness import evaluate, load_tasks, parse_shots, results_paths, results_table, write_results
    from fewshot.eval.plots import bars_path
    from fewshot.files import check_output_file
    from fewshot.runs import RunDir

    EvalOptions(**given)  # checked before any task is read or model loaded
    check_dtype(dtype, "eval")
    ks = parse_shots(shots)
    outputs = [*(results_paths(out_path) if out_path else ()), *((plot, bars_path(plot)) if plot else ())]
    for path in outputs:  # before the evaluation, so a bad path never costs its results
        check_output_file(path, overwrite)
    for run in runs:  # so the last run's typo does not surface after the first run's evaluation
        RunDir.open(run)
    task_list = load_tasks(tasks, task_file, None if template is None else unescape(template), n, seed)
    if contamination is not None:
        from fewshot.eval.contamination import flag_tasks

        task_list = flag_tasks(task_list, contamination, progress=out.is_terminal)
        for t in task_list:
            out.print(f"{t.name}: {sum(t.contaminated)} of {len(t.queries)} queries contaminated (13-gram overlap with {contamination})")
    evaluations = []
    for run in runs:
        lm = fewshot.load(run, device=device, adapter=adapter, dtype=dtype)
        result = evaluate(lm, task_list, ks, seed, model=str(run), **given)
        evaluations.append(result)
        out.print(results_table(result, ks, f"{run}: score [95% Wilson interval], n={n} per cell"))
        out.print(f"{result.examples} examples in {result.seconds:.1f} s: {result.examples_per_second:.1f} examples/s")
    if out_path is not None:
        written = write_results(evaluations, out_path)
        out.print(f"wrote {written[0]} and {written[1]}")
    if plot is not None:
        from fewshot.eval.plots import plot_icl_curves, plot_task_bars

        data = [e.to_json() for e in evaluations]
        out.print(f"wrote {plot_icl_curves(data, plot)} and {plot_task_bars(data, bars_path(plot))}")
