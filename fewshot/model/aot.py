"""The decoding step compiled ahead of time (AOTInductor): one token per row, no Python in the loop.

torch.compile's step still runs Python around its kernels every token: Dynamo's guards and
inductor's wrapper, ~4 ms of a 12.5 ms SmolLM2 token on 2 cores (docs/code-notes.md, Decoding). Here the
step is exported once (`torch.export`) and compiled by AOTInductor into a shared library that
runs the whole token in C++. The library holds no weights: it reads the live model's tensors
(user-managed constants), so it depends only on the model's *shapes*, and one build serves
every checkpoint of an architecture. Builds are cached on disk (`cache_dir()`), written
atomically; the first build of a shape takes about a minute on 2 cores.

What it covers: CPU, float32 or bfloat16 models with caches of their own dtype, models whose
every mixer is causal attention, and the decoding-attention kernel (fewshot.model.kernels). A
step it cannot take (another mixer, more than MAX_ROWS rows, a cache it did not trace) returns
None, and the caller runs torch.compile's step instead.

Two libraries per shape: batch 1, and batch 2 to MAX_ROWS with the cache's capacity dynamic
(export specialises a dimension of size 1, so batch 1 is its own build).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor, nn

from fewshot.model.kernels import SOURCES, attend_one
from fewshot.model.mixers import AttentionCache, CausalSelfAttention
from fewshot.model.quant import KERNEL_ROWS

# The quantised layers' kernel takes this many rows in one call; more go in chunks, a branch on
# the batch size that one traced graph cannot hold.
MAX_ROWS = KERNEL_ROWS


def cache_dir() -> Path:
    """Where built steps are kept: $FEWSHOT_CACHE/aot, else the user's cache directory."""
    root = os.environ.get("FEWSHOT_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fewshot"
    return Path(root) / "aot"


def supports(model: nn.Module) -> bool:
    """Whether this model's decoding step can be compiled ahead of time here."""
    weight = model.token_embedding.weight
    return (weight.device.type == "cpu" and weight.dtype in (torch.float32, torch.bfloat16) and attend_one() is not None
            and all(isinstance(block.mixer, CausalSelfAttention) and not block.mixer.conv_size for block in model.blocks))


class _Step(nn.Module):
    """What is exported: `GPT.step_slots` with the caches' tensors as inputs it writes into."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, idx: Tensor, slots: Tensor, positions: Tensor, first: Tensor, kv: list[Tensor]) -> Tensor:
        layers = [AttentionCache(kv[2 * i], kv[2 * i + 1]) for i in range(len(kv) // 2)]
        return self.model.step_slots(idx, layers, slots, positions, first)


class AotDecoder:
    """The compiled step for one model, its libraries built or loaded on first use."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.runners: dict[str, object] = {}

    def step(self, idx: Tensor, cache) -> Tensor | None:
        """`GPT.step` for one new token per row (B, 1), or None where this step cannot run it."""
        slots = torch.full((idx.shape[0],), cache.length, dtype=torch.long)
        if cache.padding is None:
            positions, first = slots, torch.zeros_like(slots)
        else:  # a row counts its positions from its first real token; one still all padding sees its past
            positions, first = (slots - cache.padding).clamp(min=0), cache.padding.clamp(max=cache.length)
        logits = self._run(idx, cache, slots, positions, first)
        if logits is not None:
            cache.length += 1
        return logits

    def step_rows(self, idx: Tensor, cache, positions: Tensor) -> Tensor | None:
        """`GPT.step_rows` (serving: row b in slot positions[b], attending from slot 0), or None."""
        positions = positions.to(torch.long)
        return self._run(idx, cache, positions, positions, torch.zeros_like(positions))

    def prepare(self) -> None:
        """Build or load both libraries now (a server, before it listens), not at the first step."""
        for kind in ("one", "many"):
            self._runner(kind)

    def _run(self, idx: Tensor, cache, slots: Tensor, positions: Tensor, first: Tensor) -> Tensor | None:
        rows = idx.shape[0]
        kv = [t for layer in cache.layers for t in (layer.keys, layer.values)]
        if (not 1 <= rows <= MAX_ROWS or cache.capacity < 2 or idx.shape[1] != 1 or len(kv) != 2 * len(self.model.blocks)
                or any(t.dtype != self.model.token_embedding.weight.dtype or not t.is_contiguous() for t in kv)):
            return None
        return self._runner("one" if rows == 1 else "many")(idx.contiguous(), slots, positions, first, kv)

    def _runner(self, kind: str):
        if kind not in self.runners:
            path = cache_dir() / f"decode-{kind}-{self._shape_key(kind)}.pt2"
            if not path.exists():
                self._build(kind, path)
            runner = torch._inductor.aoti_load_package(str(path))
            state = {name: value.data for name, value in self.model.state_dict(keep_vars=True).items()}
            # The library reads the model's own tensors (no copy), so it never goes stale.
            runner.load_constants({name: state[name.removeprefix("model.")] for name in runner.get_constant_fqns()},
                                  check_full_update=True, user_managed=True)
            self.runners[kind] = runner
        return self.runners[kind]

    def _shape_key(self, kind: str) -> str:
        """A digest of everything the library depends on: the model's config and tensor shapes,
        torch's version and the kernels' sources; not the weights' values."""
        shapes = [(name, list(t.shape), str(t.dtype)) for name, t in self.model.state_dict().items()]
        text = json.dumps([kind, torch.__version__, asdict(self.model.config), shapes], sort_keys=True, default=str)
        digest = hashlib.sha256(text.encode())
        for source in SOURCES:
            digest.update(source.read_bytes())
        return digest.hexdigest()[:16]

    def _build(self, kind: str, path: Path) -> None:
        from torch.export import Dim

        print(f"notice: compiling the decoding step ahead of time (batch {'1' if kind == 'one' else f'2-{MAX_ROWS}'}; "
              f"once per model shape, about a minute) into {path.parent}", file=sys.stderr)
        rows = 1 if kind == "one" else 2
        cache = self.model.new_cache(rows, min(8, self.model.config.context))
        kv = [t for layer in cache.layers for t in (layer.keys, layer.values)]
        example = (torch.zeros(rows, 1, dtype=torch.long), *(torch.zeros(rows, dtype=torch.long) for _ in range(3)), kv)
        capacity = Dim("capacity", min=2, max=self.model.config.context)
        batch = Dim.STATIC if kind == "one" else Dim("batch", min=2, max=MAX_ROWS)
        shapes = ({0: batch}, {0: batch}, {0: batch}, {0: batch}, [{0: batch, 2: capacity} for _ in kv])
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch's own pytree deprecations, not ours to fix
            program = torch.export.export(_Step(self.model), example, dynamic_shapes=shapes, strict=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, partial = tempfile.mkstemp(dir=path.parent, prefix=".partial-", suffix=".pt2")
        os.close(handle)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                torch._inductor.aoti_compile_and_package(program, package_path=partial,
                                                         inductor_configs={"aot_inductor.package_constants_in_so": False})
            os.replace(partial, path)  # another process building the same shape writes the same library
        finally:
            Path(partial).unlink(missing_ok=True)
