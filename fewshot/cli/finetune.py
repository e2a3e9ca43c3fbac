"""`fewshot finetune`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fewshot.cli.app import app, err, out
from fewshot.cli.options import config_options
from fewshot.config import FINETUNE_LR, FinetuneConfig, TrainConfig

# Pre-training's own settings: a fine-tune takes its model, context and tokenizer from the base.
PRETRAINING_ONLY = ("preset", "context", "short_context", "short_context_steps", "attention", "window", "fit_steps_to_time")


@app.command()
@config_options(TrainConfig, skip=PRETRAINING_ONLY, helps={
    "lr": "Peak learning rate (default: per method, " + ", ".join(f"{m} {lr:g}" for m, lr in FINETUNE_LR.items()) + ")."})
@config_options(FinetuneConfig, into="tuning")
def finetune(
    given: dict,
    tuning: dict,
    base: Annotated[Optional[Path], typer.Argument(help="The run to start from (trained here or imported).")] = None,
    data: Annotated[Optional[Path], typer.Option(help="JSONL: {\"prompt\", \"completion\"} or {\"messages\": [...]} per line.")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Run directory to write.")] = Path("runs/finetune"),
    resume: Annotated[bool, typer.Option(help="Continue the fine-tune in --out from its latest checkpoint.")] = False,
    merge: Annotated[bool, typer.Option(help="LoRA/(IA)3: also fold the adapter into the base: an ordinary run in OUT/merged.")] = False,
) -> None:
    """Fine-tune a run on examples: every weight (full) or a peft adapter (lora, ia3); the other options are TrainConfig's."""
    from fewshot.errors import FewshotError
    from fewshot.files import check_new_dir
    from fewshot.train.finetune import finetune_config, merge_into_run
    from fewshot.train.loop import resume_config, train
    from fewshot.train.report import write_report

    if resume:
        if base is not None or data is not None or tuning:
            raise FewshotError("--resume continues the fine-tune in --out as it was set up; drop the base, --data and method options")
        config = resume_config(out_dir, **given)
        if config.finetune is None:
            raise FewshotError(f"{out_dir} is a pre-training run; continue it with `fewshot train --resume`")
    else:
        if base is None or data is None:
            raise FewshotError("finetune needs a base run and --data (a JSONL file of examples)")
        config = finetune_config(base, data, out_dir, given, **tuning)
    if merge:
        if config.finetune.method == "full":
            raise FewshotError("--merge folds an adapter into its base; a full fine-tune is already an ordinary run")
        check_new_dir(out_dir / "merged")
    result = train(config, resume=resume, console=err)
    write_report(result.run_dir)
    val = "" if result.val_loss is None else f", val loss {result.val_loss:.4f}"
    out.print(f"step {result.step}: train loss {result.train_loss:.4f} on the completions{val}; run directory: {result.run_dir}")
    if merge and not result.interrupted:
        merged = merge_into_run(result.run_dir, out_dir / "merged")
        out.print(f"merged into {merged.path}: an ordinary run directory")
