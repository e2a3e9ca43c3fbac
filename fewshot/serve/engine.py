"""The batching engine: many requests share one model, joining and leaving at token granularity.

Continuous batching (Yu et al. 2022, "Orca"): instead of waiting for a whole batch to
finish, every step decodes one token for each running sequence, and a sequence that is
done frees its slot for a waiting one straight away. So a short request never waits for a
long one, and the model always runs as wide a batch as there is work.

One engine step:
1. drop cancelled and timed-out jobs, admit waiting sequences into free slots;
2. sample the next token of every sequence whose logits are ready (per-request options);
3. spend the rest of the step's token budget on prefill, one prompt chunk at a time, so
   a long prompt is spread over several steps rather than stalling every decoding row;
4. one `model.step_rows` call: a token per decoding row, each at its own position.

The KV cache is one tensor per layer of (slots, heads, capacity, head_size). Slots are
handed out lowest first, so the rows a step touches stay a short prefix. The capacity
follows the longest active request (prompt + max_tokens) and grows by doubling, with a
copy, when a longer one arrives: a model with an 8192-token context never pays for
32 x 8192 unless requests actually ask for it. A cache bigger than `idle_cache_bytes` is
let go when the engine falls idle.

Prefix caching (prefix_cache.py): a sequence admitted to a slot first gets the keys and
values of the longest stored prefix of its prompt copied in, and prefill starts after it;
a sequence whose prefill is done stores its prompt's blocks. Few-shot requests that share
their demonstrations then prefill only their query.

Adapters (LoRA, (IA)3) are further models over the same base weights, named like the API's
`model`. Their sequences share the one KV cache; a step prefills each chunk with its own
model and decodes once per adapter that has decoding rows (rows of the others get the same
dummy token as free ones, which a KV cache overwrites later and a recurrent state leaves
out), so a step costs one decode per adapter in use.

The model runs on this engine's own thread; the HTTP side only submits jobs and reads
events, so it stays responsive while the model computes.
"""

from __future__ import annotations

import heapq
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from fewshot.errors import FewshotError
from fewshot.inference.decode import SampleText
from fewshot.inference.guide import Matcher, mask_logits
from fewshot.inference.lookup import NgramDrafts
from fewshot.inference.sampling import SamplingOptions, TokenLogprob, adjust_logits, new_generator, token_logprobs
from fewshot.serve.prefix_cache import PrefixCache

log = logging.getLogger("fewshot.serve")

MIN_PREFILL_CHUNK = 32  # a step always moves some prefill forward, however many rows decode
MIN_CAPACITY = 64


@dataclass(frozen=True)
class EngineConfig:
    max_batch: int = 32  # sequences decoded together (cache slots)
    max_queue: int = 256  # jobs waiting for a slot before new ones are refused
    step_tokens: int = 512  # token budget of one step: decoding rows + prefill chunk tokens
    request_timeout: float = 600.0  # seconds from submission; then the job fails
    idle_cache_bytes: int = 64 * 2**20  # a cache bigger than this is freed when idle
    prefix_cache_bytes: int = 256 * 2**20  # keys and values of prompt prefixes kept for reuse; 0: off

    def __post_init__(self) -> None:
        for name, least in (("max_batch", 1), ("max_queue", 1), ("step_tokens", 1), ("prefix_cache_bytes", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise FewshotError(f"serve: {name} must be an integer >= {least}, got {value!r}")
        if not self.request_timeout > 0:
            raise FewshotError(f"serve: request_timeout must be > 0 seconds, got {self.request_timeout!r}")


@dataclass(frozen=True)
class Request:
    """One job: `options.n` samples of every prompt (the API's best_of, or n)."""

    prompts: tuple[tuple[int, ...], ...]  # token ids, non-empty, each fits the context with max_tokens
    options: SamplingOptions  # options.max_tokens is ignored: see max_tokens
    max_tokens: int  # 0: only score the prompt (echo + logprobs)
    prompt_logprobs: bool = False  # logprobs of the prompt's own tokens (echo)
    rank: bool = False  # track each sample's summed logprob, to pick the best of several
    stream: bool = False  # send text as it comes (Delta events); else only the Finished ones
    adapter: str | None = None  # which of the engine's adapters decodes it; None: the base model
    guide: Matcher | None = None  # structured outputs: every sample decodes with a copy (Matcher.start)


class LatencyObserver(Protocol):
    """Told, on the engine's thread, how long tokens took (serve/metrics.py)."""

    def first_token(self, seconds: float) -> None: ...  # from submission to a sequence's first token

    def token_gap(self, seconds: float) -> None: ...  # between two tokens of one sequence


class QueueFull(Exception):
    """Too many jobs are waiting; the client should retry later."""


class EngineStopped(Exception):
    """The engine is shutting down and takes no new work."""


# ---------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Delta:
    """New text of one sample, and the logprobs of the tokens that produced it."""

    sample: int  # prompt_index * options.n + sample_index
    text: str
    logprobs: tuple[TokenLogprob, ...]


@dataclass(frozen=True)
class Finished:
    sample: int
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str  # "stop" | "length"
    logprobs: tuple[TokenLogprob, ...]  # of generated tokens, when asked for
    prompt_logprobs: tuple[TokenLogprob, ...]  # of prompt tokens 1.. (token 0 has none), when asked for
    logprob_sum: float  # of the generated tokens, when ranking


@dataclass(frozen=True)
class Scored:
    """The prompt is in the cache; its tokens' logprobs (1.., when asked for), for echoing them first."""

    sample: int
    prompt_logprobs: tuple[TokenLogprob, ...]


@dataclass(frozen=True)
class Failed:
    message: str
    code: str  # "timeout" | "server_shutting_down" | "engine_error"


Event = Scored | Delta | Finished | Failed


class Job:
    """A submitted request. `deliver(events)` is called from the engine thread."""

    def __init__(self, request: Request, deliver: Callable[[list[Event]], None], deadline: float) -> None:
        self.request = request
        self.deliver = deliver
        self.deadline = deadline
        self.submitted = time.monotonic()
        self.cancelled = False
        self.done = False
        self.unfinished = len(request.prompts) * request.options.n
        self.waiting = self.unfinished  # sequences without a slot yet
        self.events: list[Event] = []

    def cancel(self) -> None:
        """Stop working on this job (the client went away); safe from any thread."""
        self.cancelled = True


# ---------------------------------------------------------------------------- sequences


@dataclass(eq=False)
class _Sequence:
    job: Job
    sample: int
    prompt: tuple[int, ...]
    options: SamplingOptions
    generator: torch.Generator
    text: SampleText
    counts: Tensor | None  # tokens generated so far (1, V), only when penalties need them
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob] = field(default_factory=list)
    logprob_sum: float = 0.0
    slot: int | None = None
    position: int = 0  # tokens already in this slot's cache
    last_logits: Tensor | None = None  # (1, V) predicting the token at `position`
    ready: bool = False  # last_logits are fresh: sample from them this step
    next_token: int | None = None  # sampled, to be fed at `position` in this step's decode
    greedy_token: int | None = None  # argmax computed with the whole batch
    shown: list[str] = field(default_factory=list)  # text released during this step
    new_logprobs: list[TokenLogprob] = field(default_factory=list)
    drafts: NgramDrafts | None = None  # prompt + generated tokens, with prompt_lookup
    last_token_at: float | None = None  # time.monotonic() of the last accepted token
    matcher: Matcher | None = None  # where the text is in its grammar, with a guide

    @property
    def prefilling(self) -> bool:
        return self.position < len(self.prompt)

    @property
    def plain_greedy(self) -> bool:
        o = self.options
        return (o.temperature == 0 and not o.logit_bias and not o.presence_penalty and not o.frequency_penalty
                and self.matcher is None)


def _draw(probs: Tensor, generators: list[torch.Generator]) -> list[int]:
    """One token per row of probs (B, V), row b drawn with generators[b] alone."""
    uniform = torch.cat([torch.rand(1, generator=g, device=probs.device) for g in generators])
    cdf = probs.cumsum(dim=-1)
    # Scale by the total, which float rounding leaves a hair off 1; a token of probability 0
    # adds nothing to the CDF, so no uniform number can land on it.
    picks = torch.searchsorted(cdf, (uniform * cdf[:, -1])[:, None], right=True)[:, 0]
    return picks.clamp(max=probs.shape[-1] - 1).tolist()


def _seed(seed: int | None, sample: int) -> int | None:
    # Each sample draws from its own generator, so its text does not depend on which other
    # requests share the batch. Sample 0 uses the seed as given.
    return None if seed is None else (seed + 0x9E3779B97F4A7C15 * sample) % 2**64


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


class Engine:
    """Owns the model and its thread. `submit` from any thread; events come back through the job."""

    def __init__(self, model, tokenizer, config: EngineConfig = EngineConfig(), adapters: dict | None = None,
                 latency: LatencyObserver | None = None) -> None:
        self.model = model.eval()
        self.latency = latency
        self.models = {None: self.model, **{name: m.eval() for name, m in (adapters or {}).items()}}
        self.tokenizer = tokenizer
        self.config = config
        self.device = next(model.parameters()).device
        self.stop_ids = frozenset(getattr(tokenizer, "stop_ids", {tokenizer.eot_id}))
        self._lock = threading.Condition(threading.RLock())  # re-entrant: drain() runs in a signal handler
        self._incoming: list[Job] = []
        self._queued_jobs = 0  # jobs with a sequence still waiting for a slot (guarded by _lock)
        self._stopping = False
        self._drain_until = math.inf
        self._waiting: deque[_Sequence] = deque()
        self._running: list[_Sequence] = []
        self._jobs: list[Job] = []
        self._outbox: dict[int, Job] = {}  # jobs with events not yet delivered
        self._free: list[int] = []  # a heap of free slots below self._rows
        self._rows = 0
        self._capacity = 0
        self._cache = None
        # Only a cache that keeps each position apart can be cut into blocks (prefix_cache.py).
        self.prefix_cache = PrefixCache(config.prefix_cache_bytes) if config.prefix_cache_bytes and model.rewindable else None
        self.steps = 0
        self.prompt_tokens = 0  # of admitted sequences
        self.generated_tokens = 0
        self._thread = threading.Thread(target=self._run, name="fewshot-engine", daemon=True)

    # ------------------------------------------------------------------ public

    def start(self) -> Engine:
        self._thread.start()
        return self

    def submit(self, request: Request, deliver: Callable[[list[Event]], None]) -> Job:
        if request.adapter not in self.models:
            raise FewshotError(f"no adapter named {request.adapter!r} is loaded")
        context = self.model.config.context
        for prompt in request.prompts:
            # The HTTP layer says this nicer (context_length_exceeded); this guards the cache.
            if not prompt or len(prompt) + request.max_tokens > context:
                raise FewshotError(f"a prompt of {len(prompt)} tokens plus {request.max_tokens} new ones "
                                   f"does not fit the context of {context} (and a prompt needs at least one token)")
        job = Job(request, deliver, time.monotonic() + self.config.request_timeout)
        with self._lock:
            if self._stopping:
                raise EngineStopped("the server is shutting down")
            if self._queued_jobs >= self.config.max_queue:
                raise QueueFull(f"{self._queued_jobs} requests are already waiting")
            self._queued_jobs += 1
            self._incoming.append(job)
            self._lock.notify()
        return job

    def wake(self) -> None:
        """Look at cancellations now rather than at the next step."""
        with self._lock:
            self._lock.notify()

    def drain(self, drain_seconds: float) -> None:
        """Refuse new work now; at `drain_seconds` from now, fail every job left. Does not wait.

        Safe in a signal handler: the lock is re-entrant, and a second call keeps the first deadline.
        """
        with self._lock:
            if not self._stopping:
                self._stopping = True
                self._drain_until = time.monotonic() + drain_seconds
            self._lock.notify()

    def stop(self, drain_seconds: float = 0.0) -> None:
        """Refuse new work, let running jobs finish for up to `drain_seconds`, fail the rest, join."""
        self.drain(drain_seconds)
        if self._thread.is_alive():
            self._thread.join()

    def stats(self) -> dict[str, int]:
        prefix = self.prefix_cache
        return {"running": len(self._running), "waiting": len(self._waiting), "queued_requests": self._queued_jobs,
                "slots": self._rows, "capacity": self._capacity, "steps": self.steps,
                "prompt_tokens": self.prompt_tokens, "generated_tokens": self.generated_tokens,
                "prefix_cache_queried_tokens": prefix.queried_tokens if prefix else 0,
                "prefix_cache_hit_tokens": prefix.hit_tokens if prefix else 0,
                "prefix_cache_bytes": prefix.nbytes if prefix else 0}

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._lock:
                    while not (self._incoming or self._running or self._waiting or self._stopping):
                        self._lock.wait()
                    incoming, self._incoming = self._incoming, []
                    stopping = self._stopping
                for job in incoming:
                    self._accept_job(job)
                if stopping and (not self._jobs or time.monotonic() >= self._drain_until):
                    self._fail_all("the server is shutting down; retry on another replica or later",
                                   "server_shutting_down")
                    return
                try:
                    self._step()
                except Exception as error:  # a bug or out of memory: fail this batch, keep serving
                    log.exception("engine step failed")
                    self._fail_all("generation failed (an internal error; see the server log)", "engine_error")
                    self._cache, self._rows, self._capacity, self._free = None, 0, 0, []
                self._deliver()
                if not self._running and not self._waiting:
                    self._release_idle_cache()

    def _accept_job(self, job: Job) -> None:
        request = job.request
        self._jobs.append(job)
        vocab = self.model.config.vocab_size
        for p, prompt in enumerate(request.prompts):
            for i in range(request.options.n):
                sample = p * request.options.n + i
                sequence = _Sequence(
                    job=job, sample=sample, prompt=tuple(prompt), options=request.options,
                    generator=new_generator(_seed(request.options.seed, sample), self.device),
                    text=SampleText(self.tokenizer, request.options.stop, None),
                    counts=torch.zeros(1, vocab, device=self.device)
                    if request.options.presence_penalty or request.options.frequency_penalty else None,
                )
                sequence.text.emit = sequence.shown.append
                if request.guide is not None:
                    sequence.matcher = request.guide.copy()
                elif request.options.prompt_lookup and self.model.rewindable:  # the API refuses it otherwise
                    sequence.drafts = NgramDrafts(prompt)
                self._waiting.append(sequence)

    def _step(self) -> None:
        self.steps += 1
        self._drop_dead_jobs()
        self._admit()
        self._sample_all([s for s in self._running if s.ready])
        decoding = [s for s in self._running if s.next_token is not None]
        self._prefill(max(self.config.step_tokens - len(decoding), MIN_PREFILL_CHUNK))
        if decoding:
            self._decode(decoding)

    # ------------------------------------------------------------------ admission

    def _drop_dead_jobs(self) -> None:
        now = time.monotonic()
        for job in list(self._jobs):
            if job.cancelled:
                self._end_job(job)
            elif now > job.deadline:
                self._post(job, Failed(f"the request took longer than {self.config.request_timeout:g} s", "timeout"))
                self._end_job(job)

    def _admit(self) -> None:
        while self._waiting and (self._free or self._rows < self.config.max_batch):
            sequence = self._waiting.popleft()
            job = sequence.job
            if job.done:
                continue
            slot = heapq.heappop(self._free) if self._free else self._rows
            self._fit_cache(slot + 1, len(sequence.prompt) + max(1, job.request.max_tokens))
            sequence.slot = slot
            self.prompt_tokens += len(sequence.prompt)
            if self.prefix_cache is not None and not job.request.prompt_logprobs:  # echo scores every prompt token
                row = self._cache.rows(slot, slot + 1)
                sequence.position = self.prefix_cache.restore(sequence.prompt, job.request.adapter, row.layers)
            self._running.append(sequence)
            job.waiting -= 1
            if job.waiting == 0:
                with self._lock:
                    self._queued_jobs -= 1

    def _fit_cache(self, rows: int, capacity: int) -> None:
        """Make the cache at least rows x capacity, doubling and copying what it holds."""
        if rows <= self._rows and capacity <= self._capacity:
            return
        context = self.model.config.context
        new_rows = max(self._rows, min(self.config.max_batch, _next_power_of_two(rows)))
        new_capacity = max(self._capacity, min(context, max(MIN_CAPACITY, _next_power_of_two(capacity))))
        cache = self.model.new_cache(new_rows, capacity=new_capacity)
        if self._cache is not None:
            for new, old in zip(cache.layers, self._cache.layers):
                new.copy_from(old)
        self._free.extend(range(max(self._rows, rows), new_rows))
        heapq.heapify(self._free)
        self._cache, self._rows, self._capacity = cache, new_rows, new_capacity

    def _release_idle_cache(self) -> None:
        if self._cache is None:
            return
        size = sum(layer.nbytes for layer in self._cache.layers)
        if size > self.config.idle_cache_bytes:
            self._cache, self._rows, self._capacity, self._free = None, 0, 0, []

    # ------------------------------------------------------------------ the model

    def _prefill(self, budget: int) -> None:
        """Feed prompt chunks, oldest request first, until the step's token budget is spent."""
        for sequence in [s for s in self._running if s.prefilling]:
            if budget <= 0:
                break
            start = sequence.position
            chunk = sequence.prompt[start : start + budget]
            budget -= len(chunk)
            view = self._cache.rows(sequence.slot, sequence.slot + 1)
            view.length = start
            model = self.models[sequence.job.request.adapter]
            logits = model.step(torch.tensor([chunk], device=self.device), view)[0].float()
            if sequence.job.request.prompt_logprobs:
                self._score_prompt(sequence, start, chunk, logits)
            sequence.position += len(chunk)
            sequence.last_logits = logits[-1:]
            if not sequence.prefilling:
                if self.prefix_cache is not None:
                    self.prefix_cache.store(sequence.prompt, sequence.job.request.adapter, view.layers)
                if sequence.job.request.stream:
                    self._post(sequence.job, Scored(sequence.sample, tuple(sequence.prompt_logprobs)))
                if sequence.job.request.max_tokens == 0:
                    self._finish(sequence, "length")
                else:
                    sequence.ready = True

    def _score_prompt(self, sequence: _Sequence, start: int, chunk: Sequence[int], logits: Tensor) -> None:
        # logits[t] predicts token start + t + 1; the token at `start` was predicted by the
        # previous chunk's last row, and token 0 by nothing (its logprob is null).
        predicting = logits[:-1] if start == 0 else torch.cat([sequence.last_logits, logits[:-1]])
        targets = list(chunk[1:]) if start == 0 else list(chunk)
        if targets:
            chosen = torch.tensor(targets, device=self.device)
            sequence.prompt_logprobs.extend(token_logprobs(self.tokenizer, predicting, chosen, sequence.options))

    def _decode(self, decoding: list[_Sequence]) -> None:
        """One token for every decoding row: one model call per adapter among them. A row with
        a prompt-lookup draft gets a call of its own, which may give it several tokens."""
        by_adapter: dict[str | None, list[_Sequence]] = {}
        drafted = []
        for sequence in decoding:
            if draft := self._draft(sequence):
                drafted.append((sequence, draft))
            else:
                by_adapter.setdefault(sequence.job.request.adapter, []).append(sequence)
        for adapter, group in by_adapter.items():
            self._decode_rows(self.models[adapter], group)
        for sequence, draft in drafted:  # after the batch, whose dummy write at this row's position it overwrites
            self._decode_drafted(sequence, draft)

    def _draft(self, sequence: _Sequence) -> list[int]:
        if sequence.drafts is None:
            return []
        room = min(sequence.options.prompt_lookup, self._capacity - sequence.position - 1,
                   sequence.job.request.max_tokens - len(sequence.token_ids) - 1)
        return sequence.drafts.draft(room)

    def _decode_drafted(self, sequence: _Sequence, draft: list[int]) -> None:
        """Feed the next token and its draft in one call, then sample position by position for
        as long as the picks equal the draft (fewshot.inference.decode does the same for a
        batch): each pick comes from the logits, options and generator draw it would have had
        one token per step. The first pick that differs is fed next step; the cache positions
        after it are written over then."""
        view = self._cache.rows(sequence.slot, sequence.slot + 1)
        view.length = sequence.position
        fed = [sequence.next_token, *draft]
        model = self.models[sequence.job.request.adapter]
        logits = model.step(torch.tensor([fed], device=self.device), view)[0].float()
        for i in range(len(fed)):
            sequence.position += 1  # fed[i] is in the cache for good
            sequence.next_token, sequence.greedy_token = None, None
            sequence.last_logits = logits[i:i + 1]
            if i == len(draft):
                sequence.ready = True  # the draft all matched: sampled next step, as after any decode
                return
            self._sample_all([sequence])
            if sequence.slot is None or sequence.next_token != draft[i]:
                return  # finished, or a pick the draft did not foresee

    def _decode_rows(self, model, decoding: list[_Sequence]) -> None:
        """A token for each of `decoding`'s rows; rows in between get a harmless dummy write."""
        rows = 1 + max(s.slot for s in self._running)
        idx, positions, active = [0] * rows, [0] * rows, [False] * rows
        for sequence in self._running:
            # Any other slot gets the dummy token at its next free position, which its own next
            # write overwrites (a slot still prefilling, or decoding with another adapter, before
            # or after this call); a free slot at position 0, which nobody reads.
            positions[sequence.slot] = min(sequence.position, self._capacity - 1)
        for sequence in decoding:
            idx[sequence.slot], active[sequence.slot] = sequence.next_token, True
        idx_t = torch.tensor(idx, device=self.device)[:, None]
        positions_t = torch.tensor(positions, device=self.device)
        # A recurrent state (linear attention) has no position to overwrite later: the
        # dummy rows are told apart, and keep their state.
        active_t = torch.tensor(active, device=self.device)
        logits = model.step_rows(idx_t, self._cache.rows(0, rows), positions_t, active_t)[:, 0]
        logits = logits.float()
        greedy = logits.argmax(dim=-1).tolist() if any(s.plain_greedy for s in decoding) else None
        for sequence in decoding:
            sequence.position += 1
            sequence.next_token = None
            sequence.last_logits = logits[sequence.slot : sequence.slot + 1]
            sequence.greedy_token = greedy[sequence.slot] if greedy is not None else None
            sequence.ready = True

    # ------------------------------------------------------------------ sampling

    def _sample_all(self, sequences: list[_Sequence]) -> None:
        """The next token of every ready sequence, one batched call per distinct set of options.

        Requests usually share options, so logit processing runs once per group rather than
        once per row. Each row still draws from its own seeded generator: one uniform number,
        turned into a token through the cumulative distribution (inverse-CDF sampling), so a
        sample never depends on which other requests share its batch.
        """
        groups: dict[SamplingOptions, list[_Sequence]] = {}
        for sequence in sequences:
            sequence.ready = False
            groups.setdefault(sequence.options, []).append(sequence)
        for options, group in groups.items():
            if all(s.plain_greedy and s.greedy_token is not None for s in group):
                tokens = [s.greedy_token for s in group]  # the batch's argmax, already computed
                logits = torch.cat([s.last_logits for s in group]) if options.logprobs is not None or group[0].job.request.rank else None
            else:
                logits = torch.cat([s.last_logits for s in group])
                counts = torch.cat([s.counts for s in group]) if group[0].counts is not None else None
                # The grammar's mask comes first: top-k and top-p then choose among allowed tokens.
                allowed = mask_logits(logits, [s.matcher for s in group])
                adjusted = adjust_logits(allowed, counts, options)
                if options.temperature == 0:
                    tokens = adjusted.argmax(dim=-1).tolist()
                else:
                    tokens = _draw(adjusted.softmax(dim=-1), [s.generator for s in group])
            chosen = torch.tensor(tokens, device=self.device)
            entries = token_logprobs(self.tokenizer, logits, chosen, options) if options.logprobs is not None else None
            if entries is not None:
                sums = [e.logprob for e in entries]
            elif any(s.job.request.rank for s in group):
                sums = logits.log_softmax(dim=-1).gather(1, chosen[:, None])[:, 0].tolist()
            else:
                sums = None
            for i, sequence in enumerate(group):
                sequence.greedy_token = None
                if sums is not None:
                    sequence.logprob_sum += sums[i]
                self._accept(sequence, tokens[i], entries[i] if entries is not None else None)

    def _accept(self, sequence: _Sequence, token: int, entry: TokenLogprob | None) -> None:
        if sequence.options.stop_at_eot and token in self.stop_ids:
            self._finish(sequence, "stop")
            return
        sequence.token_ids.append(token)
        self.generated_tokens += 1
        if self.latency is not None:
            now = time.monotonic()
            if sequence.last_token_at is None:
                self.latency.first_token(now - sequence.job.submitted)
            else:
                self.latency.token_gap(now - sequence.last_token_at)
            sequence.last_token_at = now
        if sequence.drafts is not None:
            sequence.drafts.append(token)
        if sequence.counts is not None:
            sequence.counts[0, token] += 1
        if entry is not None:
            sequence.logprobs.append(entry)
            sequence.new_logprobs.append(entry)
        if sequence.matcher is not None:
            sequence.matcher.consume(token)
        if sequence.text.feed(token) or (sequence.matcher is not None and sequence.matcher.done):
            self._finish(sequence, "stop")
        elif len(sequence.token_ids) >= sequence.job.request.max_tokens:
            self._finish(sequence, "length")
        else:
            sequence.next_token = token

    # ------------------------------------------------------------------ endings

    def _finish(self, sequence: _Sequence, reason: str) -> None:
        if sequence.text.finish():
            reason = "stop"
        self._emit_delta(sequence)
        job = sequence.job
        self._post(job, Finished(
            sequence.sample, sequence.text.text, tuple(sequence.token_ids), reason, tuple(sequence.logprobs),
            tuple(sequence.prompt_logprobs), sequence.logprob_sum,
        ))
        self._release(sequence)
        job.unfinished -= 1
        if job.unfinished == 0:
            job.done = True
            self._jobs.remove(job)

    def _release(self, sequence: _Sequence) -> None:
        if sequence.slot is not None:
            heapq.heappush(self._free, sequence.slot)
            sequence.slot = None
        self._running.remove(sequence)

    def _end_job(self, job: Job) -> None:
        """Free everything of a job that will not finish normally."""
        for sequence in [s for s in self._running if s.job is job]:
            self._release(sequence)
        if job.waiting > 0:
            job.waiting = 0
            with self._lock:
                self._queued_jobs -= 1
        self._waiting = deque(s for s in self._waiting if s.job is not job)
        job.done = True
        self._jobs.remove(job)

    def _fail_all(self, message: str, code: str) -> None:
        for job in list(self._jobs):
            self._post(job, Failed(message, code))
            self._end_job(job)
        self._deliver()

    def _emit_delta(self, sequence: _Sequence) -> None:
        # Only streams want text as it comes: for the rest, waking the HTTP side every step
        # would cost more than the step.
        if sequence.job.request.stream and (sequence.shown or sequence.new_logprobs):
            self._post(sequence.job, Delta(sequence.sample, "".join(sequence.shown), tuple(sequence.new_logprobs)))
            sequence.shown.clear()
            sequence.new_logprobs.clear()

    def _deliver(self) -> None:
        """Hand each job the events of this step in one call: one wake-up of the HTTP side per step."""
        for sequence in self._running:
            self._emit_delta(sequence)
        outbox, self._outbox = self._outbox, {}
        for job in outbox.values():
            events, job.events = job.events, []
            try:
                job.deliver(events)
            except Exception:  # the receiver went away: nothing to tell it
                log.exception("delivering events failed")

    def _post(self, job: Job, event: Event) -> None:
        job.events.append(event)
        self._outbox[id(job)] = job
