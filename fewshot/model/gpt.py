"""The GPT-3 transformer (Brown et al. 2020, §2.1): GPT-2's architecture with
pre-LayerNorm blocks, learned positions, a GELU MLP four times as wide as the model,
tied input/output embeddings, and optionally alternating dense / banded attention.

The same class builds Llama-family models (`block="llama"`: RMSNorm, rotary positions,
SwiGLU, grouped-query attention), so SmolLM2 imported from GGUF is just another config;
`attention="lstm"` or `"linear"` swaps blocks' softmax attention for an LSTM of the same
size or for linear attention (model/mixers.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewshot.config import ModelConfig
from fewshot.errors import FewshotError
from fewshot.model.aot import AotDecoder, supports as aot_supports
from fewshot.model.kernels import attend_one
from fewshot.model.mixers import MixerCache, build_mixer
from fewshot.model.linear import Linear
from fewshot.model.quant import quantize_layers
from fewshot.model.rope import Rotary, rotary_tables


@dataclass
class Cache:
    """Per-layer decoding state plus how many positions it already holds."""

    layers: list[MixerCache]
    length: int = 0
    # Left-padding slots per row (B,), when prompts of different lengths share the batch;
    # a row's positions start counting at its first real token.
    padding: Tensor | None = None
    rewindable: bool = False  # every layer's mixer can forget positions (Mixer.rewindable)

    @property
    def capacity(self) -> int:
        return self.layers[0].capacity

    def rows(self, start: int, stop: int) -> Cache:
        """An empty cache over some rows of this one's storage: prefilling it fills them."""
        return Cache([layer.rows(start, stop) for layer in self.layers], rewindable=self.rewindable)

    def copy_first_row(self, filled: Cache) -> None:
        """Every row becomes row 0, which `filled` (this cache's `rows(0, 1)`) has prefilled:
        n samples of one prompt pay for one prefill, as llama.cpp's shared prompt does."""
        for layer in self.layers:
            for part in layer.parts():
                part[1:] = part[:1]
        self.length = filled.length

    def rewind(self, length: int) -> None:
        """Forget the positions from `length` on (the drafts prompt lookup rejected): the next
        step writes over their keys and values, and nothing reads past `length` before that."""
        if not self.rewindable or not 0 <= length <= self.length:
            raise FewshotError(f"cannot rewind this cache from {self.length} to {length} positions")
        self.length = length


class MLP(nn.Module):
    """GPT-2/3's feed-forward layer: up, GELU, down."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.up = Linear(config.d_model, config.hidden_size, bias=config.bias)
        self.down = Linear(config.hidden_size, config.d_model, bias=config.bias)

    def forward(self, x: Tensor) -> Tensor:
        # GPT-2/3 use the tanh approximation of GELU; keep it so imported weights match.
        return self.down(F.gelu(self.up(x), approximate="tanh"))


class SwiGLU(nn.Module):
    """Llama's feed-forward layer (Shazeer 2020): a SiLU gate times a linear "up" path."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate = Linear(config.d_model, config.hidden_size, bias=config.bias)
        self.up = Linear(config.d_model, config.hidden_size, bias=config.bias)
        self.down = Linear(config.hidden_size, config.d_model, bias=config.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


def build_norm(config: ModelConfig) -> nn.Module:
    if config.block == "llama":
        return nn.RMSNorm(config.d_model, eps=config.norm_eps)
    return nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=config.bias)


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.norm_mix = build_norm(config)
        self.mixer = build_mixer(config, layer)
        self.norm_mlp = build_norm(config)
        self.mlp = SwiGLU(config) if config.block == "llama" else MLP(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, rotary: Rotary | None = None) -> Tensor:
        x = x + self.dropout(self.mixer(self.norm_mix(x), rotary))
        return x + self.dropout(self.mlp(self.norm_mlp(x)))

    def step(self, x: Tensor, cache: MixerCache, position: int | Tensor, padding: Tensor | None,
             rotary: Rotary | None = None, active: Tensor | None = None) -> Tensor:
        x = x + self.mixer.step(self.norm_mix(x), cache, position, padding, rotary, active)
        return x + self.mlp(self.norm_mlp(x))


class GPT(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        # Llama blocks rotate queries and keys instead (model/rope.py): nothing to learn.
        self.position_embedding = nn.Embedding(config.context, config.d_model) if config.block == "gpt3" else None
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, layer) for layer in range(config.n_layer))
        self.norm = build_norm(config)
        self.head = Linear(config.d_model, config.vocab_size, bias=False)
        self.compiled_step = self.aot = None  # built by compile_decoding()
        self.decoding_compiled = False
        self.tie_weights()
        self.apply(self._init_weights)
        # GPT-2 §2.3: scale residual projections by 1/sqrt(N) so the residual stream's
        # variance does not grow with depth; there are two per block.
        for name, param in self.named_parameters():
            if name.endswith(("mixer.proj.weight", "mlp.down.weight")):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        if config.quant is not None:
            quantize_layers(self, config.quant)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def tie_weights(self) -> None:
        """Share the output head with the token embedding, when the config says so.

        Called again after `to_empty()`, which gives every parameter its own storage.
        """
        if self.config.tie_embeddings and self.config.quant is None:  # a quantised head has its own copy
            self.head.weight = self.token_embedding.weight

    @classmethod
    def for_loading(cls, config: ModelConfig, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> GPT:
        """A model whose weights are about to be loaded: built on the meta device, so nothing is
        initialised (or allocated twice), then given real, uninitialised storage on `device`, its
        floating-point tensors in `dtype`."""
        with torch.device("meta"):
            model = cls(config)
        if dtype != torch.float32:  # not for fp32: .to() would also cast a quantised layer's float16 scales
            model = model.to(dtype)
        model = model.to_empty(device=device)
        model.tie_weights()
        return model

    @classmethod
    def sharing(cls, other: GPT) -> GPT:
        """A second model over `other`'s weight tensors, not a copy: one can carry an adapter
        while the other stays plain, and serving several adapters costs one base in memory."""
        with torch.device("meta"):
            model = cls(other.config)
        model.load_state_dict(other.state_dict(), assign=True)  # raises if `other` carries an adapter
        model.tie_weights()
        return model

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # parameters() yields a tied weight once

    def _positions(self, idx: Tensor, position: int | Tensor, padding: Tensor | None = None) -> Tensor:
        """Absolute positions of the tokens idx (B, T): (T,), or (B, T) when rows differ."""
        if isinstance(position, Tensor):  # one token per row, each at its own position
            if int(position.max()) >= self.config.context:
                raise FewshotError(f"sequence exceeds the model's context of {self.config.context} tokens")
            return position[:, None]
        length = idx.shape[1]
        if position + length > self.config.context:
            raise FewshotError(
                f"sequence of {position + length} tokens exceeds the model's context of {self.config.context}"
            )
        positions = torch.arange(position, position + length, device=idx.device)
        if padding is not None:  # (B, T): each row counts from its first real token
            positions = (positions[None, :] - padding[:, None]).clamp(min=0)
        return positions

    def _embed(self, idx: Tensor, positions: Tensor) -> tuple[Tensor, Rotary | None]:
        x = self.token_embedding(idx)
        if self.position_embedding is not None:
            return self.dropout(x + self.position_embedding(positions)), None
        # Every layer rotates by the same angles: compute the tables once per call.
        return self.dropout(x), rotary_tables(positions, self.config.head_size, self.config.rope_base)

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """idx (B, T) -> logits (B, T, vocab) and, given targets (B, T), the mean cross-entropy."""
        x, rotary = self._embed(idx, self._positions(idx, 0))
        for block in self.blocks:
            x = block(x, rotary)
        logits = self.head(self.norm(x))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def new_cache(self, batch_size: int, capacity: int | None = None, dtype: torch.dtype | None = None,
                  padding: Tensor | None = None) -> Cache:
        """`padding` (B,): how many left-padding tokens each row's prompt will start with."""
        weight = self.token_embedding.weight
        capacity = min(capacity or self.config.context, self.config.context)
        layers = [block.mixer.new_cache(batch_size, capacity, weight.device, dtype or weight.dtype) for block in self.blocks]
        return Cache(layers, padding=None if padding is None else padding.to(weight.device), rewindable=self.rewindable)

    @property
    def rewindable(self) -> bool:
        """Whether decoding can take back positions: prompt lookup needs it (Mixer.rewindable)."""
        return all(block.mixer.rewindable for block in self.blocks)

    @torch.no_grad()
    def step(self, idx: Tensor, cache: Cache, last_only: bool = False) -> Tensor:
        """Logits (B, T, vocab) for the next T tokens after what `cache` holds; extends it.

        `last_only`: logits (B, 1, vocab) of the last position alone. A prefill that only
        needs the next token skips the head for the others: with a 49k vocabulary the head
        is a fifth of a small model's FLOPs.
        """
        if cache.length + idx.shape[1] > cache.capacity:
            raise FewshotError(f"decoding past the cache's capacity of {cache.capacity} tokens")
        x, rotary = self._embed(idx, self._positions(idx, cache.length, cache.padding))
        for block, layer_cache in zip(self.blocks, cache.layers):
            x = block.step(x, layer_cache, cache.length, cache.padding, rotary)
        cache.length += idx.shape[1]
        return self.head(self.norm(x[:, -1:] if last_only else x))

    def compile_decoding(self, enabled: bool = True, now: bool = False) -> None:
        """Compile `decode_step`, or send it back to eager `step`.

        A one-token step of a small model is ~150-1,000 tiny ops (norms, rotary, attention,
        residuals) whose dispatch costs as much as the matmuls. On the CPU, for attention models,
        the step is compiled ahead of time into C++ (fewshot.model.aot: no Python per token; built
        once per model shape and cached on disk). Elsewhere, and for steps that build does not
        cover, torch.compile (inductor) fuses them, across blocks too; `dynamic=True` lets one
        graph serve every batch size > 1, cache length and capacity (batch 1 gets its own).
        Compiling `Block.step` alone compiles faster but runs slower, so the whole step it is
        (docs/code-notes.md). A prefill runs once per request and is matmul-bound: it stays eager.
        `now`: build (or load) the ahead-of-time step at once rather than at the first token.
        """
        if enabled and self.compiled_step is None:
            attend_one()  # load (or build) the CPU kernels now, not in the middle of tracing the step
            self.compiled_step = torch.compile(self.step, dynamic=True)
            self.aot = AotDecoder(self) if aot_supports(self) else None
        if enabled and now and self.aot is not None:
            self.aot.prepare()
        self.decoding_compiled = enabled

    def decode_step(self, idx: Tensor, cache: Cache) -> Tensor:
        """`step` for one new token per row (B, 1), compiled if `compile_decoding()` said so."""
        if not self.decoding_compiled:
            return self.step(idx, cache)
        if cache.length + 1 > cache.capacity:
            raise FewshotError(f"decoding past the cache's capacity of {cache.capacity} tokens")
        if self.aot is not None and (logits := self.aot.step(idx, cache)) is not None:
            return logits
        return self.compiled_step(idx, cache)

    def step_slots(self, idx: Tensor, layers: list[MixerCache], slots: Tensor, positions: Tensor, first: Tensor) -> Tensor:
        """Logits (B, 1, vocab) for one token per row: row b's written at cache slot slots[b],
        rotated to positions[b], attending to slots first[b]..slots[b]. No checks, and no Python
        number read from a tensor, so it traces whole (fewshot.model.aot); callers check."""
        x, rotary = self._embed(idx, positions[:, None])
        for block, layer_cache in zip(self.blocks, layers):
            x = block.step(x, layer_cache, slots, first, rotary)
        return self.head(self.norm(x))

    @torch.no_grad()
    def step_rows(self, idx: Tensor, cache: Cache, positions: Tensor, active: Tensor | None = None) -> Tensor:
        """Logits (B, 1, vocab) for one token per row, row b at positions[b].

        For serving: each row is a sequence that started at its own time, so rows hold
        different lengths. The caller tracks them; `cache.length` is not used. `active` (B,):
        the rows whose token is real; the others' recurrent states stay as they were.
        """
        if int(positions.max()) >= cache.capacity:
            raise FewshotError(f"decoding past the cache's capacity of {cache.capacity} tokens")
        # Dummy rows' writes land where their own next token goes (the engine's rule), so the
        # compiled step, which writes every row, is right for attention; `active` is for recurrent mixers.
        if self.decoding_compiled and self.aot is not None and (logits := self.aot.step_rows(idx, cache, positions)) is not None:
            return logits
        x, rotary = self._embed(idx, self._positions(idx, positions))
        for block, layer_cache in zip(self.blocks, cache.layers):
            x = block.step(x, layer_cache, positions, None, rotary, active)
        return self.head(self.norm(x))
