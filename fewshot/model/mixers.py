"""Sequence mixers: the part of a block that moves information between positions.

Every mixer has two paths that must agree:
- `forward(x)`: the whole causal sequence at once, for training and scoring;
- `step(x, cache, position)`: the next chunk of tokens given a cache of the past, for
  decoding (a chunk of one token) and prefill (a chunk of many).
Softmax attention (dense or banded) keeps every past key and value. An LSTM and linear
attention are RNNs: the whole past is one fixed-size state (`RecurrentCache`), so decoding
costs the same memory and time at any position.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewshot.config import SSM_STATE, ModelConfig
from fewshot.model.kernels import attend_one
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

    def parts(self) -> tuple[Tensor, ...]:
        """Its tensors, each (B, ...)."""
        return (self.keys, self.values) + (() if self.raw is None else (self.raw,))

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
class RecurrentCache:
    """A recurrent mixer's state after the last position it took in, the same size at any
    length: `capacity` only bounds the positions, as a KV cache's does. Kept in float32: the
    state sums the whole past, and it is small."""

    state: tuple[Tensor, ...]  # each (B, ...)
    capacity: int

    def rows(self, start: int, stop: int) -> RecurrentCache:
        """A view of some rows: writing to it writes to this cache (no copy)."""
        return RecurrentCache(tuple(part[start:stop] for part in self.state), self.capacity)

    def parts(self) -> tuple[Tensor, ...]:
        """Its tensors, each (B, ...)."""
        return self.state

    @property
    def nbytes(self) -> int:
        return sum(part.nbytes for part in self.state)

    def copy_from(self, smaller: RecurrentCache) -> None:
        """Fill this cache's first rows with a smaller one's: growing a cache."""
        for mine, theirs in zip(self.state, smaller.state):
            mine[: len(theirs)] = theirs

    def read(self, fresh: Tensor) -> tuple[Tensor, ...]:
        """The state to continue from, zero for rows where `fresh` (B,) is true: a row at
        position 0 starts a new sequence, whatever its slot held before."""
        return tuple(part.masked_fill(fresh.view(-1, *[1] * (part.dim() - 1)), 0.0) for part in self.state)

    def write(self, state: tuple[Tensor, ...], keep: Tensor | None = None) -> None:
        """Store the new state; rows where `keep` (B,) is true keep the old one."""
        for mine, new in zip(self.state, state):
            if keep is not None:
                new = torch.where(keep.view(-1, *[1] * (new.dim() - 1)), mine, new)
            mine.copy_(new)


MixerCache = AttentionCache | RecurrentCache


class Mixer(nn.Module):
    # Whether decoding can forget its last positions (prompt lookup's rejected drafts): a
    # cache of keys and values holds each position apart; a recurrent state has folded them in.
    rewindable = False

    def forward(self, x: Tensor, rotary: Rotary | None = None) -> Tensor:
        """(B, T, D) -> (B, T, D) over the whole causal sequence.

        `rotary` holds the RoPE tables of the positions, for llama blocks (model/rope.py).
        """
        raise NotImplementedError

    def step(self, x: Tensor, cache: MixerCache, position: int | Tensor, padding: Tensor | None = None,
             rotary: Rotary | None = None, active: Tensor | None = None) -> Tensor:
        """(B, T, D) -> (B, T, D) for tokens at `position`..`position+T-1`, extending `cache`.

        `padding` (B,) counts left-padding slots per row: prompts of different lengths share
        one batch, and no token may see the padding of its row. `position` may also be a
        (B,) tensor, one position per row, for a single token (T = 1) per row: a serving
        batch whose sequences started at different times. Then `active` (B,) marks the rows
        whose token is real; the others carry a dummy token, which a cache of positions
        overwrites later, but which must not enter a recurrent state.
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

    rewindable = True

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

    @staticmethod
    def _decoding_kernel(q: Tensor, cache: AttentionCache):
        """The C++ kernel for a decoding step's attention (kernels/attention.cpp): one query per row
        against its run of cached keys, with no mask to build and nothing that depends on the other
        rows. It is built for float32 and bfloat16 on the CPU; elsewhere (None) torch's attention runs."""
        usable = q.device.type == "cpu" and q.dtype == cache.keys.dtype and q.dtype in (torch.float32, torch.bfloat16)
        return attend_one() if usable else None

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
             rotary: Rotary | None = None, active: Tensor | None = None) -> Tensor:
        if isinstance(position, Tensor):  # per row: its slot in the cache; `padding`, its first real one
            return self._step_rows(x, cache, position, rotary, padding)
        q, k, v = self._heads(self._cached_mixed(x, cache, position, padding), rotary)
        end = position + x.shape[1]
        cache.keys[:, :, position:end] = k.to(cache.keys.dtype)
        cache.values[:, :, position:end] = v.to(cache.values.dtype)
        # A local layer only ever looks `window` back, so its cost per token stays flat.
        start = 0 if self.window is None else max(0, position - self.window + 1)
        kernel = self._decoding_kernel(q, cache) if x.shape[1] == 1 else None
        if kernel is not None:  # a row's keys: from its first real one to the newest
            if padding is None:
                first = torch.full((x.shape[0],), start, device=x.device)
            else:  # a row that is all padding so far attends to its past, as `padding_mask` lets it
                first = padding.clamp(min=start, max=position)
            return self._merge(kernel(q, cache.keys, cache.values, first, torch.full_like(first, end)))
        keys, values = cache.keys[:, :, start:end].to(q.dtype), cache.values[:, :, start:end].to(q.dtype)
        if x.shape[1] == 1 and padding is None:
            y = self._attend(q, keys, values)  # one query sees every cached key
        else:
            mask = causal_mask(x.shape[1], end - start, position - start, self.window, x.device)
            if padding is not None:
                mask = padding_mask(mask, padding, start, position)
            y = self._attend(q, keys, values, attn_mask=mask)
        return self._merge(y)

    def _step_rows(self, x: Tensor, cache: AttentionCache, slots: Tensor, rotary: Rotary | None,
                   first: Tensor | None = None) -> Tensor:
        """One token per row, row b written at slot slots[b] of the cache and attending to the
        slots from first[b] (default 0: a row with no left padding) up to its own. Shapes do not
        depend on the slots, so an ahead-of-time compiled step (fewshot.model.aot) traces this."""
        rows = torch.arange(x.shape[0], device=x.device)
        mixed = self.qkv(x)
        if self.conv_size:
            cache.raw[rows, slots] = mixed[:, 0].to(cache.raw.dtype)
            taps = slots[:, None] + torch.arange(1 - self.conv_size, 1, device=x.device)[None, :]  # (B, k)
            window = cache.raw[rows[:, None], taps.clamp(min=0)].to(mixed.dtype)
            mixed = self._convolve(window.masked_fill((taps < 0)[..., None], 0.0))
        q, k, v = self._heads(mixed, rotary)
        cache.keys[rows, :, slots] = k[:, :, 0].to(cache.keys.dtype)
        cache.values[rows, :, slots] = v[:, :, 0].to(cache.values.dtype)
        lowest = torch.zeros_like(slots) if self.window is None else (slots - self.window + 1).clamp(min=0)
        first = lowest if first is None else torch.maximum(first, lowest)
        kernel = self._decoding_kernel(q, cache)
        if kernel is not None:
            return self._merge(kernel(q, cache.keys, cache.values, first, slots + 1))
        end = int(slots.max()) + 1
        key_pos = torch.arange(end, device=x.device)[None, :]
        allowed = (key_pos <= slots[:, None]) & (key_pos >= first[:, None])
        keys, values = cache.keys[:, :, :end].to(q.dtype), cache.values[:, :, :end].to(q.dtype)
        return self._merge(self._attend(q, keys, values, attn_mask=allowed[:, None, None, :]))

    def new_cache(self, batch_size: int, capacity: int, device: torch.device, dtype: torch.dtype) -> AttentionCache:
        shape = (batch_size, self.n_kv_head, capacity, self.head_size)
        raw = None
        if self.conv_size:
            raw = torch.zeros(batch_size, capacity, self.qkv.out_features, device=device, dtype=dtype)
        return AttentionCache(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype), raw)


class TransformerXL(Mixer):
    """Transformer-XL's attention (Dai et al. 2019): segment recurrence and relative positions.

    The sequence goes in segments of `window` positions. A query attends to the keys of its own
    segment up to itself and to the whole previous segment, the memory, whose keys and values
    carry no gradient (§3.2: the memory is a fixed cache). The score of query i and key j is
    (q_i + u).k_j + (q_i + v).W_R r_{i-j} (§3.3, eq. terms (a)-(d)): r the sinusoid of the
    distance, u and v learned per head. Segments start at each row's first token, so a
    left-padded row decodes as if alone. Decoding attends the cache over the same band, so
    each step costs at most 2 x window keys. W_R adds d x d parameters to attention's."""

    rewindable = True

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.head_size, self.segment = config.n_head, config.head_size, config.window
        inner = self.n_head * self.head_size
        self.qkv = Linear(config.d_model, 3 * inner, bias=config.bias)
        self.proj = Linear(inner, config.d_model, bias=config.bias)
        self.position = Linear(config.d_model, inner, bias=False)  # W_R
        self.content_bias = nn.Parameter(torch.zeros(self.n_head, self.head_size))  # u
        self.position_bias = nn.Parameter(torch.zeros(self.n_head, self.head_size))  # v
        self.dropout = config.dropout

    def _heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        batch, length, _ = x.shape
        return tuple(part.view(batch, length, self.n_head, self.head_size).transpose(1, 2) for part in self.qkv(x).chunk(3, -1))

    def sinusoid(self, device: torch.device) -> Tensor:
        """r_0, r_1, ..., r_{2 window - 1}: (2 window, d). Computed, not stored: a buffer would come
        back uninitialised from a model built on the meta device and then loaded (GPT.for_loading)."""
        d = self.position.in_features
        frequencies = 1.0 / 10_000 ** (torch.arange(0, d, 2, device=device).float() / d)
        angles = torch.arange(2 * self.segment, device=device).float()[:, None] * frequencies
        return torch.cat([angles.sin(), angles.cos()], dim=-1)[:, :d]

    def _scores(self, q: Tensor, query_pos: Tensor, key_pos: Tensor, first: Tensor) -> Tensor:
        """The position term plus the mask, (B, H, Tq, Tk), for SDPA's additive mask: -inf where a
        key is in the future, before the previous segment, or a row's left padding."""
        by_distance = torch.einsum("bhqd,khd->bhqk", q + self.position_bias[:, None].to(q.dtype), self._r(q.dtype, q.device))
        distance = query_pos[:, :, None] - key_pos[:, None, :]  # (B or 1, Tq, Tk)
        key_segment, query_segment = (torch.div(pos - first.view(-1, 1), self.segment, rounding_mode="floor")
                                      for pos in (key_pos, query_pos))
        allowed = (distance >= 0) & (key_pos[:, None, :] >= first.view(-1, 1, 1))
        allowed &= key_segment[:, None, :] >= query_segment[:, :, None] - 1
        index = distance.clamp(0, 2 * self.segment - 1)[:, None].expand(q.shape[0], self.n_head, -1, -1)
        term = torch.gather(by_distance, -1, index) / math.sqrt(self.head_size)  # SDPA scales q.k alone
        return term.masked_fill(~allowed[:, None], -math.inf)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q + self.content_bias[:, None].to(q.dtype), k, v, attn_mask=mask, dropout_p=dropout)
        batch, _, length, _ = y.shape
        return self.proj(y.transpose(1, 2).reshape(batch, length, self.n_head * self.head_size))

    def _r(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        return self.position(self.sinusoid(device).to(dtype)).view(-1, self.n_head, self.head_size)  # (2 window, H, hs)

    def forward(self, x: Tensor, rotary: Rotary | None = None) -> Tensor:
        """Segment by segment: each segment's L queries against 2L keys, the previous segment's
        (the memory) then its own, so memory grows as T x L, not T^2."""
        batch, length, _ = x.shape
        size = self.segment
        pad = -length % size  # zeros after the end: only the cut-off queries past it could see them
        x = F.pad(x, (0, 0, 0, pad))
        segments = x.shape[1] // size
        shape = (batch, self.n_head, segments, size, self.head_size)
        q, k, v = (t.reshape(shape) for t in self._heads(x))
        # The memory: the previous segment's keys and values, the same numbers without a gradient
        # (segment 0 gets zeros, masked below).
        k_memory, v_memory = (F.pad(t.reshape(shape), (0, 0, 0, 0, 1, 0))[:, :, :-1] for t in self._heads(x.detach())[1:])
        keys, values = torch.cat([k_memory, k], dim=3), torch.cat([v_memory, v], dim=3)
        # Query r against key slot c (c < L: the memory's position c; else the own segment's c - L)
        # sits at distance r + L - c in either case.
        slot = torch.arange(2 * size, device=x.device)
        distance = torch.arange(size, device=x.device)[:, None] + size - slot[None, :]  # (L, 2L)
        by_distance = torch.einsum("bhnqd,khd->bhnqk", q + self.position_bias[:, None, None].to(q.dtype), self._r(q.dtype, x.device))
        index = distance.clamp(min=0).expand(batch, self.n_head, segments, -1, -1)
        term = torch.gather(by_distance, -1, index) / math.sqrt(self.head_size)  # SDPA scales q.k alone
        first = torch.arange(segments, device=x.device)[:, None, None] == 0
        hidden = (distance < 0) | (first & (slot < size))  # the future; segment 0's missing memory
        mask = term.masked_fill(hidden, -math.inf)
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q + self.content_bias[:, None, None].to(q.dtype), keys, values,
                                           attn_mask=mask, dropout_p=dropout)
        y = y.reshape(batch, self.n_head, segments * size, self.head_size)[:, :, :length]
        return self.proj(y.transpose(1, 2).reshape(batch, length, self.n_head * self.head_size))

    def step(self, x: Tensor, cache: AttentionCache, position: int | Tensor, padding: Tensor | None = None,
             rotary: Rotary | None = None, active: Tensor | None = None) -> Tensor:
        batch, length, _ = x.shape
        rows = torch.arange(batch, device=x.device)
        q, k, v = self._heads(x)
        if isinstance(position, Tensor):  # one token per row, each at its own position
            cache.keys[rows, :, position] = k[:, :, 0].to(cache.keys.dtype)
            cache.values[rows, :, position] = v[:, :, 0].to(cache.values.dtype)
            query_pos, end = position[:, None], int(position.max()) + 1
            start = max(0, int(position.min()) - 2 * self.segment)  # no key further back is in any row's band
        else:
            end = position + length
            cache.keys[:, :, position:end] = k.to(cache.keys.dtype)
            cache.values[:, :, position:end] = v.to(cache.values.dtype)
            query_pos = torch.arange(position, end, device=x.device)[None]
            start = max(0, position - 2 * self.segment)  # no key further back is in the band
        key_pos = torch.arange(start, end, device=x.device)[None]
        first = torch.zeros(batch, dtype=torch.long, device=x.device) if padding is None else padding
        mask = self._scores(q, query_pos, key_pos, first)
        # A padding query sees nothing, and softmax over nothing is NaN; its output is never read.
        mask = mask.masked_fill(torch.isinf(mask).all(-1, keepdim=True), 0.0)
        keys, values = cache.keys[:, :, start:end].to(q.dtype), cache.values[:, :, start:end].to(q.dtype)
        return self._attend(q, keys, values, mask)

    def new_cache(self, batch_size: int, capacity: int, device: torch.device, dtype: torch.dtype) -> AttentionCache:
        shape = (batch_size, self.n_head, capacity, self.head_size)
        return AttentionCache(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))


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

    def step(self, x: Tensor, cache: RecurrentCache, position: int | Tensor, padding: Tensor | None = None,
             rotary: Rotary | None = None, active: Tensor | None = None) -> Tensor:
        """nn.LSTM's recurrence written out, so that a row at position 0 starts from zeros,
        a padding slot leaves the state as it was, and an inactive row keeps its state."""
        batch, length, _ = x.shape
        if isinstance(position, Tensor):  # one token per row, each at its own position
            positions = position[:, None]
        else:
            positions = torch.arange(position, position + length, device=x.device).expand(batch, length)
        lstm = self.lstm
        h, c = (state.to(x.dtype) for state in cache.read(positions[:, 0] == 0))
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
            outputs.append(h)
        cache.write((h.float(), c.float()), keep=None if active is None else ~active)
        return self.proj(torch.stack(outputs, dim=1))

    def new_cache(self, batch_size: int, capacity: int, device: torch.device, dtype: torch.dtype) -> RecurrentCache:
        shape = (batch_size, self.lstm.hidden_size)
        return RecurrentCache((torch.zeros(shape, device=device), torch.zeros(shape, device=device)), capacity)


class LinearAttention(Mixer):
    """Causal linear attention (Katharopoulos et al. 2020, "Transformers are RNNs").

    Softmax's exp(q.k) becomes phi(q).phi(k) with phi = elu + 1, so attention regroups as
    phi(q_t) S_t / phi(q_t) z_t with S_t = sum_{s<=t} phi(k_s) v_s^T and z_t = sum phi(k_s):
    a state of head_size x (head_size + 1) numbers per head, whatever the length. The
    parallel form goes in chunks (`CHUNK`): the chunk's own keys exactly, as a masked
    T x chunk product, and the state of the chunks before it; memory grows linearly in T.
    It has attention's projections and parameters; positions come from the embeddings.
    With a gate (RFA-Gate, below) the state decays: S_t = g_t S_{t-1} + phi(k_t) v_t^T.
    """

    CHUNK = 64
    FLOOR = 1e-6  # elu + 1 > 0: the denominator is zero only where nothing was seen

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.head_size = config.n_head, config.head_size
        inner = self.n_head * self.head_size
        self.qkv = Linear(config.d_model, 3 * inner, bias=config.bias)
        self.proj = Linear(inner, config.d_model, bias=config.bias)
        self.feature_size = self.head_size

    def _heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        batch, length, _ = x.shape
        return tuple(part.float().view(batch, length, self.n_head, self.head_size).transpose(1, 2)
                     for part in self.qkv(x).chunk(3, dim=-1))

    def _features(self, x: Tensor, real: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """phi(q), phi(k), v as (B, H, T, .) in float32 (the state is a running sum, and bf16
        would lose the small late terms), and the log-gates (B, H, T) or None. Keys and values
        of padding (`real` false) are zeroed, so they add nothing to the state."""
        q, k, v = self._heads(x)
        q, k = F.elu(q) + 1, F.elu(k) + 1
        if real is not None:
            keep = real[:, None, :, None]
            k, v = k * keep, v * keep
        return q, k, v, None

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, log_gate: Tensor | None,
                state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Outputs (B, H, T, head_size) from the state before the first token, and the state after the last."""
        batch, heads, length, _ = q.shape
        chunk = min(self.CHUNK, length)
        pad = -length % chunk
        if pad:  # zero keys and values (and gates of 1) add nothing; the padded queries' outputs are cut off
            q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
            log_gate = None if log_gate is None else F.pad(log_gate, (0, pad))
        chunks = (length + pad) // chunk
        q, k, v = (t.reshape(batch, heads, chunks, chunk, t.shape[-1]) for t in (q, k, v))
        s0, z0 = state
        within = q @ k.transpose(-1, -2)  # (B, H, N, C, C): each query against its own chunk's keys
        if log_gate is None:
            within = within.tril()  # causally
            kv, kz = k.transpose(-1, -2) @ v, k.sum(-2)  # each chunk's addition to S and z
            # S and z before each chunk: the given state plus every earlier chunk's (an exclusive cumsum).
            s_before = s0[:, :, None] + torch.cat([torch.zeros_like(kv[:, :, :1]), kv.cumsum(2)[:, :, :-1]], dim=2)
            z_before = z0[:, :, None] + torch.cat([torch.zeros_like(kz[:, :, :1]), kz.cumsum(2)[:, :, :-1]], dim=2)
            s_end, z_end = s0 + kv.sum(2), z0 + kz.sum(2)
            carried = q @ s_before, (q @ z_before[..., None]).squeeze(-1)
        else:
            cumulative = log_gate.reshape(batch, heads, chunks, chunk).cumsum(-1)  # log decay from the chunk's start
            causal = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril()
            within = within * (cumulative[..., :, None] - cumulative[..., None, :]).masked_fill(~causal, -math.inf).exp()
            to_end = (cumulative[..., -1:] - cumulative).exp()[..., None]  # decay from each key to the chunk's end
            kv, kz = (k * to_end).transpose(-1, -2) @ v, (k * to_end).sum(-2)
            total = cumulative[..., -1].cumsum(-1)  # (B, H, N): log decay from the start to each chunk's end
            before = F.pad(total[..., :-1], (1, 0))  # ... to each chunk's start
            earlier = torch.ones(chunks, chunks, dtype=torch.bool, device=q.device).tril(-1)
            weights = (before[..., :, None] - total[..., None, :]).masked_fill(~earlier, -math.inf).exp()  # (B, H, N, N)
            s_before = torch.einsum("bhnm,bhmij->bhnij", weights, kv) + before.exp()[..., None, None] * s0[:, :, None]
            z_before = torch.einsum("bhnm,bhmi->bhni", weights, kz) + before.exp()[..., None] * z0[:, :, None]
            end = total[..., -1]
            s_end = end.exp()[..., None, None] * s0 + torch.einsum("bhm,bhmij->bhij", (end[..., None] - total).exp(), kv)
            z_end = end.exp()[..., None] * z0 + torch.einsum("bhm,bhmi->bhi", (end[..., None] - total).exp(), kz)
            decayed = cumulative.exp()  # the carried state fades by every gate of the chunk up to t
            carried = decayed[..., None] * (q @ s_before), decayed * (q @ z_before[..., None]).squeeze(-1)
        numerator = within @ v + carried[0]
        denominator = within.sum(-1) + carried[1]
        y = numerator / (denominator.abs()[..., None] + self.FLOOR)
        y = y.reshape(batch, heads, chunks * chunk, -1)[:, :, :length]
        return y, (s_end, z_end)

    def _merge(self, y: Tensor, dtype: torch.dtype) -> Tensor:
        batch, _, length, _ = y.shape
        return self.proj(y.transpose(1, 2).reshape(batch, length, self.n_head * self.head_size).to(dtype))

    def _empty(self, batch: int, device: torch.device) -> tuple[Tensor, Tensor]:
        return (torch.zeros(batch, self.n_head, self.feature_size, self.head_size, device=device),
                torch.zeros(batch, self.n_head, self.feature_size, device=device))

    def forward(self, x: Tensor, rotary: Rotary | None = None) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            y, _ = self._attend(*self._features(x), self._empty(x.shape[0], x.device))
        return self._merge(y, x.dtype)

    def step(self, x: Tensor, cache: RecurrentCache, position: int | Tensor, padding: Tensor | None = None,
             rotary: Rotary | None = None, active: Tensor | None = None) -> Tensor:
        fresh, real = _real_positions(x, position, padding)
        with torch.autocast(x.device.type, enabled=False):
            y, state = self._attend(*self._features(x, real), cache.read(fresh))
        cache.write(state, keep=None if active is None else ~active)
        return self._merge(y, x.dtype)

    def new_cache(self, batch_size: int, capacity: int, device: torch.device, dtype: torch.dtype) -> RecurrentCache:
        return RecurrentCache(self._empty(batch_size, device), capacity)


class RandomFeatureAttention(LinearAttention):
    """Random Feature Attention (Peng et al. 2021). For unit q and k, exp(q.k / sigma^2) is
    approximated by phi(q).phi(k) with phi(x) = [sin(W x), cos(W x)] / sqrt(head_size) and
    W ~ N(0, 1) / sigma (Rahimi & Recht's random Fourier features; sigma learned per head).
    RFA-Gate adds a learned forgetting of the past, a recency bias:
    S_t = g_t S_{t-1} + (1 - g_t) phi(k_t) v_t^T with g_t = sigmoid(w_g . x_t + b_g) per head.

    W is drawn once from a generator seeded by the layer's index, not learned and not saved:
    every load rebuilds the same features (the paper redraws them while training; fixed ones
    keep a run bit-for-bit resumable). The estimate of the softmax denominator can come out
    near zero or below it, and dividing by that blows a head's output up: the denominator's
    magnitude is floored at `FLOOR` (our choice; it changes nothing where the estimate is sound)."""

    FLOOR = 1e-2

    def __init__(self, config: ModelConfig, layer: int, gated: bool) -> None:
        super().__init__(config)
        self.feature_size = 2 * self.head_size
        self.seed = layer
        self.log_sigma = nn.Parameter(torch.zeros(self.n_head))
        self.gate = Linear(config.d_model, self.n_head, bias=True) if gated else None
        self._omega: Tensor | None = None

    def _random_features(self, device: torch.device) -> Tensor:
        if self._omega is None or self._omega.device != device:
            generator = torch.Generator().manual_seed(1_000_003 + self.seed)
            self._omega = torch.randn(self.n_head, self.head_size, self.head_size, generator=generator).to(device)
        return self._omega

    def _phi(self, x: Tensor) -> Tensor:
        w = self._random_features(x.device) / torch.exp(self.log_sigma)[:, None, None]
        projected = torch.einsum("bhtd,hfd->bhtf", F.normalize(x, dim=-1), w)
        return torch.cat([projected.sin(), projected.cos()], dim=-1) / math.sqrt(self.head_size)

    def _features(self, x: Tensor, real: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        q, k, v = self._heads(x)
        q, k = self._phi(q), self._phi(k)
        log_gate = None
        if self.gate is not None:
            logits = self.gate(x.float()).transpose(1, 2)  # (B, H, T)
            log_gate, k = F.logsigmoid(logits), k * torch.sigmoid(-logits)[..., None]  # log g and (1 - g)
        if real is not None:  # padding adds nothing, and does not make the state forget
            keep = real[:, None, :, None]
            k, v = k * keep, v * keep
            log_gate = None if log_gate is None else log_gate * real[:, None, :]
        return q, k, v, log_gate


def _real_positions(x: Tensor, position: int | Tensor, padding: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """(fresh (B,): rows starting a sequence, real (B, T) or None: rows' tokens that are not padding)."""
    batch, length, _ = x.shape
    if isinstance(position, Tensor):  # one token per row, each at its own position
        return position == 0, None
    fresh = torch.full((batch,), position == 0, device=x.device)
    if padding is None:
        return fresh, None
    absolute = torch.arange(position, position + length, device=x.device)
    return fresh, absolute[None, :] >= padding[:, None]


class AFTSimple(Mixer):
    """AFT-simple (Zhai et al. 2021, "An Attention Free Transformer"), causal:
    y_t = sigmoid(q_t) * sum_{s<=t} exp(k_s) v_s / sum_{s<=t} exp(k_s), every channel on its
    own: attention with one weight per channel instead of one per pair of positions. The
    sums are the O(1) state, kept relative to a running maximum of k so exp never overflows;
    the parallel form goes in chunks of `CHUNK`, each a cumulative sum."""

    CHUNK = 64
    PAD = -1e4  # a padding key's logit: exp of it vanishes against any real key's
    RESTART = (2,)  # the state's parts that start at PAD, not zero: the running maximum

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        inner = config.n_head * config.head_size
        self.qkv = Linear(config.d_model, 3 * inner, bias=config.bias)
        self.proj = Linear(inner, config.d_model, bias=config.bias)

    def _sums(self, k: Tensor, v: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, Tensor, Tensor]]:
        """The running sums at each position (B, T, D), both scaled by exp(-peak), the peak
        they are scaled by (B, T, D), and the sums and peak after the last position."""
        numerator, denominator, peak = state[:3]  # (B, D) each
        nums, dens, peaks = [], [], []
        # split, not [:, start:stop] in the loop: a sliced tensor's gradient is allocated at full
        # size per chunk, O(T^2 / CHUNK) in the backward pass.
        for kc, vc in zip(k.split(self.CHUNK, dim=1), v.split(self.CHUNK, dim=1)):
            new_peak = torch.maximum(peak, kc.amax(dim=1))
            weight, rescale = torch.exp(kc - new_peak[:, None]), torch.exp(peak - new_peak)[:, None]
            nums.append(numerator[:, None] * rescale + (weight * vc).cumsum(dim=1))
            dens.append(denominator[:, None] * rescale + weight.cumsum(dim=1))
            peaks.append(new_peak[:, None].expand_as(kc))
            numerator, denominator, peak = nums[-1][:, -1], dens[-1][:, -1], new_peak
        return torch.cat(nums, dim=1), torch.cat(dens, dim=1), torch.cat(peaks, dim=1), (numerator, denominator, peak)

    def _attend(self, k: Tensor, v: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        num, den, _, state = self._sums(k, v, state)
        return num / den.clamp(min=1e-30), state  # 0 / 0 only for padding before a row's first token

    def _run(self, x: Tensor, state: tuple[Tensor, ...], real: Tensor | None) -> tuple[Tensor, tuple[Tensor, ...]]:
        with torch.autocast(x.device.type, enabled=False):  # running sums of exponentials: float32
            q, k, v = self.qkv(x).float().chunk(3, dim=-1)
            if real is not None:
                k, v = k.masked_fill(~real[..., None], self.PAD), v.masked_fill(~real[..., None], 0.0)
            y, state = self._attend(k, v, state)
        return self.proj((torch.sigmoid(q) * y).to(x.dtype)), state

    def _empty(self, batch: int, device: torch.device) -> tuple[Tensor, ...]:
        width = self.proj.in_features
        zeros = torch.zeros(batch, width, device=device)
        return zeros, zeros.clone(), torch.full((batch, width), self.PAD, device=device)

    def forward(self, x: Tensor, rotary: Rotary | None = None) -> Tensor:
        return self._run(x, self._empty(x.shape[0], x.device), None)[0]

    def step(self, x: Tensor, cache: RecurrentCache, position: int | Tensor, padding: Tensor | None = None,
             rotary: Rotary | None = None, active: Tensor | None = None) -> Tensor:
        fresh, real = _real_positions(x, position, padding)
        state = list(cache.read(fresh))
        for part in self.RESTART:  # a new sequence's maximum (and keys) start low, not at 0
            state[part] = state[part].masked_fill(fresh.view(-1, *[1] * (state[part].dim() - 1)), self.PAD)
        y, state = self._run(x, tuple(state), real)
        cache.write(state, keep=None if active is None else ~active)
        return y

    def new_cache(self, batch_size: int, capacity: int, device: torch.device, dtype: torch.dtype) -> RecurrentCache:
        return RecurrentCache(self._empty(batch_size, device), capacity)


class AFTLocal(AFTSimple):
    """AFT-local (Zhai et al. 2021, §3.2): AFT-simple with a learned bias on the weights of the
    `window` most recent positions, one per head and distance:
    y_t = sigmoid(q_t) * sum_s exp(k_s + w_{t-s}) v_s / sum_s exp(k_s + w_{t-s}), w = 0 further back.
    The paper indexes w by absolute positions (a T x T matrix, learned for one length); a causal
    model that decodes at any length takes it by distance. Since exp(k + w) = exp(k) + (e^w - 1) exp(k),
    the sums are AFT-simple's plus a correction from the window, so decoding keeps AFT-simple's
    state and the last window - 1 keys and values: the same memory at every position."""

    RESTART = (2, 3)  # the running maximum and the window's keys

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.window, self.head_size = config.window, config.head_size
        self.position_bias = nn.Parameter(torch.zeros(config.n_head, config.window))  # zeros: it starts as AFT-simple

    def _attend(self, k: Tensor, v: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        num, den, peak, sums = self._sums(k, v, state)
        # The window - 1 keys and values before the chunk: the cache's when decoding, padding in
        # `forward` (nothing precedes position 0, and a PAD key's weight is 0).
        (batch, length, width), history = k.shape, state[3].shape[1]
        missing = (batch, self.window - 1 - history, width)
        keys = torch.cat([k.new_full(missing, self.PAD), state[3], k], dim=1)
        values = torch.cat([v.new_zeros(missing), state[4], v], dim=1)
        recent = (keys[:, keys.shape[1] - self.window + 1:], values[:, values.shape[1] - self.window + 1:])
        # The correction is a causal convolution over time, one kernel e^w - 1 per head: a banded
        # matrix, so one batched matmul rather than `window` elementwise passes over (B, T, D).
        # Its exponentials need the same guard as `_sums`'s, so it goes in `_sums`'s chunks, whose
        # peak is one value per chunk and channel, >= the chunk's keys and the window - 1 before
        # them: each chunk's keys are weighted exp(k - that peak) <= 1, and its queries see only them.
        size = min(self.CHUNK, length)
        chunks, span = -(-length // size), size + self.window - 1
        extra = chunks * size - length  # the last chunk's queries past the end: padding, dropped below

        def windows(x: Tensor, fill: float) -> Tensor:  # (B, window - 1 + T, D) -> (D, B, chunks, span)
            # Channels first: each head's windows are then one (rows, span) matrix, with no copy.
            return F.pad(x, (0, 0, 0, extra), value=fill).permute(2, 0, 1).contiguous().unfold(2, span, size)

        weight = torch.exp(windows(keys, self.PAD) - peak[:, ::size].permute(2, 0, 1)[..., None])
        # band[h, j, i]: the gain of a chunk's key j for its query i, at distance window - 1 + i - j.
        distance = torch.arange(size, device=k.device) + self.window - 1 - torch.arange(span, device=k.device)[:, None]
        inside = (distance >= 0) & (distance < self.window)
        band = torch.expm1(self.position_bias)[:, distance.clamp(0, self.window - 1)] * inside  # (H, span, size)

        def convolve(terms: Tensor) -> Tensor:  # (D, B, chunks, span) -> (B, T, D)
            out = terms.view(band.shape[0], -1, span) @ band  # (H, head_size * B * chunks, size)
            return out.view(width, batch, chunks * size).permute(1, 2, 0)[:, :length]

        num, den = num + convolve(weight * windows(values, 0.0)), den + convolve(weight)
        return num / den.clamp(min=1e-30), (*sums, *recent)

    def _empty(self, batch: int, device: torch.device, history: int | None = None) -> tuple[Tensor, ...]:
        window = (batch, self.window - 1 if history is None else history, self.proj.in_features)
        return (*super()._empty(batch, device), torch.full(window, self.PAD, device=device), torch.zeros(window, device=device))

    def forward(self, x: Tensor, rotary: Rotary | None = None) -> Tensor:
        return self._run(x, self._empty(x.shape[0], x.device, history=0), None)[0]


class GatedAttentionUnit(Mixer):
    """FLASH's gated attention unit with mixed-chunk attention (Hua et al. 2022, "Transformer
    Quality in Linear Time", §2 and §3.2). From x: U = silu(x W_u) and V = silu(x W_v) (width
    e = d_model), and one shared Z = silu(x W_z) (width s) that four per-dimension scales and
    offsets turn into the queries and keys of two attentions:
    - within each chunk of `window` positions, quadratic: relu(q.k / sqrt(s) + b_{t-j})^2 / C,
      causal, with a learned bias per distance b (zeros at first);
    - across chunks, linear and unnormalised: q_t . sum over earlier chunks of k v^T, / C.
    out = (U * (quadratic + linear)) W_o. e = s = d_model gives attention's 4 d^2 weights.

    Chunks start at each row's first token (not its first slot, which may be left padding),
    so a row decodes as if alone. Decoding keeps the linear state (s x e) and the current
    chunk's keys and values: memory set by the chunk, the same at every position. `forward`
    works chunk by chunk in parallel; `step` goes token by token (a prefill too)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d = config.d_model
        self.expand, self.shared, self.chunk = d, d, config.window
        self.inp = Linear(d, 2 * self.expand + self.shared, bias=config.bias)  # U, V and Z side by side
        self.gamma = nn.Parameter(torch.ones(4, self.shared))  # quadratic q and k, linear q and k
        self.beta = nn.Parameter(torch.zeros(4, self.shared))
        self.position_bias = nn.Parameter(torch.zeros(self.chunk))
        self.proj = Linear(self.expand, d, bias=config.bias)

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """U, V and the four query/key sets (4, B, T, s), in float32."""
        u, v, z = F.silu(self.inp(x.float())).split([self.expand, self.expand, self.shared], dim=-1)
        return u, v, z[None] * self.gamma[:, None, None] + self.beta[:, None, None]

    def _scores(self, q: Tensor, k: Tensor, distance: Tensor) -> Tensor:
        """relu(q.k / sqrt(s) + b_distance)^2 / C, zero where the distance is negative (the future)."""
        logits = q @ k.transpose(-1, -2) / math.sqrt(self.shared) + self.position_bias[distance.clamp(min=0)]
        return F.relu(logits).square().masked_fill(distance < 0, 0.0) / self.chunk

    def forward(self, x: Tensor, rotary: Rotary | None = None) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            batch, length, _ = x.shape
            u, v, qk = self._project(x)
            pad = -length % self.chunk  # zeros after the end: the causal mask keeps them out
            v, qk = F.pad(v, (0, 0, 0, pad)), F.pad(qk, (0, 0, 0, pad))
            chunks = (length + pad) // self.chunk
            v = v.view(batch, chunks, self.chunk, self.expand)
            quad_q, quad_k, lin_q, lin_k = qk.view(4, batch, chunks, self.chunk, self.shared)
            position = torch.arange(self.chunk, device=x.device)
            quadratic = self._scores(quad_q, quad_k, position[:, None] - position[None, :]) @ v
            per_chunk = lin_k.transpose(-1, -2) @ v  # (B, N, s, e)
            before = torch.cumsum(per_chunk, dim=1) - per_chunk  # the earlier chunks only
            linear = lin_q @ before / self.chunk
            y = (quadratic + linear).reshape(batch, -1, self.expand)[:, :length]
            return self.proj((u * y).to(x.dtype))

    def step(self, x: Tensor, cache: RecurrentCache, position: int | Tensor, padding: Tensor | None = None,
             rotary: Rotary | None = None, active: Tensor | None = None) -> Tensor:
        batch, length, _ = x.shape
        if isinstance(position, Tensor):
            absolute = position[:, None]
        else:
            absolute = torch.arange(position, position + length, device=x.device).expand(batch, length)
        first = torch.zeros(batch, dtype=torch.long, device=x.device) if padding is None else padding
        offset = absolute - first[:, None]  # positions from each row's first token; < 0 is padding
        with torch.autocast(x.device.type, enabled=False):
            u, v, qk = self._project(x)
            state, keys_q, keys_l, values = cache.read(offset[:, 0] == 0)
            slots = torch.arange(self.chunk, device=x.device)
            outputs = []
            for t in range(length):
                real, phase = offset[:, t] >= 0, offset[:, t].clamp(min=0) % self.chunk  # (B,)
                # A chunk begins: the finished one's keys and values join the linear state.
                fold = (real & (phase == 0) & (offset[:, t] > 0))[:, None, None]
                state = torch.where(fold, state + keys_l.transpose(1, 2) @ values, state)
                write = (real[:, None] & (slots[None, :] == phase[:, None]))[..., None]  # (B, C, 1)
                keys_q = torch.where(write, qk[0, :, t, None], keys_q)
                keys_l = torch.where(write, qk[3, :, t, None], keys_l)
                values = torch.where(write, v[:, t, None], values)
                distance = phase[:, None, None] - slots[None, None, :]  # (B, 1, C)
                quadratic = self._scores(qk[1, :, t, None], keys_q, distance) @ values  # queries: quadratic q
                linear = qk[2, :, t, None] @ state / self.chunk
                outputs.append((quadratic + linear)[:, 0])
            y = u * torch.stack(outputs, dim=1)
        cache.write((state, keys_q, keys_l, values), keep=None if active is None else ~active)
        return self.proj(y.to(x.dtype))

    def new_cache(self, batch_size: int, capacity: int, device: torch.device, dtype: torch.dtype) -> RecurrentCache:
        zeros = functools.partial(torch.zeros, device=device)
        return RecurrentCache((zeros(batch_size, self.shared, self.expand), zeros(batch_size, self.chunk, self.shared),
                               zeros(batch_size, self.chunk, self.shared), zeros(batch_size, self.chunk, self.expand)), capacity)


class SRU(Mixer):
    """The Simple Recurrent Unit (Lei et al. 2018, eqs. 1-4): one matmul for every position
    at once, then a recurrence of elementwise products only:
        f_t = sigmoid(W_f x_t + v_f * c_{t-1} + b_f),  c_t = f_t * c_{t-1} + (1 - f_t) * (W x_t),
        r_t = sigmoid(W_r x_t + v_r * c_{t-1} + b_r),  h_t = r_t * c_t + (1 - r_t) * x_t,
    then a projection like attention's (which brings it to attention's parameter count)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d = config.d_model
        self.w = Linear(d, 3 * d, bias=False)
        self.v = nn.Parameter(torch.zeros(2, d))  # v_f, v_r
        self.b = nn.Parameter(torch.zeros(2, d))  # b_f, b_r
        self.proj = Linear(d, config.d_model, bias=config.bias)

    def _run(self, x: Tensor, c: Tensor, real: Tensor | None) -> tuple[Tensor, Tensor]:
        with torch.autocast(x.device.type, enabled=False):  # a state carried across the context: float32
            x = x.float()
            # Split into positions once: indexing [:, t] in the loop would cost a full-size
            # gradient per position in the backward pass, O(T^2) in all (38 s at 16k positions).
            candidate, forget, reset = (part.unbind(1) for part in self.w(x).chunk(3, dim=-1))
            inputs = x.unbind(1)
            outputs = []
            for t in range(x.shape[1]):
                f = torch.sigmoid(forget[t] + self.v[0] * c + self.b[0])
                r = torch.sigmoid(reset[t] + self.v[1] * c + self.b[1])
                c_next = f * c + (1 - f) * candidate[t]
                if real is not None:  # left padding keeps the state at zero until the row's first token
                    c_next = torch.where(real[:, t, None], c_next, c)
                c = c_next
                outputs.append(r * c + (1 - r) * inputs[t])
            h = torch.stack(outputs, dim=1)
        return h, c

    def forward(self, x: Tensor, rotary: Rotary | None = None) -> Tensor:
        h, _ = self._run(x, x.new_zeros(x.shape[0], x.shape[-1], dtype=torch.float32), None)
        return self.proj(h.to(x.dtype))

    def step(self, x: Tensor, cache: RecurrentCache, position: int | Tensor, padding: Tensor | None = None,
             rotary: Rotary | None = None, active: Tensor | None = None) -> Tensor:
        fresh, real = _real_positions(x, position, padding)
        (c,) = cache.read(fresh)
        h, c = self._run(x, c, real)
        cache.write((c,), keep=None if active is None else ~active)
        return self.proj(h.to(x.dtype))

    def new_cache(self, batch_size: int, capacity: int, device: torch.device, dtype: torch.dtype) -> RecurrentCache:
        return RecurrentCache((torch.zeros(batch_size, self.w.in_features, device=device),), capacity)


class DiagonalSSM(Mixer):
    """A diagonal state-space layer, S4D (Gu et al. 2022, "On the Parameterization and
    Initialization of Diagonal State Space Models"), gated as in H3 and Mamba:
    y = out(ssm(u) * silu(gate)) with (u, gate) = in(x). Every channel of u runs its own
    linear system x' = A x + B u, y = C x + D u, A diagonal and complex (S4D-Lin: -1/2 + i pi n),
    discretised by zero-order hold with a learned step dt. u has `ssm_size` channels, which
gives the mixer attention's parameter count (config.py). In parallel it is a causal
    convolution with the kernel K_l = 2 Re(C B A^l), done by FFT in O(T log T); decoding is
    the recurrence, one state of SSM_STATE / 2 complex numbers per channel."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d, pairs = config.ssm_size, SSM_STATE // 2  # d channels: config.py solves it for attention's size
        self.inp = Linear(config.d_model, 2 * d, bias=config.bias)
        self.proj = Linear(d, config.d_model, bias=config.bias)
        # S4D's initialisation: dt log-uniform in [1e-3, 1e-1], A = -1/2 + i pi n, C ~ N(0, 1/2) per part, B = 1.
        self.log_dt = nn.Parameter(torch.empty(d).uniform_(math.log(1e-3), math.log(1e-1)))
        self.log_a_real = nn.Parameter(torch.full((d, pairs), math.log(0.5)))
        self.a_imag = nn.Parameter(math.pi * torch.arange(pairs, dtype=torch.float32).repeat(d, 1))
        self.b = nn.Parameter(torch.stack([torch.ones(d, pairs), torch.zeros(d, pairs)], dim=-1))
        self.c = nn.Parameter(torch.randn(d, pairs, 2) * math.sqrt(0.5))
        self.d = nn.Parameter(torch.ones(d))

    def _system(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The discrete system: dt A, A-bar, B-bar and C, each (D, pairs) complex."""
        a = torch.complex(-torch.exp(self.log_a_real), self.a_imag)
        dt_a = torch.exp(self.log_dt)[:, None] * a
        a_bar = torch.exp(dt_a)
        b_bar = (a_bar - 1) / a * torch.view_as_complex(self.b)  # zero-order hold
        return dt_a, a_bar, b_bar, torch.view_as_complex(self.c)

    def _run(self, u: Tensor, x0: Tensor | None) -> tuple[Tensor, Tensor]:
        """u (B, T, D) float32 and the state before it (B, D, pairs) complex, or None for zeros
        -> y (B, T, D) and the state after the last position."""
        length = u.shape[1]
        dt_a, a_bar, b_bar, c = self._system()
        u = u.transpose(1, 2)  # (B, D, T)
        if length == 1 and x0 is not None:  # a decoding step: the recurrence itself
            state = a_bar * x0 + b_bar * u
            y = 2 * (c * state).real.sum(-1, keepdim=True)
            return (y + self.d[:, None] * u).transpose(1, 2), state
        powers = torch.exp(dt_a[..., None] * torch.arange(length + 1, device=u.device))  # A-bar^l, l = 0..T
        kernel = 2 * torch.einsum("dn,dnl->dl", c * b_bar, powers[..., :length]).real  # (D, T)
        n = 2 * length
        y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(kernel, n=n), n=n)[..., :length]
        # the state after position T-1: sum over s of A-bar^(T-1-s) B-bar u_s, plus A-bar^T x0
        state = torch.einsum("dnl,bdl->bdn", powers[..., :length].flip(-1) * b_bar[..., None], u.to(powers.dtype))
        if x0 is not None:
            y = y + 2 * torch.einsum("dn,dnl,bdn->bdl", c, powers[..., 1:], x0).real
            state = state + powers[..., length] * x0
        return (y + self.d[:, None] * u).transpose(1, 2), state

    def _mix(self, x: Tensor, x0: Tensor | None, real: Tensor | None) -> tuple[Tensor, Tensor]:
        with torch.autocast(x.device.type, enabled=False):  # complex powers and FFTs: float32
            u, gate = self.inp(x.float()).chunk(2, dim=-1)
            if real is not None:  # padding feeds nothing into the state
                u = u * real[..., None]
            y, state = self._run(u, x0)
            y = y * F.silu(gate)
        return self.proj(y.to(x.dtype)), state

    def forward(self, x: Tensor, rotary: Rotary | None = None) -> Tensor:
        return self._mix(x, None, None)[0]

    def step(self, x: Tensor, cache: RecurrentCache, position: int | Tensor, padding: Tensor | None = None,
             rotary: Rotary | None = None, active: Tensor | None = None) -> Tensor:
        fresh, real = _real_positions(x, position, padding)
        (x0,) = cache.read(fresh)
        y, state = self._mix(x, torch.view_as_complex(x0), real)
        cache.write((torch.view_as_real(state),), keep=None if active is None else ~active)
        return y

    def new_cache(self, batch_size: int, capacity: int, device: torch.device, dtype: torch.dtype) -> RecurrentCache:
        return RecurrentCache((torch.zeros(batch_size, self.d.shape[0], SSM_STATE // 2, 2, device=device),), capacity)


# The recurrences' own parameters (not weight matrices, whatever their shape): no weight
# decay and no Muon for them (train/optim.py).
DYNAMICS = ("v", "b", "c", "log_a_real", "a_imag", "log_sigma", "position_bias", "gamma", "beta", "content_bias")

MIXER_CLASSES = {"lstm": LSTMMixer, "linear": LinearAttention, "aft": AFTSimple, "aft-local": AFTLocal,
                 "gau": GatedAttentionUnit, "xl": TransformerXL, "sru": SRU, "ssm": DiagonalSSM}


def build_mixer(config: ModelConfig, layer: int) -> Mixer:
    kind = config.layer_attention(layer)
    if kind in ("rfa", "rfa-gate"):
        return RandomFeatureAttention(config, layer, gated=kind == "rfa-gate")
    if kind in MIXER_CLASSES:
        return MIXER_CLASSES[kind](config)
    return CausalSelfAttention(config, local=kind == "local")
