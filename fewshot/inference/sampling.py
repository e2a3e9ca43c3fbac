"""Sampling options and logits processing: the knobs of OpenAI's completions API.

`sample_next` is the pure part (logits in, token ids out); fewshot.inference.decode drives
the model with it, and the server's engine (fewshot.serve.engine) uses the same pieces.

Decisions a caller can rely on:
- Logit processing runs in this order (OpenAI's, then Hugging Face's): logit_bias,
  presence/frequency penalties, temperature, top-k, top-p. Temperature 0 is greedy.
- Logprobs describe the model's own distribution, `log_softmax(logits + logit_bias)`,
  before penalties, temperature and truncation. Those knobs shape how we *pick* a token,
  not what the model believes; this way a logprob compares with `lm.score` and with a full
  forward pass whatever the sampling settings. The bias is included because it is how a
  user edits the distribution itself (a -100 token really has ~zero probability).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from fewshot.errors import FewshotError
from fewshot.inference.lookup import MAX_DRAFT

MAX_STOP_SEQUENCES = 4  # as OpenAI
MAX_LOGPROBS = 20  # as OpenAI's chat API; the legacy completions API allowed only 5
LOGIT_BIAS_LIMIT = 100.0  # OpenAI: "values between -100 and 100"
MAX_N = 128  # samples of one prompt, as OpenAI; more is several requests
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
    # Prompt-lookup decoding: up to this many draft tokens per step, copied from earlier in the
    # sequence and checked by the model in one pass; the text is what it would be without (0 = off).
    prompt_lookup: int = 0

    def __post_init__(self) -> None:
        # Normalize the JSON-friendly shapes (dict, str, list) to hashable tuples.
        object.__setattr__(self, "logit_bias", _normalize_bias(self.logit_bias))
        object.__setattr__(self, "stop", _normalize_stop(self.stop))
        _check_int("max_tokens", self.max_tokens, low=1)
        _check_int("top_k", self.top_k, low=0)
        _check_int("n", self.n, low=1, high=MAX_N)
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
        _check_int("prompt_lookup", self.prompt_lookup, low=0, high=MAX_DRAFT)
        if not isinstance(self.stop_at_eot, bool):
            raise FewshotError(f"sampling: stop_at_eot must be true or false, got {self.stop_at_eot!r}")

    def check_vocab(self, vocab_size: int) -> None:
        """Refuse a logit_bias id the model has no token for: the one rule for the CLI and the server.

        A bias on an id outside the vocabulary would change nothing, so accepting it silently
        hides a client's mistake (GPT-2's 50256 sent to another tokenizer, say).
        """
        outside = [token for token, _ in self.logit_bias if token >= vocab_size]
        if outside:
            raise FewshotError(f"sampling: logit_bias token {outside[0]} is outside the vocabulary of {vocab_size} tokens")


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


def prompt_token_ids(tokenizer, prompt: str | Sequence[int], vocab_size: int) -> list[int]:
    if isinstance(prompt, str):
        return list(tokenizer.encode(prompt))
    ids = list(prompt)
    bad = [t for t in ids if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab_size]
    if bad:
        raise FewshotError(f"prompt: token ids must be integers in [0, {vocab_size}), got {bad[0]!r}")
    return ids


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
