"""Decoding with a KV cache: one loop for sampling (`generate`) and the harness's greedy answers.

`decode` prefills a batch of prompts (left-padded when their lengths differ) and then takes one
cached step per token; its callers decide how to pick each token and when a row is done.

Decisions a caller of `generate` can rely on:
- Context overflow. The model never sees more than `config.context` tokens (learned
  positions end there, and rotary ones were never trained past it). A prompt longer than
  that keeps its last tokens and leaves room for `min(max_tokens, context // 2)` new ones, so
  generation always sees at least half a context of prompt. When prompt + generated text
  fills the context, the cache is rebuilt from the last `context // 2` tokens (one
  re-prefill) and decoding goes on, so a sample may be far longer than the context; each
  slide forgets the older half.
- Stop sequences are matched on decoded text and the match is cut off; streamed text never
  shows any part of one. The token that completed a stop sequence stays in `token_ids`
  (text can end mid-token); a final end-of-text token does not.
- An empty prompt starts from the end-of-text token, as GPT-2/3 do between documents.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fewshot.errors import FewshotError
from fewshot.inference.lookup import NgramDrafts
from fewshot.inference.sampling import (
    SamplingOptions,
    TokenLogprob,
    new_generator,
    prompt_token_ids,
    sample_next,
    token_logprobs,
)
from fewshot.tokenizer import StreamDecoder


def decode(model, prompts: Sequence[Sequence[int]], max_tokens: int, next_tokens: Callable[[Tensor], Tensor],
           on_tokens: Callable[[Tensor, Tensor], bool], pad_id: int = 0, lookup: int = 0) -> None:
    """Decode up to `max_tokens` new tokens for every prompt, all rows in lockstep.

    `next_tokens(logits)` picks the next ids (B,) from next-token logits (B, V);
    `on_tokens(ids, logits)` takes them and returns True once every row is done (finished
    rows ride along unread). When the longest row fills the context, every row restarts
    from its last `context // 2` tokens in a fresh cache (a rewound one would be wrong for
    mixers with recurrent state).

    `lookup` > 0 is prompt-lookup decoding: a step feeds the next token and up to `lookup`
    draft tokens (fewshot.inference.lookup) in one forward pass, then picks tokens position by
    position for as long as every row's pick equals its draft, and the cache forgets the rest.
    Both callbacks run once per produced token, on the logits the token-by-token loop would
    have given (to float rounding), so greedy text is the same and a seeded sample draws the
    same random numbers; only the number of forward passes changes.
    """
    if lookup and not model.rewindable:
        raise FewshotError(f"prompt lookup needs a cache it can rewind, and the {model.config.attention} mixer "
                           "keeps a recurrent state: decode without it")
    context = model.config.context
    rows = [list(prompt) for prompt in prompts]
    # Room for everything this call can feed, so short generations allocate little.
    cache, logits = _prefill(model, rows, pad_id, capacity=min(context, max(map(len, rows)) + max_tokens))
    drafts = [NgramDrafts(row) for row in rows] if lookup else []
    keep = max(1, context // 2)
    produced = 0

    def take(logits: Tensor) -> tuple[Tensor, bool]:
        nonlocal produced
        next_ids = next_tokens(logits)
        for i, token_id in enumerate(next_ids.tolist()):
            rows[i].append(token_id)
            if drafts:
                drafts[i].append(token_id)
        produced += 1
        return next_ids, on_tokens(next_ids, logits) or produced == max_tokens

    next_ids, done = take(logits)
    while not done:  # next_ids: the last picked tokens, which the cache does not hold yet
        if cache.length == cache.capacity:
            rows = [row[-keep:] for row in rows]
            cache, logits = _prefill(model, rows, pad_id)
            next_ids, done = take(logits)
            continue
        room = min(lookup, cache.capacity - cache.length - 1, max_tokens - produced - 1)
        proposed = [d.draft(room) for d in drafts]
        width = max(map(len, proposed), default=0)
        if width == 0:
            next_ids, done = take(model.decode_step(next_ids[:, None], cache)[:, -1])
            continue
        # A short draft is padded with pad_id: a pick that happens to equal it is still the
        # token that was fed, so accepting it is as right as accepting a real draft.
        draft = torch.tensor([p + [pad_id] * (width - len(p)) for p in proposed], device=next_ids.device)
        start = cache.length
        logits = model.step(torch.cat((next_ids[:, None], draft), dim=1), cache)
        for position in range(width + 1):
            next_ids, done = take(logits[:, position])
            if done or position == width or not torch.equal(next_ids, draft[:, position]):
                break
        cache.rewind(start + position + 1)  # keep the fed tokens whose picks matched


def _prefill(model, rows: list[list[int]], pad_id: int, capacity: int | None = None):
    """A new cache holding `rows`, left-padded (the model gives each row its own positions and
    hides its padding, `Cache.padding`), and the logits after each row's last token. Rows that
    are all one prompt (n samples of it) are prefilled once and copied."""
    device = next(model.parameters()).device
    if len(rows) > 1 and all(row == rows[0] for row in rows):  # n samples of one prompt: prefill it once
        cache = model.new_cache(len(rows), capacity=capacity)
        if hasattr(cache, "copy_first_row"):  # an ensemble's caches do not have it
            first = cache.rows(0, 1)
            logits = model.step(torch.tensor(rows[:1], device=device), first, last_only=True)[:, -1]
            cache.copy_first_row(first)
            return cache, logits.repeat(len(rows), 1)
    longest = max(map(len, rows))
    padding = torch.tensor([longest - len(row) for row in rows], device=device)
    padded = [[pad_id] * (longest - len(row)) + row for row in rows]
    cache = model.new_cache(len(rows), capacity=capacity, padding=padding if padding.any() else None)
    return cache, model.step(torch.tensor(padded, device=device), cache, last_only=True)[:, -1]


# ---------------------------------------------------------------------------- text

def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    """Where the earliest stop sequence in `text` starts, or None."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def _held_tail(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest tail of `text` that could still grow into a stop sequence."""
    longest = max((len(s) for s in stops), default=1) - 1
    for length in range(min(len(text), longest), 0, -1):
        tail = text[-length:]
        if any(s.startswith(tail) for s in stops):
            return length
    return 0


class SampleText:
    """One sample's decoded text, streamed without ever showing part of a stop sequence.

    `pending` holds text not yet shown: only the tail that might begin a stop sequence.
    Any stop occurrence must begin inside it (everything before was shown only once it
    could no longer start one), so each token costs time bounded by the stop lengths,
    not by how much text came before.
    """

    def __init__(self, tokenizer, stops: tuple[str, ...], emit: Callable[[str], None] | None) -> None:
        self.decoder = StreamDecoder(tokenizer)
        self.stops = stops
        self.emit = emit
        self.parts: list[str] = []
        self.pending = ""
        self.stopped = False

    def feed(self, token_id: int) -> bool:
        """Add one token's text; True when it completed a stop sequence."""
        return self._add(self.decoder.feed([token_id]))

    def finish(self) -> bool:
        """No more tokens: release held-back text, since no stop sequence can complete now.

        True when the decoder's last bytes completed a stop sequence after all.
        """
        if self.stopped:
            return False
        if self._add(self.decoder.flush()):
            return True
        self._show(self.pending)
        self.pending = ""
        return False

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def _add(self, new_text: str) -> bool:
        if not new_text:
            return False
        self.pending += new_text
        cut = _first_stop(self.pending, self.stops)
        if cut is not None:
            self._show(self.pending[:cut])
            self.pending, self.stopped = "", True
            return True
        shown = len(self.pending) - _held_tail(self.pending, self.stops)
        self._show(self.pending[:shown])
        self.pending = self.pending[shown:]
        return False

    def _show(self, text: str) -> None:
        if text:
            self.parts.append(text)
            if self.emit is not None:
                self.emit(text)


# ---------------------------------------------------------------------------- sampling


@dataclass(frozen=True)
class Completion:
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str  # "stop" (stop sequence or end-of-text) | "length" (max_tokens)
    logprobs: tuple[TokenLogprob, ...] | None
    prompt_tokens: int  # tokens in the prompt as given, before any left-truncation


@dataclass
class _Sample:
    stream: SampleText
    token_ids: list[int]
    logprobs: list[TokenLogprob]
    finish_reason: str | None = None


def _prompt_window(ids: list[int], context: int, max_tokens: int) -> list[int]:
    """The prompt tokens the model sees: the last ones, leaving room to generate (module docstring)."""
    room = min(max_tokens, context // 2)
    return ids[-(context - room) :]


def _accept(sample: _Sample, token_id: int, logprob: TokenLogprob | None, stop_ids: frozenset[int], stop_at_eot: bool) -> None:
    if stop_at_eot and token_id in stop_ids:
        sample.finish_reason = "stop"
        return
    sample.token_ids.append(token_id)
    if logprob is not None:
        sample.logprobs.append(logprob)
    if sample.stream.feed(token_id):
        sample.finish_reason = "stop"


def generate(
    model,
    tokenizer,
    prompt: str | Sequence[int],
    options: SamplingOptions,
    on_text: Callable[[int, str], None] | None = None,
) -> list[Completion]:
    """Sample `options.n` completions of `prompt`; `on_text(sample_index, new_text)` streams their text.

    Context overflow, logprobs and stop sequences behave as the module docstring says.
    """
    config = model.config
    prompt_ids = prompt_token_ids(tokenizer, prompt, config.vocab_size)
    options.check_vocab(config.vocab_size)
    eot_id = getattr(tokenizer, "eot_id", None)
    if not prompt_ids and eot_id is None:
        raise FewshotError("prompt is empty and the tokenizer has no end-of-text token to start from")
    window = _prompt_window(prompt_ids or [eot_id], config.context, options.max_tokens)

    def emitter(index: int) -> Callable[[str], None] | None:
        return None if on_text is None else (lambda text: on_text(index, text))

    samples = [_Sample(SampleText(tokenizer, options.stop, emitter(i)), [], []) for i in range(options.n)]
    was_training = model.training
    model.eval()  # no dropout while sampling; the caller's mode comes back afterwards
    try:
        with torch.inference_mode():
            _sample(model, tokenizer, window, samples, options, getattr(tokenizer, "stop_ids", frozenset({eot_id})))
    finally:
        model.train(was_training)
    return [
        Completion(
            text=s.stream.text,
            token_ids=tuple(s.token_ids),
            finish_reason=s.finish_reason or "length",
            logprobs=tuple(s.logprobs) if options.logprobs is not None else None,
            prompt_tokens=len(prompt_ids),
        )
        for s in samples
    ]


def _sample(model, tokenizer, window: list[int], samples: list[_Sample], options: SamplingOptions, stop_ids: frozenset[int]) -> None:
    """`options.n` samples of one prompt, through `decode`."""
    device = next(model.parameters()).device
    n = len(samples)
    generator = new_generator(options.seed, device)
    counts = torch.zeros(n, model.config.vocab_size, device=device)
    batch = torch.arange(n, device=device)

    def next_tokens(logits: Tensor) -> Tensor:
        next_ids = sample_next(logits, counts, options, generator)
        counts[batch, next_ids] += 1
        return next_ids

    def on_tokens(next_ids: Tensor, logits: Tensor) -> bool:
        logprobs = token_logprobs(tokenizer, logits, next_ids, options) if options.logprobs is not None else None
        for i, token_id in enumerate(next_ids.tolist()):
            if samples[i].finish_reason is None:
                _accept(samples[i], token_id, logprobs[i] if logprobs else None, stop_ids, options.stop_at_eot)
        return all(s.finish_reason for s in samples)

    decode(model, [window] * n, options.max_tokens, next_tokens, on_tokens, lookup=options.prompt_lookup)
    for sample in samples:
        if sample.stream.finish():
            sample.finish_reason = "stop"
