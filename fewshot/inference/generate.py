"""Sampling from a trained model: the knobs of OpenAI's completions API, decoded with a KV cache.

`sample_next` is the pure part (logits in, token ids out); `generate` drives the model:
one prefill over the prompt for a batch of `n` samples, then one cached step per token.

Decisions a caller can rely on:
- Logit processing runs in this order (OpenAI's, then Hugging Face's): logit_bias,
  presence/frequency penalties, temperature, top-k, top-p. Temperature 0 is greedy.
- Logprobs describe the model's own distribution, `log_softmax(logits + logit_bias)`,
  before penalties, temperature and truncation. Those knobs shape how we *pick* a token,
  not what the model believes; this way a logprob compares with `lm.score` and with a full
  forward pass whatever the sampling settings. The bias is included because it is how a
  user edits the distribution itself (a -100 token really has ~zero probability).
- Context overflow. The model never sees more than `config.context` tokens (learned
  positions end there, and rotary ones were never trained past it). A prompt longer than that keeps its last tokens and leaves
  room for `min(max_tokens, context // 2)` new ones, so generation always sees at least
  half a context of prompt. When prompt + generated text fills the context, the cache is
  rebuilt from the last `context // 2` tokens (one re-prefill) and decoding goes on, so a
  sample may be far longer than the context; each slide forgets the older half.
- Stop sequences are matched on decoded text and the match is cut off; streamed text never
  shows any part of one. The token that completed a stop sequence stays in `token_ids`
  (text can end mid-token); a final end-of-text token does not.
- An empty prompt starts from the end-of-text token, as GPT-2/3 do between documents.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from fewshot.errors import FewshotError
from fewshot.tokenizer import StreamDecoder

MAX_STOP_SEQUENCES = 4  # as OpenAI
MAX_LOGPROBS = 20  # as OpenAI's chat API; the legacy completions API allowed only 5
LOGIT_BIAS_LIMIT = 100.0  # OpenAI: "values between -100 and 100"
MIN_TEMPERATURE = 1e-6


@dataclass(frozen=True)
class SamplingOptions:
    max_tokens: int = 16
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    # OpenAI: logit[j] -= presence * (count[j] > 0) + frequency * count[j], counting the
    # tokens generated so far in that sample (the prompt is not counted).
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias); a dict is accepted too
    stop: tuple[str, ...] = ()  # a single string is accepted too
    n: int = 1  # independent samples, decoded together as one batch
    seed: int | None = None  # same seed (and n) -> same text
    logprobs: int | None = None  # chosen token's logprob plus this many top alternatives
    stop_at_eot: bool = True

    def __post_init__(self) -> None:
        # Normalize the JSON-friendly shapes (dict, str, list) to hashable tuples.
        object.__setattr__(self, "logit_bias", _normalize_bias(self.logit_bias))
        object.__setattr__(self, "stop", _normalize_stop(self.stop))
        _check_int("max_tokens", self.max_tokens, low=1)
        _check_int("top_k", self.top_k, low=0)
        _check_int("n", self.n, low=1)
        _check_range("temperature", self.temperature, 0.0, 2.0)
        if not isinstance(self.top_p, (int, float)) or not 0.0 < self.top_p <= 1.0:
            raise FewshotError(f"sampling: top_p must be in (0, 1], got {self.top_p!r}")
        _check_range("presence_penalty", self.presence_penalty, -2.0, 2.0)
        _check_range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        if self.logprobs is not None:
            _check_int("logprobs", self.logprobs, low=0, high=MAX_LOGPROBS)
        if self.seed is not None:
            # The range torch.Generator.manual_seed accepts.
            _check_int("seed", self.seed, low=-(2**63), high=2**64 - 1)
        if not isinstance(self.stop_at_eot, bool):
            raise FewshotError(f"sampling: stop_at_eot must be true or false, got {self.stop_at_eot!r}")


def _check_int(name: str, value: object, low: int, high: int | None = None) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high)
    if not ok:
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise FewshotError(f"sampling: {name} must be an integer {bounds}, got {value!r}")


def _check_range(name: str, value: object, low: float, high: float) -> None:
    # `not low <= x <= high` is also true for NaN.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise FewshotError(f"sampling: {name} must be in [{low:g}, {high:g}], got {value!r}")


def _normalize_bias(bias: object) -> tuple[tuple[int, float], ...]:
    pairs = bias.items() if isinstance(bias, Mapping) else bias
    try:
        pairs = [(token, value) for token, value in pairs]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise FewshotError(f"sampling: logit_bias must map token ids to numbers, got {bias!r}") from None
    normalized = []
    for token, value in pairs:
        if isinstance(token, str) and token.lstrip("-").isdigit():
            token = int(token)  # JSON object keys arrive as strings
        if isinstance(token, bool) or not isinstance(token, int) or token < 0:
            raise FewshotError(f"sampling: logit_bias keys must be token ids >= 0, got {token!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise FewshotError(f"sampling: logit_bias for token {token} must be a finite number, got {value!r}")
        # OpenAI accepts -100..100; clamp rather than reject, since +-100 already means
        # "always" / "never" and clamping keeps the arithmetic finite.
        normalized.append((token, max(-LOGIT_BIAS_LIMIT, min(LOGIT_BIAS_LIMIT, float(value)))))
    return tuple(normalized)


def _normalize_stop(stop: object) -> tuple[str, ...]:
    stops = (stop,) if isinstance(stop, str) else stop
    try:
        stops = tuple(stops)  # type: ignore[arg-type]
    except TypeError:
        raise FewshotError(f"sampling: stop must be a string or a list of strings, got {stop!r}") from None
    if len(stops) > MAX_STOP_SEQUENCES:
        raise FewshotError(f"sampling: at most {MAX_STOP_SEQUENCES} stop sequences, got {len(stops)}")
    for s in stops:
        if not isinstance(s, str) or not s:
            raise FewshotError(f"sampling: stop sequences must be non-empty strings, got {s!r}")
    return stops


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    token_id: int
    logprob: float
    top: tuple[tuple[str, float], ...]  # the most likely tokens at this position, best first


@dataclass(frozen=True)
class Completion:
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str  # "stop" (stop sequence or end-of-text) | "length" (max_tokens)
    logprobs: tuple[TokenLogprob, ...] | None
    prompt_tokens: int  # tokens in the prompt as given, before any left-truncation


# ---------------------------------------------------------------------------- logits


def apply_logit_bias(logits: Tensor, logit_bias: tuple[tuple[int, float], ...]) -> Tensor:
    """logits (B, V) plus the per-token bias; a new tensor."""
    if not logit_bias:
        return logits.clone()
    ids = torch.tensor([token for token, _ in logit_bias], device=logits.device)
    values = torch.tensor([value for _, value in logit_bias], device=logits.device, dtype=logits.dtype)
    # index_add_ sums repeated ids, like applying each entry in turn.
    return logits.clone().index_add_(1, ids, values.expand(logits.shape[0], -1))


def adjust_logits(logits: Tensor, counts: Tensor, options: SamplingOptions) -> Tensor:
    """The distribution `sample_next` draws from, as float32 logits (B, V); -inf = excluded.

    Greedy decoding (temperature 0) skips temperature, top-k and top-p: none of them can
    change which token is the most likely.
    """
    logits = apply_logit_bias(logits.float(), options.logit_bias)
    if options.presence_penalty or options.frequency_penalty:
        counts = counts.to(logits.dtype)
        logits -= options.presence_penalty * (counts > 0).to(logits.dtype) + options.frequency_penalty * counts
    if options.temperature == 0:
        return logits
    # A temperature near zero would overflow float32 logits to inf (and softmax to NaN);
    # below MIN_TEMPERATURE it is greedy in all but name anyway.
    logits /= max(options.temperature, MIN_TEMPERATURE)
    if 0 < options.top_k < logits.shape[-1]:
        logits = _keep_top_k(logits, options.top_k)
    if options.top_p < 1.0:
        logits = _keep_nucleus(logits, options.top_p)
    return logits


def _keep_top_k(logits: Tensor, k: int) -> Tensor:
    # Keep exactly k by index: a threshold on the k-th value would keep every tie with it.
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, logits.topk(k, dim=-1).indices, True)
    return logits.masked_fill(~keep, -math.inf)


def _keep_nucleus(logits: Tensor, top_p: float) -> Tensor:
    """Top-p (Holtzman et al. 2019): the smallest set of most likely tokens whose mass reaches top_p."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    # A token is needed while the mass of the tokens strictly before it is still short of
    # top_p; the most likely token always is.
    before = F.pad(cumulative[..., :-1], (1, 0))
    drop_sorted = before >= top_p
    drop_sorted[..., 0] = False  # even when top_p is below float32's smallest number, and rounds to 0
    drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
    return logits.masked_fill(drop, -math.inf)


def sample_next(logits: Tensor, counts: Tensor, options: SamplingOptions, generator: torch.Generator | None) -> Tensor:
    """Next token ids (B,) from next-token logits (B, V) and per-sample counts (B, V) of tokens generated so far."""
    adjusted = adjust_logits(logits, counts, options)
    if options.temperature == 0:
        return adjusted.argmax(dim=-1)
    return torch.multinomial(adjusted.softmax(dim=-1), 1, generator=generator).squeeze(-1)


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


# ---------------------------------------------------------------------------- decoding


@dataclass
class _Sample:
    stream: SampleText
    token_ids: list[int]
    logprobs: list[TokenLogprob]
    finish_reason: str | None = None


def prompt_token_ids(tokenizer, prompt: str | Sequence[int], vocab_size: int) -> list[int]:
    if isinstance(prompt, str):
        return list(tokenizer.encode(prompt))
    ids = list(prompt)
    bad = [t for t in ids if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab_size]
    if bad:
        raise FewshotError(f"prompt: token ids must be integers in [0, {vocab_size}), got {bad[0]!r}")
    return ids


def _prompt_window(ids: list[int], context: int, max_tokens: int) -> list[int]:
    """The prompt tokens the model sees: the last ones, leaving room to generate (module docstring)."""
    room = min(max_tokens, context // 2)
    return ids[-(context - room) :]


def new_generator(seed: int | None, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()  # fresh, non-deterministic
    else:
        generator.manual_seed(seed)
    return generator


def token_logprobs(tokenizer, logits: Tensor, chosen: Tensor, options: SamplingOptions) -> list[TokenLogprob]:
    """Per-row logprob of the chosen token and the top alternatives, from the raw (biased) distribution."""
    logprobs = apply_logit_bias(logits.float(), options.logit_bias).log_softmax(dim=-1)
    chosen_lp = logprobs.gather(1, chosen[:, None]).squeeze(1).tolist()
    top = logprobs.topk(min(options.logprobs or 0, logprobs.shape[-1]), dim=-1)
    rows = []
    for token_id, lp, top_ids, top_lps in zip(chosen.tolist(), chosen_lp, top.indices.tolist(), top.values.tolist()):
        alternatives = tuple((tokenizer.decode([i]), v) for i, v in zip(top_ids, top_lps))
        rows.append(TokenLogprob(tokenizer.decode([token_id]), token_id, lp, alternatives))
    return rows


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
    bad_bias = [token for token, _ in options.logit_bias if token >= config.vocab_size]
    if bad_bias:
        raise FewshotError(f"sampling: logit_bias token {bad_bias[0]} is outside the vocabulary of {config.vocab_size}")
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
            _decode(model, tokenizer, window, samples, options, getattr(tokenizer, "stop_ids", frozenset({eot_id})))
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


def _decode(model, tokenizer, window: list[int], samples: list[_Sample], options: SamplingOptions, stop_ids: frozenset[int]) -> None:
    """The decoding loop: all samples advance in lockstep; finished ones ride along unread."""
    config = model.config
    device = next(model.parameters()).device
    n = len(samples)
    generator = new_generator(options.seed, device)
    # Each row's tokens in the cache, kept to rebuild it when the context fills up.
    rows = [list(window) for _ in range(n)]
    # Room for everything this call can feed, so short generations allocate little.
    cache = model.new_cache(n, capacity=min(config.context, len(window) + options.max_tokens))
    logits = model.step(torch.tensor(rows, device=device), cache, last_only=True)[:, -1]
    counts = torch.zeros(n, config.vocab_size, device=device)
    batch = torch.arange(n, device=device)
    keep = max(1, config.context // 2)

    for produced in range(1, options.max_tokens + 1):
        next_ids = sample_next(logits, counts, options, generator)
        counts[batch, next_ids] += 1
        logprobs = token_logprobs(tokenizer, logits, next_ids, options) if options.logprobs is not None else None
        for i, token_id in enumerate(next_ids.tolist()):
            rows[i].append(token_id)
            if samples[i].finish_reason is None:
                _accept(samples[i], token_id, logprobs[i] if logprobs else None, stop_ids, options.stop_at_eot)
        if produced == options.max_tokens or all(s.finish_reason for s in samples):
            break
        if cache.length < cache.capacity:
            logits = model.decode_step(next_ids[:, None], cache)[:, -1]
        else:
            # The context is full: start over from the last half (module docstring). A fresh
            # cache rather than a rewound one, so mixers with recurrent state stay correct.
            rows = [row[-keep:] for row in rows]
            cache = model.new_cache(n)
            logits = model.step(torch.tensor(rows, device=device), cache, last_only=True)[:, -1]

    for sample in samples:
        if sample.stream.finish():
            sample.finish_reason = "stop"
