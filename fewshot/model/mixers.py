"""Sequence mixers: the part of a block that moves information between positions.

Every mixer has two paths that must agree:
- `forward(x)`: the whole causal sequence at once, for training and scoring;
- `step(x, cache, position)`: the next chunk of tokens given a cache of the past, for
  decoding (a chunk of one token) and prefill (a chunk of many).
Attention (dense or banded) and an LSTM are the two kinds; linear attention would be one
more class here, with its own cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewshot.config import ModelConfig
from fewshot.model.linear import Linear
from fewshot.model.rope import Rotary, apply_rotary


@dataclass
class AttentionCache:
    """Keys and values of the past, preallocated so a decoding step never copies them."""

    keys: Tensor  # (B, key/value heads, capacity, head_size)
    values: Tensor
    # With `qkv_conv`: the projections before the convolution, (B, capacity, q+k+v width),
    # because a new position's convolution reads the previous positions' raw projections.
    raw: Tensor | None = None

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    def rows(self, start: int, stop: int) -> AttentionCache:
        """A view of some rows: writing to it writes to this cache (no copy)."""
        raw = None if self.raw is None else self.raw[start:stop]
        return AttentionCache(self.keys[start:stop], self.values[start:stop], raw)

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes + (0 if self.raw is None else self.raw.nbytes)

    def copy_from(self, smaller: AttentionCache) -> None:
        """Fill this cache's first rows and positions with a smaller one's: growing a cache."""
        rows, capacity = smaller.keys.shape[0], smaller.capacity
        self.keys[:rows, :, :capacity] = smaller.keys
        self.values[:rows, :, :capacity] = smaller.values
        if self.raw is not None:
            self.raw[:rows, :capacity] = smaller.raw


@dataclass
class LSTMCache:
    """An LSTM's state (h, c) after every position, as a KV cache holds each position's keys.

    The latest state alone would do for plain decoding. One per position lets a caller
    rewind by setting `Cache.length`, and lets the serving engine write a dummy token into
    a slot that is still prefilling, for its next chunk to overwrite (serve/engine.py
    `_decode`), as it does with attention. It costs 2 x capacity x h numbers per row and
    layer, about half of attention's 2 x capacity x d_model (h ~ 0.55 d_model).
    """

    hidden: Tensor  # (B, capacity, h)
    cell: Tensor

    @property
    def capacity(self) -> int:
        return self.hidden.shape[1]

    def rows(self, start: int, stop: int) -> LSTMCache:
        """A view of some rows: writing to it writes to this cache (no copy)."""
        return LSTMCache(self.hidden[start:stop], self.cell[start:stop])

    @property
    def nbytes(self) -> int:
        return self.hidden.nbytes + self.cell.nbytes

    def copy_from(self, smaller: LSTMCache) -> None:
        """Fill this cache's first rows and positions with a smaller one's: growing a cache."""
        rows, capacity = smaller.hidden.shape[0], smaller.capacity
        self.hidden[:rows, :capacity] = smaller.hidden
        self.cell[:rows, :capacity] = smaller.cell

    def state_before(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """(h, c) of each row just before its token at positions[b]; zeros at position 0."""
        rows = torch.arange(len(positions), device=positions.device)
        previous, first = (positions - 1).clamp(min=0), (positions == 0)[:, None]
        return self.hidden[rows, previous].masked_fill(first, 0.0), self.cell[rows, previous].masked_fill(first, 0.0)


MixerCache = AttentionCache | LSTMCache


class Mixer(nn.Module):
    def forward(self, x: Tensor, rotary: Rotary | None = None) -> Tensor:
        """(B, T, D) -> (B, T, D) over the whole causal sequence.

        `rotary` holds the RoPE tables of the positions, for llama blocks (model/rope.py).
        """
        raise NotImplementedError

    def step(self, x: Tensor, cache: MixerCache, position: int | Tensor, padding: Tensor | None = None,
             rotary: Rotary | None = None) -> Tensor:
        """(B, T, D) -> (B, T, D) for tokens at `position`..`position+T-1`, extending `cache`.

        `padding` (B,) counts left-padding slots per row: prompts of different lengths share
        one batch, and no token may see the padding of its row. `position` may also be a
        (B,) tensor, one position per row, for a single token (T = 1) per row: a serving
        batch whose sequences started at different times.
        """
        raise NotImplementedError

    def new_cache(self, batch_size: int, capacity: int, device: torch.device, dtype: torch.dtype) -> MixerCache:
        raise NotImplementedError


def padding_mask(allowed: Tensor, padding: Tensor, key_start: int, query_start: int) -> Tensor:
    """(Tq, Tk) mask -> (B, 1, Tq, Tk): also hide each row's left padding from its keys.

    A padding query would then see nothing, and softmax over nothing is NaN; it sees its
    causal past instead. Its output is never read, so what it attends to does not matter.
    """
    queries, keys = allowed.shape
    key_pos = torch.arange(key_start, key_start + keys, device=allowed.device)
    query_pos = torch.arange(query_start, query_start + queries, device=allowed.device)
    real_key = key_pos[None, :] >= padding[:, None]  # (B, Tk)
    pad_query = query_pos[None, :] < padding[:, None]  # (B, Tq)
    mask = allowed[None] & (real_key[:, None, :] | pad_query[:, :, None])
    return mask[:, None]


def causal_mask(queries: int, keys: int, offset: int, window: int | None, device: torch.device) -> Tensor:
    """Boolean (queries, keys) mask, True where attention is allowed.

    Query i sits at absolute position offset + i and key j at position j. A key is
    visible when it is not in the future and, for a local band, fewer than `window`
    positions back.
    """
    query_pos = torch.arange(offset, offset + queries, device=device)[:, None]
    key_pos = torch.arange(keys, device=device)[None, :]
    allowed = key_pos <= query_pos
    if window is not None:
        allowed &= key_pos > query_pos - window
    return allowed


class CausalSelfAttention(Mixer):
    """Multi-head causal attention, dense or locally banded (GPT-3 §2.1), with grouped
    key/value heads and rotary positions when the config asks for them (llama blocks).

    With `qkv_conv` = k, each channel of the queries, keys and values is first mixed with
    the same channel at the k-1 previous positions (Primer's multi-dconv-head attention,
    So et al. 2021). A key then knows the token before it, so one layer can attend "to
    whatever followed the last occurrence of this token": the induction-head circuit that
    in-context copying rests on, which otherwise needs two layers to compose and forms late.
    """

    def __init__(self, config: ModelConfig, local: bool) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_size = config.n_head, config.kv_heads, config.head_size
        width = (self.n_head + 2 * self.n_kv_head) * self.head_size
        # One matrix makes queries, keys and values: rows [q; k; v], as in GPT-2's c_attn.
        self.qkv = Linear(config.d_model, width, bias=config.bias)
        self.proj = Linear(self.n_head * self.head_size, config.d_model, bias=config.bias)
        self.dropout = config.dropout
        # A band as wide as the context is just dense attention; say so, to take the fast path.
        self.window = config.window if local and config.window < config.context else None
        self.conv_size = config.qkv_conv
        if self.conv_size:
            # (channels, 1, taps), oldest position first; it starts as the identity (all
            # weight on the current position), so training begins from plain attention.
            weight = torch.zeros(width, 1, self.conv_size)
            weight[:, 0, -1] = 1.0
            self.conv = nn.Parameter(weight)

    def _convolve(self, window: Tensor) -> Tensor:
        """(B, k-1+T, W) raw projections, the k-1 before the chunk first -> (B, T, W).

        k shifted multiply-adds rather than F.conv1d: a depthwise conv1d is several times
        slower on CPU (training ran at 3.3k instead of 8k tokens/s), and k is 2-4."""
        length = window.shape[1] - self.conv_size + 1
        weight = self.conv.to(window.dtype)
        out = window[:, :length] * weight[:, 0, 0]
        for tap in range(1, self.conv_size):
            out = out + window[:, tap:tap + length] * weight[:, 0, tap]
        return out

    def _mixed(self, x: Tensor) -> Tensor:
        """Queries, keys and values of a whole sequence, side by side: (B, T, W)."""
        raw = self.qkv(x)
        if not self.conv_size:
            return raw
        return self._convolve(F.pad(raw, (0, 0, self.conv_size - 1, 0)))  # nothing precedes position 0

    def _heads(self, mixed: Tensor, rotary: Rotary | None) -> tuple[Tensor, Tensor, Tensor]:
        batch, length, _ = mixed.shape
        sizes = (self.n_head * self.head_size, self.n_kv_head * self.head_size, self.n_kv_head * self.head_size)
        q, k, v = (part.view(batch, length, -1, self.head_size).transpose(1, 2) for part in mixed.split(sizes, dim=-1))
        if rotary is not None:
            q, k = apply_rotary(q, rotary), apply_rotary(k, rotary)
        return q, k, v  # (B, H, T, head_size); keys and values have n_kv_head heads

    def _cached_mixed(self, x: Tensor, cache: AttentionCache, position: int, padding: Tensor | None) -> Tensor:
        """`_mixed` for a chunk at `position`, reading (and saving) raw projections in the cache."""
        raw = self.qkv(x)
        if not self.conv_size:
            return raw
        end = position + x.shape[1]
        if padding is not None:  # padding slots must not leak into the first real tokens
            absolute = torch.arange(position, end, device=x.device)
            raw = raw.masked_fill((absolute[None, :] < padding[:, None])[..., None], 0.0)
        cache.raw[:, position:end] = raw.to(cache.raw.dtype)
        start = max(0, position - self.conv_size + 1)
        window = cache.raw[:, start:end].to(raw.dtype)
        return self._convolve(F.pad(window, (0, 0, self.conv_size - 1 - (position - start), 0)))

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, **options) -> Tensor:
        grouped = self.n_kv_head != self.n_head
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=grouped, **options)

    def _merge(self, y: Tensor) -> Tensor:
        batch, _, length, _ = y.shape
        return self.proj(y.transpose(1, 2).reshape(batch, length, self.n_head * self.head_size))

    def forward(self, x: Tensor, rotary: Rotary | None = None) -> Tensor:
        q, k, v = self._heads(self._mixed(x), rotary)
        dropout = self.dropout if self.training else 0.0
        if self.window is None:
            y = self._attend(q, k, v, dropout_p=dropout, is_causal=True)
        else:
            mask = causal_mask(x.shape[1], x.shape[1], 0, self.window, x.device)
            y = self._attend(q, k, v, attn_mask=mask, dropout_p=dropout)
        return self._merge(y)

    def step(self, x: Tensor, cache: AttentionCache, position: int | Tensor, padding: Tensor | None = None,
             rotary: Rotary | None = None) -> Tensor:
        if isinstance(position, Tensor):
            return self._step_rows(x, cache, position, rotary)
        q, k, v = self._heads(self._cached_mixed(x, cache, position, padding), rotary)
        end = position + x.shape[1]
        cache.keys[:, :, position:end] = k.to(cache.keys.dtype)
        cache.values[:, :, position:end] = v.to(cache.values.dtype)
        # A local layer only ever looks `window` back, so its cost per token stays flat.
        start = 0 if self.window is None else max(0, position - self.window + 1)
        keys, values = cache.keys[:, :, start:end].to(q.dtype), cache.values[:, :, start:end].to(q.dtype)
        if x.shape[1] == 1 and padding is None:
            y = self._attend(q, keys, values)  # one query sees every cached key
        else:
            mask = causal_mask(x.shape[1], end - start, position - start, self.window, x.device)
            if padding is not None:
                mask = padding_mask(mask, padding, start, position)
            y = self._attend(q, keys, values, attn_mask=mask)
        return self._merge(y)

    def _step_rows(self, x: Tensor, cache: AttentionCache, positions: Tensor, rotary: Rotary | None) -> Tensor:
        """One token per row, row b at position positions[b]."""
        rows = torch.arange(x.shape[0], device=x.device)
        mixed = self.qkv(x)
        if self.conv_size:
            cache.raw[rows, positions] = mixed[:, 0].to(cache.raw.dtype)
            taps = positions[:, None] + torch.arange(1 - self.conv_size, 1, device=x.device)[None, :]  # (B, k)
            window = cache.raw[rows[:, None], taps.clamp(min=0)].to(mixed.dtype)
            mixed = self._convolve(window.masked_fill((taps < 0)[..., None], 0.0))
        q, k, v = self._heads(mixed, rotary)
        cache.keys[rows, :, positions] = k[:, :, 0].to(cache.keys.dtype)
        cache.values[rows, :, positions] = v[:, :, 0].to(cache.values.dtype)
        end = int(positions.max()) + 1
        key_pos = torch.arange(end, device=x.device)[None, :]
        allowed = key_pos <= positions[:, None]
        if self.window is not None:
            allowed &= key_pos > positions[:, None] - self.window
        keys, values = cache.keys[:, :, :end].to(q.dtype), cache.values[:, :, :end].to(q.dtype)
        return self._merge(self._attend(q, keys, values, attn_mask=allowed[:, None, None, :]))

    def new_cache(self, batch_size: int, capacity: int, device: torch.device, dtype: torch.dtype) -> AttentionCache:
        shape = (batch_size, self.n_kv_head, capacity, self.head_size)
        raw = None
        if self.conv_size:
            raw = torch.zeros(batch_size, capacity, self.qkv.out_features, device=device, dtype=dtype)
        return AttentionCache(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype), raw)


class LSTMMixer(Mixer):
    """A one-layer LSTM (Hochreiter & Schmidhuber 1997) in attention's place, then a
    projection back to d_model: the same-size recurrent baseline (config.py `lstm_size`).
    The block's norms, MLP and residuals stay; so do learned positions, which an LSTM does
    not need but which keep the two models otherwise identical."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        size = config.lstm_size
        self.lstm = nn.LSTM(config.d_model, size, batch_first=True, bias=config.bias)
        # Named like attention's output projection, so GPT scales its init with depth too.
        self.proj = Linear(size, config.d_model, bias=config.bias)
        if config.bias:
            # A forget gate that starts open carries gradients through time (Jozefowicz et
            # al. 2015). PyTorch orders the gates i, f, g, o.
            with torch.no_grad():
                self.lstm.bias_ih_l0[size : 2 * size] = 1.0

    def forward(self, x: Tensor, rotary: Rotary | None = None) -> Tensor:
        # The recurrence knows order by itself: rotary tables go unused. It runs in the
        # weights' precision even under bf16 autocast: oneDNN has no bf16 LSTM on CPUs
        # without native bf16, and a state carried across the context keeps its precision.
        with torch.autocast(x.device.type, enabled=False):
            y, _ = self.lstm(x.to(self.lstm.weight_ih_l0.dtype))
        return self.proj(y)

    def step(self, x: Tensor, cache: LSTMCache, position: int | Tensor, padding: Tensor | None = None,
             rotary: Rotary | None = None) -> Tensor:
        """nn.LSTM's recurrence written out, so that each row starts from the cached state
        at its own position and a padding slot can leave the state as it was."""
        batch, length, _ = x.shape
        if isinstance(position, Tensor):  # one token per row, each at its own position
            positions = position[:, None]
        else:
            positions = torch.arange(position, position + length, device=x.device).expand(batch, length)
        lstm, rows = self.lstm, torch.arange(batch, device=x.device)
        h, c = (state.to(x.dtype) for state in cache.state_before(positions[:, 0]))
        inputs = F.linear(x, lstm.weight_ih_l0, lstm.bias_ih_l0 if lstm.bias else None)  # all positions at once
        outputs = []
        for t in range(length):
            gates = inputs[:, t] + F.linear(h, lstm.weight_hh_l0, lstm.bias_hh_l0 if lstm.bias else None)
            i, f, g, o = gates.chunk(4, dim=-1)
            c_next = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h_next = torch.sigmoid(o) * torch.tanh(c_next)
            if padding is not None:  # left padding keeps the state at zero until the row's first token
                real = (positions[:, t] >= padding)[:, None]
                h_next, c_next = torch.where(real, h_next, h), torch.where(real, c_next, c)
            h, c = h_next, c_next
            cache.hidden[rows, positions[:, t]] = h.to(cache.hidden.dtype)
            cache.cell[rows, positions[:, t]] = c.to(cache.cell.dtype)
            outputs.append(h)
        return self.proj(torch.stack(outputs, dim=1))

    def new_cache(self, batch_size: int, capacity: int, device: torch.device, dtype: torch.dtype) -> LSTMCache:
        shape = (batch_size, capacity, self.lstm.hidden_size)
        return LSTMCache(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))


def build_mixer(config: ModelConfig, layer: int) -> Mixer:
    kind = config.layer_attention(layer)
    if kind == "lstm":
        return LSTMMixer(config)
    return CausalSelfAttention(config, local=kind == "local")
