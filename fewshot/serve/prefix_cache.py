"""Automatic prefix caching: keys and values of prompt prefixes, kept and reused across requests.

Few-shot traffic repeats itself: every request carries the same K demonstrations and only
the query at the end changes. As vLLM does, a prompt is cut into blocks of `block_size`
tokens, and each full block's keys and values (every layer's) are stored under a hash of
its tokens *and of every block before it*, so one key names one whole prefix. A new prompt
walks its blocks from the start and takes the longest run that is stored; prefill starts
after it.

- The key also holds the adapter's name: an adapter changes every layer's keys and values.
- The last prompt token is always computed, never taken from here: its logits start the
  sampling, and they are not stored.
- Eviction is least-recently-used by block, under a byte budget. A hit touches its blocks
  from the last to the first, so a prefix's first blocks, which more prompts share, are the
  last to go; a block whose parent went is unreachable and ages out the same way.
- Only caches that keep each position apart (softmax attention, Transformer-XL) can be cut
  into blocks: a recurrent state has folded its positions together (`GPT.rewindable`).

Stored tensors are copies, bit for bit what prefill wrote, so the tokens are the same with
the cache on or off (tests/serve/test_prefix_cache.py, greedy and seeded sampling). Logprobs
agree to float rounding (~1e-6), not bit for bit: a prefill that starts after a hit computes
its rows in a chunk of another size, and a CPU matmul's blocking, so its rounding, depends
on that size. Without the cache the same happens with the load, which decides how the
engine cuts a prompt into chunks.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

BLOCK_SIZE = 16  # tokens per block, vLLM's default


@dataclass(frozen=True)
class _Block:
    layers: tuple[tuple[Tensor, ...], ...]  # per layer: keys, values (heads, block, head_size), [raw (block, width)]
    nbytes: int


class PrefixCache:
    def __init__(self, budget_bytes: int, block_size: int = BLOCK_SIZE) -> None:
        self.budget_bytes = budget_bytes
        self.block_size = block_size
        self._blocks: OrderedDict[bytes, _Block] = OrderedDict()
        self.nbytes = 0
        self.queried_tokens = 0  # prompt tokens that could have come from here
        self.hit_tokens = 0  # ... and that did

    def __len__(self) -> int:
        return len(self._blocks)

    def _keys(self, prompt: Sequence[int], adapter: str | None, blocks: int) -> list[bytes]:
        keys, parent = [], hashlib.blake2b((adapter or "").encode(), digest_size=16).digest()
        for b in range(blocks):
            tokens = prompt[b * self.block_size : (b + 1) * self.block_size]
            parent = hashlib.blake2b(parent + b"".join(t.to_bytes(4, "little") for t in tokens), digest_size=16).digest()
            keys.append(parent)
        return keys

    def restore(self, prompt: Sequence[int], adapter: str | None, layers: list) -> int:
        """Write the longest stored prefix of `prompt` (all but its last token) into `layers`
        (one row of a cache: AttentionCache per layer). Returns how many positions it filled."""
        usable = (len(prompt) - 1) // self.block_size
        self.queried_tokens += usable * self.block_size
        found = []
        for key in self._keys(prompt, adapter, usable):
            block = self._blocks.get(key)
            if block is None:
                break
            found.append((key, block))
        for key, _ in reversed(found):
            self._blocks.move_to_end(key)
        if not found:
            return 0
        for i, layer in enumerate(layers):
            for j, target in enumerate(_by_position(layer)):
                part = torch.cat([block.layers[i][j] for _, block in found], dim=-2)
                target[..., : part.shape[-2], :] = part
        filled = len(found) * self.block_size
        self.hit_tokens += filled
        return filled

    def store(self, prompt: Sequence[int], adapter: str | None, layers: list) -> None:
        """Keep the full blocks of `prompt`, whose keys and values are in `layers` (one row)."""
        keys = self._keys(prompt, adapter, len(prompt) // self.block_size)
        for b in reversed(range(len(keys))):  # so the first blocks end up the most recent
            if keys[b] in self._blocks:
                self._blocks.move_to_end(keys[b])
                continue
            start, stop = b * self.block_size, (b + 1) * self.block_size
            parts = tuple(tuple(t[..., start:stop, :].clone() for t in _by_position(layer)) for layer in layers)
            nbytes = sum(t.nbytes for part in parts for t in part)
            if nbytes > self.budget_bytes:
                return
            while self.nbytes + nbytes > self.budget_bytes:
                _, evicted = self._blocks.popitem(last=False)
                self.nbytes -= evicted.nbytes
            self._blocks[keys[b]] = _Block(parts, nbytes)
            self.nbytes += nbytes


def _by_position(layer) -> tuple[Tensor, ...]:
    """One row's tensors that hold a slice per position, the position axis second to last:
    keys and values (heads, capacity, head_size), and the raw projections (capacity, width)
    of a convolved attention."""
    return (layer.keys[0], layer.values[0]) + (() if layer.raw is None else (layer.raw[0],))
