"""The meta-training mixture that makes a small model a few-shot learner (`--data icl`).

Documents, each ended by the end-of-text token:
- few-shot *episodes*: one procedurally generated task (fewshot.tasks.families), shown as
  2-48 solved examples in one of many formats, sometimes under an instruction line;
- GINC documents (fewshot.tasks.meta.ginc): latent-concept text from a mixture of HMMs;
- bursty, Zipfian item sequences (fewshot.tasks.meta.bursty, Chan et al. 2022);
- repeats: a random line shown again and again, the plainest lesson in copying from context;
- natural text: passages of the default corpus (Shakespeare), so the model still writes English.

Everything is generated from a seed and written once as an ordinary prepared dataset (byte
tokenizer), so training, resume and torchrun treat it like any other data. The held-out
task families never appear; `write_held_out_tasks` writes them as JSONL task files for
`fewshot eval --task-file`.

`curriculum=F` writes the first share F of the stream from the training families alone and marks
the data as ordered, so training meets the novel formats, programs and pipelines only later.

`loss=answers` writes a loss mask beside the data (fewshot.data.prepare.add_loss_mask): in
episodes only the answers are learned (with the character that ends each), not the inputs, which
are random draws that no context predicts, nor the instruction; other documents are learned whole.
MetaICL and Kirsch et al. (2022) meta-train on the answers alone.

`bursty=False` is the ablation: every example of an episode comes from a different task (and
every GINC segment from a different concept, and item classes are drawn independently), so
the same families, formats and text are there, but the context no longer predicts the answer.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from fewshot.data.corpus import shakespeare_documents
from fewshot.data.prepare import add_loss_mask, prepare
from fewshot.errors import FewshotError
from fewshot.tasks.base import Example, distinct_examples
from fewshot.tasks.taskfile import Template
from fewshot.tasks import families as procedural
from fewshot.tasks.meta import bursty, ginc
from fewshot.tasks.families import Family, held_out_families, pick_family, training_families
from fewshot.tasks.families.pipelines import pipeline_family
from fewshot.tasks.families.programs import program_family
from fewshot.tasks.frozen.families import TEMPLATES as FROZEN_TEMPLATES

MIXTURE_FILE = "mixture.json"
DOCUMENT_FILE_BYTES = 8 << 20

# (template, separator between examples). The four evaluation formats come first; the eval
# harness always separates examples by a blank line, training also uses single newlines.
FORMATS: tuple[tuple[str, str], ...] = (
    ("Input: {input}\nOutput: {target}", "\n\n"),
    ("Q: {input}\nA: {target}", "\n\n"),
    ("{input} -> {target}", "\n\n"),
    ("{input} = {target}", "\n\n"),
    ("{input} -> {target}", "\n"),
    ("{input} = {target}", "\n"),
    ("input: {input}\noutput: {target}", "\n\n"),
    ("{input}: {target}", "\n"),
    ("{input} => {target}", "\n"),
    ("x: {input}\ny: {target}", "\n"),
    ("Word: {input}\nAnswer: {target}", "\n\n"),
    ("In: {input} Out: {target}", "\n"),
    ("{input}\t{target}", "\n"),
    ("Question: {input}\nAnswer: {target}", "\n\n"),
)
EVAL_TEMPLATES: dict[str, str] = {
    "input-output": "Input: {input}\nOutput: {target}",  # the task file's default template (fewshot.tasks.taskfile)
    "q-a": "Q: {input}\nA: {target}",
    "arrow": "{input} -> {target}",
    "equals": "{input} = {target}",
}
INSTRUCTION_P = 0.3
# Novel formats: pieces that episodes' own templates are assembled from, so that no format of a
# test prompt has to have been seen in training (the delimiters and the label words vary per episode).
DELIMITER_CHARS = "-=>|:~#*+/<;!.^"
LABEL_ENDS = (":", ":", " :", " -", ">", "=", ")", "]", " |", "")
Loss = Literal["all", "answers"]


@dataclass(frozen=True)
class MixtureConfig:
    seed: int = 0
    megabytes: float = 24.0      # of text; about 30 minutes of training for the `icl` preset
    bursty: bool = True
    episode_chars: int = 900     # few-shot episodes grow to about this length (the model's context)
    ginc_fraction: float = 0.05  # of documents
    zipf_fraction: float = 0.1
    text_fraction: float = 0.05
    repeat_fraction: float = 0.1  # random strings shown again: the plainest lesson in copying from context
    novel_formats: float = 0.0   # share of episodes in a template assembled for them alone (`novel_format`)
    programs: float = 0.0        # weight of the `program` family (fewshot.tasks.families.programs); 0: absent
    pipelines: float = 0.0       # weight of the `pipeline` family (fewshot.tasks.families.pipelines); 0: absent
    # A curriculum: this share of the stream, at its start, draws episodes from the training
    # families alone in the usual formats (no programs, pipelines or novel formats); training
    # then reads the stream in order, so the model meets the rest after the plain tasks.
    curriculum: float = 0.0
    loss: Loss = "all"           # "answers": episodes teach only their answers (a loss mask beside the data)

    def __post_init__(self) -> None:
        if self.megabytes <= 0:
            raise FewshotError(f"the ICL mixture needs a positive size, got {self.megabytes} MB")
        fractions = (self.ginc_fraction, self.zipf_fraction, self.text_fraction, self.repeat_fraction)
        if any(f < 0 for f in fractions) or sum(fractions) >= 1:
            raise FewshotError("ICL mixture fractions must be >= 0 and leave room for few-shot episodes")
        if not 0 <= self.novel_formats <= 1:
            raise FewshotError(f"the share of episodes in novel formats must be in [0, 1], got {self.novel_formats}")
        for name in ("programs", "pipelines"):
            if getattr(self, name) < 0:
                raise FewshotError(f"the {name}' weight must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.curriculum < 1:
            raise FewshotError(f"the curriculum's first share of the stream must be in [0, 1), got {self.curriculum}")
        if self.loss not in get_args(Loss):
            raise FewshotError(f"the mixture's loss must be one of {', '.join(get_args(Loss))}, got {self.loss!r}")
        if self.curriculum and not (self.novel_formats or self.programs or self.pipelines):
            raise FewshotError("a curriculum holds back novel formats, programs or pipelines until later; "
                               "ask for one of them (formats=, programs=, pipelines=)")

    @property
    def name(self) -> str:
        """Directory name: readable, plus a digest of every field and of what the generators
        write, so two mixtures never share one, and a mixture written before a family was added
        *or changed* is not reused (a digest of names alone missed edited parameters)."""
        fields = asdict(self)
        for added_later in ("novel_formats", "programs", "pipelines", "curriculum"):  # mixtures without them keep the names they were written under
            if not fields[added_later]:
                del fields[added_later]
        if fields["loss"] == "all":
            del fields["loss"]
        digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode())
        for text in generator_fingerprint(self):
            digest.update(text.encode())
        kind = "icl" if self.bursty else "icl-nonbursty"
        return f"{kind}-{self.megabytes:g}mb-seed{self.seed}-{digest.hexdigest()[:8]}"


def episode_families(config: MixtureConfig) -> tuple[Family, ...]:
    """The families a mixture's episodes draw from: every training family, and programs and pipelines if asked for."""
    return (training_families() + ((program_family(config.programs),) if config.programs else ())
            + ((pipeline_family(config.pipelines),) if config.pipelines else ()))


def generator_fingerprint(config: MixtureConfig, documents_shown: int = 300, tasks_per_family: int = 3) -> Iterator[str]:
    """The mixture's first documents and a few tasks of every training family, with their
    examples: a cheap sample (~0.3 s; ~0.5 s with the first load of the word list) that changes
    when any generator does."""
    yield from itertools.islice(documents(config), documents_shown)
    if config.novel_formats:  # the first documents may hold none of the rare formats a change touches
        rng = random.Random("fingerprint/novel-formats")
        yield json.dumps([novel_format(rng) for _ in range(2000)])
    for family in episode_families(config):
        rng = random.Random(f"fingerprint/{family.name}")
        for _ in range(tasks_per_family):
            task = family.build(rng)
            yield json.dumps([family.name, task.instruction, task.examples(4, rng)])


def _format_key(template: str) -> str:
    return " ".join(template.lower().split())


# The held-out sets' own formats (both sets), which a novel format must never be: otherwise a
# test format would have been seen in training after all (the frozen set's "{input} | {target}"
# came up in 0.6% of novel formats before this rule; found after the first formats arm ran).
HELD_OUT_FORMATS = frozenset(_format_key(t) for t in (*EVAL_TEMPLATES.values(), *FROZEN_TEMPLATES.values()))


def novel_format(rng: random.Random) -> tuple[str, str]:
    """A (template, separator) assembled at random: label words or letters with an end mark on two
    lines ("Stone> {input}\nBlue= {target}"), or a one-line delimiter of 1-3 marks or a word
    ("{input} ~| {target}", "{input} then {target}"). Thousands of formats, so what a model can
    learn from them is to read the format off the examples, not to know it. Never a held-out
    set's format, compared without case or spacing."""
    while True:
        template, separator = _assembled_format(rng)
        if _format_key(template) not in HELD_OUT_FORMATS:
            return template, separator


def _assembled_format(rng: random.Random) -> tuple[str, str]:
    def label() -> str:
        text = rng.choice(procedural.words()) if rng.random() < 0.7 else procedural.letters(rng, 1, 3)
        text = rng.choice((str.lower, str.capitalize, str.upper))(text)
        return text + rng.choice(LABEL_ENDS)
    if rng.random() < 0.5:
        first, second = label(), label()
        while second == first:
            second = label()
        return f"{first} {{input}}\n{second} {{target}}", rng.choice(("\n", "\n\n"))
    if rng.random() < 0.8:
        mark = "".join(rng.choice(DELIMITER_CHARS) for _ in range(rng.randint(1, 3)))
        space = rng.choice((" ", " ", ""))
    else:
        mark, space = rng.choice(procedural.words()), " "
    return f"{{input}}{space}{mark}{space}{{target}}", rng.choice(("\n", "\n\n"))


def episode(rng: random.Random, families: tuple[Family, ...], max_chars: int, bursty: bool = True,
            novel_formats: float = 0.0) -> str:
    """One task, many solved examples, one format: what a K-shot prompt looks like."""
    return episode_with_answers(rng, families, max_chars, bursty, novel_formats)[0]


def episode_with_answers(rng: random.Random, families: tuple[Family, ...], max_chars: int, bursty: bool = True,
                         novel_formats: float = 0.0) -> tuple[str, list[tuple[int, int]]]:
    """An episode and where its answers are: [start, end) in characters, each the answer as a
    query's continuation (the template's gap, the target) and the one character after it (the
    separator, or the end of the document), since that is where a model learns to stop."""
    # The draw only when asked for: mixtures without novel formats keep their bytes.
    template, separator = novel_format(rng) if novel_formats and rng.random() < novel_formats else rng.choice(FORMATS)
    template = Template(template)
    task = pick_family(rng, families).build(rng)
    shown: list[str] = []
    answers: list[tuple[int, int]] = []
    start = 0  # where the next piece starts in the joined episode
    if rng.random() < INSTRUCTION_P and bursty:
        shown.append(task.instruction)
        start = len(task.instruction) + len(separator)
    total, wanted = 0, rng.randint(2, 48)
    while len(shown) < wanted and total < max_chars:
        if not bursty:
            task = pick_family(rng, families).build(rng)
        x, y = task.sample(rng)
        text = template.solved(x, y)
        answer = start + len(template.query(x))
        answers.append((answer, answer + len(template.gap() + y) + 1))
        shown.append(text)
        start += len(text) + len(separator)
        total += len(text) + len(separator)
    return separator.join(shown), answers


def repeats(rng: random.Random, max_chars: int, bursty: bool = True) -> str:
    """A random line (letters, digits, words), then the same line again, several times: only
    copying from the context predicts the repeats (in the non-bursty ablation, they are new lines)."""
    def line() -> str:
        kind = rng.random()
        if kind < 0.4:
            return " ".join(rng.choice(procedural.words()) for _ in range(rng.randint(2, 8)))
        alphabet = procedural.LETTERS if kind < 0.8 else "0123456789 "
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(4, 40)))
    first, times = line(), rng.randint(2, 12)
    shown = [first]
    while sum(map(len, shown)) < max_chars and len(shown) < times:
        shown.append(first if bursty else line())
    return "\n".join(shown)


def documents(config: MixtureConfig) -> Iterator[str]:
    """The mixture's documents, the same for the same config, until `megabytes` of text."""
    return (text for text, _ in documents_with_answers(config))


def documents_with_answers(config: MixtureConfig) -> Iterator[tuple[str, list[tuple[int, int]] | None]]:
    """The mixture's documents, each with its episode's answers (`episode_with_answers`), or
    None for a document that is learned whole (text, GINC, Zipfian sequences, repeats)."""
    rng = random.Random(f"icl-mixture/{config.seed}")
    families = episode_families(config)
    plain = training_families()
    concepts = ginc.make_mixture(config.seed)
    world = bursty.make_world(config.seed)
    plays = [text for _, text in shakespeare_documents()] if config.text_fraction > 0 else []
    budget = int(config.megabytes * 1e6)
    first_stage = int(config.curriculum * budget)  # bytes of plain episodes before the rest (a curriculum)
    written = 0
    # Cumulative shares: one draw picks the kind; episodes take what is left.
    text_cut, ginc_cut, zipf_cut, repeat_cut = itertools.accumulate(
        (config.text_fraction, config.ginc_fraction, config.zipf_fraction, config.repeat_fraction))
    while written < budget:
        kind, answers = rng.random(), None
        if kind < text_cut:
            play = rng.choice(plays)
            start = rng.randrange(max(1, len(play) - config.episode_chars))
            start = play.find("\n", start) + 1  # whole lines
            text = play[start:start + config.episode_chars]
        elif kind < ginc_cut:
            text = ginc.document(rng, concepts, config.episode_chars // 2, one_concept=config.bursty)
        elif kind < zipf_cut:
            template, separator = rng.choice(FORMATS)
            text = bursty.sequence(rng, world, template, separator, bursty=config.bursty)
        elif kind < repeat_cut:
            text = repeats(rng, config.episode_chars, bursty=config.bursty)
        elif written < first_stage:
            text, answers = episode_with_answers(rng, plain, config.episode_chars, bursty=config.bursty)
        else:
            text, answers = episode_with_answers(rng, families, config.episode_chars, bursty=config.bursty,
                                                 novel_formats=config.novel_formats)
        written += len(text) + 1
        yield text, answers


def answer_mask(text: str, answers: list[tuple[int, int]] | None) -> np.ndarray:
    """One byte per token of `text` under the byte tokenizer, and one for the end-of-text token
    after it: 1 where the model learns to predict it. None: all of it."""
    size = len(text.encode()) + 1
    if answers is None:
        return np.ones(size, dtype=np.uint8)
    mask = np.zeros(size, dtype=np.uint8)
    # Character offsets to byte offsets (every character is one byte in an ASCII text).
    offsets = (np.arange(len(text) + 2) if text.isascii()
               else np.concatenate([[0], np.cumsum([len(c.encode()) for c in text]), [size]]))
    for start, end in answers:
        mask[offsets[start]:offsets[end]] = 1
    return mask


def write_mixture(out: Path, config: MixtureConfig, progress: bool = True) -> Path:
    """Generate the mixture and prepare it (byte tokenizer) into `out`; returns `out`."""


    out = Path(out)
    with tempfile.TemporaryDirectory(prefix=".icl-text-", dir=out.parent if out.parent.exists() else None) as tmp:
        text_dir = Path(tmp) / "text"
        text_dir.mkdir()
        masks: list[np.ndarray] = []  # one byte per token: 24 MB for the recipe's 24 MB of text

        def texts() -> Iterator[str]:
            for text, answers in documents_with_answers(config):
                if config.loss == "answers":
                    masks.append(answer_mask(text, answers))
                yield text
        _write_jsonl(text_dir, texts())
        prepare([text_dir], out, tokenizer="byte", progress=progress, in_order=config.curriculum > 0)
        if masks:
            add_loss_mask(out, np.concatenate(masks))
    (out / MIXTURE_FILE).write_text(json.dumps(asdict(config), indent=2) + "\n")
    return out


def _write_jsonl(directory: Path, texts: Iterator[str]) -> None:
    number, size, handle = 0, 0, None
    try:
        for text in texts:
            if handle is None or size > DOCUMENT_FILE_BYTES:
                if handle is not None:
                    handle.close()
                handle = open(directory / f"mixture-{number:04d}.jsonl", "w", encoding="utf-8")
                number, size = number + 1, 0
            line = json.dumps({"text": text}) + "\n"
            handle.write(line)
            size += len(line)
    finally:
        if handle is not None:
            handle.close()


def ensure_mixture(root: Path, config: MixtureConfig, progress: bool = True) -> Path:
    """`root/config.name`, generated on first use; reused after (the same config gives the same data)."""
    path = Path(root) / config.name
    marker = path / MIXTURE_FILE
    if marker.exists():
        # A marker written before a field was added lacks it, and means that field's default.
        stored = json.loads(marker.read_text())
        if {**asdict(MixtureConfig()), **stored} != asdict(config):
            raise FewshotError(f"{path} holds a different ICL mixture; remove it or pass another directory")
        return path
    if path.exists():
        # A generation killed between `prepare` and the marker: the data is complete but unlabelled.
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_mixture(path, config, progress)


def wait_for_mixture(root: Path, config: MixtureConfig, timeout: float = 3600.0, poll: float = 1.0) -> Path:
    """What a non-zero torchrun rank does while rank 0 runs `ensure_mixture`."""
    path = Path(root) / config.name
    deadline = time.monotonic() + timeout
    while not (path / MIXTURE_FILE).exists():
        if time.monotonic() > deadline:
            raise FewshotError(f"waited {timeout:.0f} s for rank 0 to generate {path}")
        time.sleep(poll)
    return path


def parse_data_spec(spec: str) -> MixtureConfig | None:
    """`icl`, `icl-nonbursty`, or either with options: `icl:mb=8,text=0.2,seed=1`. None for a path."""
    name, _, options = spec.partition(":")
    if name not in ("icl", "icl-nonbursty"):
        return None
    fields = {"bursty": name == "icl"}
    keys = {"mb": ("megabytes", float), "text": ("text_fraction", float), "seed": ("seed", int),
            "ginc": ("ginc_fraction", float), "zipf": ("zipf_fraction", float), "repeat": ("repeat_fraction", float), "chars": ("episode_chars", int),
            "formats": ("novel_formats", float), "programs": ("programs", float),
            "pipelines": ("pipelines", float), "curriculum": ("curriculum", float), "loss": ("loss", str)}
    for option in filter(None, options.split(",")):
        key, _, value = option.partition("=")
        if key not in keys or not value:
            raise FewshotError(f"--data {spec}: unknown option {option!r}; use {', '.join(k + '=' for k in keys)}")
        field, kind = keys[key]
        try:
            fields[field] = kind(value)
        except ValueError:
            raise FewshotError(f"--data {spec}: {key} must be a number, got {value!r}") from None
    return MixtureConfig(**fields)


def held_out_examples(family: Family, n: int, seed: int) -> list[Example]:
    """n examples of one task of a held-out family, with n distinct inputs where it has them."""
    rng = random.Random(f"held-out/{family.name}/{seed}")
    task = family.build(rng)
    pairs = distinct_examples(lambda: task.sample(rng), n, f"held-out family {family.name}")
    return [Example(x, y) for x, y in pairs]


def write_held_out_tasks(out: Path, n: int = 200, seed: int = 0) -> list[Path]:
    """One JSONL task file per held-out family (`{"input", "target"}` lines), n queries each."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for family in held_out_families():
        path = out / f"{family.name}.jsonl"
        lines = [json.dumps({"input": e.input, "target": e.target}) for e in held_out_examples(family, n, seed)]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        paths.append(path)
    return paths
