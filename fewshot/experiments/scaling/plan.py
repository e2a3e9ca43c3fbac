"""What a sweep trains: its settings, and one point (a model shape and a token budget) per run.

A size ladder (Kaplan et al. 2020) trains each rung of the size rule on `tokens_per_param`
tokens per non-embedding parameter (D grows with N, as along Chinchilla's frontier), or every
rung on the same `tokens` (Kaplan's L(N): one dataset, the small models near convergence).
An IsoFLOP sweep (Hoffmann et al. 2022, approach 2) fixes a compute budget C and trains sizes
around a guess at the optimum, the N whose D = C / 6N is `centre` tokens per parameter, each
on D = C / 6N tokens. Either way each point is an ordinary `fewshot train` run, named by its
shape and data, so a rerun finds the runs it already has.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fewshot.config import ModelConfig, TrainConfig, preset, setting
from fewshot.errors import FewshotError
from fewshot.experiments.scaling.compute import kaplan_compute
from fewshot.experiments.scaling.shapes import HEAD_SIZE, SMALLEST, STEP, ladder, non_embedding_params

TEMPLATE = "nano"  # the block family (GPT-3's) and the byte vocabulary; the shape comes from the rule
CHINCHILLA_TOKENS_PER_PARAM = 20.0  # Hoffmann et al. 2022: compute-optimal D / N
RUNS = "runs"  # the run directories, under the sweep directory


@dataclass(frozen=True)
class SweepConfig:
    """`fewshot sweep`'s options. Everything but `out`, `sizes`, `isoflop`, `parallel` and the
    evaluation settings fixes what a run is; a sweep continued with other values is refused."""

    data: str
    out: str
    sizes: int = setting(0, "Rungs of the size ladder (0: none).")
    tokens_per_param: float = setting(CHINCHILLA_TOKENS_PER_PARAM, "Ladder: tokens per non-embedding parameter "
                                                                    "(Chinchilla's compute-optimal ratio is about 20).")
    tokens: float = setting(0, "Ladder: train every size on this many tokens instead (Kaplan's L(N): a fixed "
                               "dataset, the small sizes near convergence); 0: --tokens-per-param decides.")
    smallest: float = setting(SMALLEST, "Non-embedding parameters of the smallest size.")
    step: float = setting(STEP, "Each size about this many times the last.")
    head_size: int = setting(HEAD_SIZE, "The size rule's attention head size (d_model is a whole number of heads); "
                                        "8 reaches the 2-10k-parameter shapes a small IsoFLOP budget wants.")
    layers: int = setting(0, "Fix every size's depth and vary only its width (0: the rule's aspect ratio). At the "
                             "smallest sizes the rule's depth jumps between 2 and 5 layers from one size to the next.")
    isoflop: str = setting("", "Comma-separated compute budgets in FLOPs (C = 6ND), e.g. 3e11,1e12,3e12.")
    per_budget: int = setting(5, "IsoFLOP: sizes per budget, spaced by --step around the --centre guess.")
    centre: float = setting(CHINCHILLA_TOKENS_PER_PARAM, "IsoFLOP: the tokens per parameter each budget's sizes centre "
                                                         "on (Chinchilla's 20; a small byte-level model wants many more).")
    context: int = setting(256, "Training sequence length.")
    batch_size: int = setting(8, "Sequences per optimizer step.")
    lr: float | None = setting(None, "Peak learning rate (default: Kaplan's rule, 0.003239 - 0.0001395 ln N).")
    eval_batches: int = setting(32, "Validation batches per loss (the same windows for every run).")
    seed: int = setting(0, "Seed of every run's weights and data order.")
    precision: str = setting("auto", "auto, fp32 or bf16 (autocast).")
    parallel: int = setting(1, "Runs trained at once, each in its own process (Dask).")
    eval: str = setting("", "Few-shot tasks to score every run on: harness task names and/or .jsonl task files.")
    shots: str = setting("0,4,16", "With --eval: the K values.")
    n_eval: int = setting(100, "With --eval: queries per task.")

    def __post_init__(self) -> None:
        if self.sizes < 0 or (self.sizes == 0 and not self.isoflop):
            raise FewshotError("sweep: give --sizes N (a size ladder) and/or --isoflop C1,C2,... (compute budgets)")
        for name in ("context", "batch_size", "eval_batches", "parallel", "n_eval", "head_size"):
            if getattr(self, name) < 1:
                raise FewshotError(f"sweep: --{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.context < 2:
            raise FewshotError(f"sweep: --context must be >= 2, got {self.context}")
        if self.tokens < 0 or not math.isfinite(self.tokens):
            raise FewshotError(f"sweep: --tokens must be >= 0, got {self.tokens}")
        if not self.tokens_per_param > 0 or not math.isfinite(self.tokens_per_param):
            raise FewshotError(f"sweep: --tokens-per-param must be > 0, got {self.tokens_per_param}")
        if not self.centre > 0 or not math.isfinite(self.centre):
            raise FewshotError(f"sweep: --centre must be > 0, got {self.centre}")
        if self.per_budget < 3:
            raise FewshotError(f"sweep: --per-budget must be >= 3 (an IsoFLOP profile is a parabola), got {self.per_budget}")
        if self.lr is not None and not self.lr > 0:
            raise FewshotError(f"sweep: --lr must be > 0, got {self.lr}")
        self.budgets()
        ladder(1, self.template(), self.smallest, self.step, head_size=self.head_size, layers=self.layers)  # checks them

    def budgets(self) -> tuple[float, ...]:
        try:
            budgets = tuple(float(part) for part in self.isoflop.split(",") if part.strip())
        except ValueError:
            raise FewshotError(f"sweep: --isoflop takes comma-separated FLOPs such as 3e11,1e12, got {self.isoflop!r}") from None
        if any(not (b > 0 and math.isfinite(b)) for b in budgets) or len(set(budgets)) != len(budgets):
            raise FewshotError(f"sweep: --isoflop budgets must be distinct and > 0, got {self.isoflop!r}")
        return tuple(sorted(budgets))

    def template(self) -> ModelConfig:
        return preset(TEMPLATE).replace(context=self.context)

    def identity(self) -> dict[str, Any]:
        """The settings every run of the sweep shares."""
        kept = ("data", "tokens_per_param", "tokens", "smallest", "step", "head_size", "layers", "per_budget", "centre",
                "context", "batch_size", "lr", "eval_batches", "seed", "precision")
        return {name: getattr(self, name) for name in kept}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def kaplan_lr(n: float) -> float:
    """Kaplan et al. 2020, eq. D.1: the learning rate that worked across their sizes."""
    return 0.003239 - 0.0001395 * math.log(n)


@dataclass(frozen=True)
class Point:
    """One run of a sweep."""

    name: str
    kind: str  # "ladder" or "isoflop"
    model: ModelConfig
    steps: int
    budget: float | None  # the IsoFLOP budget it belongs to
    rung: int | None  # its place on the ladder

    @property
    def n(self) -> int:
        return non_embedding_params(self.model)

    def tokens(self, config: SweepConfig) -> int:
        return self.steps * config.batch_size * config.context

    def compute(self, config: SweepConfig) -> float:
        return kaplan_compute(self.model, self.tokens(config))


def _short(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.0f}"


def _steps(tokens: float, config: SweepConfig) -> int:
    return max(1, round(tokens / (config.batch_size * config.context)))


def rung(config: SweepConfig, index: int, model: ModelConfig) -> Point:
    steps = _steps(config.tokens or config.tokens_per_param * non_embedding_params(model), config)
    return Point(f"n{_short(non_embedding_params(model))}", "ladder", model, steps, None, index)


def plan(config: SweepConfig, vocab_size: int, sizes: int | None = None) -> list[Point]:
    """Every run of the sweep, ladder first, then the budgets in increasing order."""
    template = config.template().replace(vocab_size=vocab_size)
    count = config.sizes if sizes is None else sizes
    rungs = ladder(count, template, config.smallest, config.step, head_size=config.head_size, layers=config.layers) if count else []
    points = [rung(config, i, m) for i, m in enumerate(rungs)]
    for budget in config.budgets():
        guess = math.sqrt(budget / (6 * config.centre))  # C = 6 N D with D = centre N
        low = guess / config.step ** ((config.per_budget - 1) / 2)
        models = ladder(config.per_budget, template, low, config.step, head_size=config.head_size, layers=config.layers)
        for model in models:
            steps = _steps(budget / (6 * non_embedding_params(model)), config)
            name = f"c{budget:.3g}".replace("e+", "e") + f"-n{_short(non_embedding_params(model))}"
            points.append(Point(name, "isoflop", model, steps, budget, None))
    return points


def next_rung(config: SweepConfig, vocab_size: int, done: int) -> Point:
    """The ladder's rung after the first `done`: what `sweep fit --predict next` predicts."""
    return plan(dataclasses.replace(config, isoflop=""), vocab_size, sizes=done + 1)[-1]


def train_config(point: Point, config: SweepConfig) -> TrainConfig:
    """The ordinary training run behind a point: GPT-3's recipe, validated every tenth of the way."""
    m = point.model
    return TrainConfig(
        data=config.data, out=str(Path(config.out) / RUNS / point.name), preset=TEMPLATE, max_steps=point.steps,
        batch_size=config.batch_size, context=config.context, lr=config.lr or kaplan_lr(point.n),
        eval_every=max(1, point.steps // 10), eval_batches=config.eval_batches, save_every=max(1, point.steps // 10),
        keep_last=1, log_every=max(1, point.steps // 50), seed=config.seed, precision=config.precision,
        tensorboard=False, progress=False,
        model_overrides={"n_layer": m.n_layer, "n_head": m.n_head, "d_model": m.d_model, "mlp_ratio": m.mlp_ratio},
    )
