"""`/metrics`: the server's Prometheus metrics (prometheus-client), in vLLM's spirit.

Three sources, each read where it is cheapest:
- HTTP requests by route and status, counted by `CountRequests`, an ASGI middleware
  outside every other one, so 401s, 413s and 500s count too;
- latencies the engine observes as tokens come out (`EngineObserver`): time to first
  token, from submission, and the gap between a sequence's tokens;
- the engine's own counters and load (`Engine.stats()`), read at scrape time, so the
  engine thread never takes a metrics lock: tokens prompted and generated, queue depth,
  running batch size, and the prefix cache's queried and hit tokens (their ratio is the hit
  rate: `rate(fewshot_prefix_cache_hit_tokens_total[5m]) / rate(..._queried_tokens_total[5m])`).

The registry is the app's own, not the process-wide default: two apps in one process (the
tests) count apart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds; a CPU model's first token ranges from milliseconds to tens of seconds under load.
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class Metrics:
    def __init__(self, stats: Callable[[], dict[str, int]], routes: frozenset[str]) -> None:
        self.registry = CollectorRegistry()
        self.routes = routes
        self.requests = Counter("fewshot_requests", "HTTP requests by route and status code.",
                                ["route", "status"], registry=self.registry)
        self.ttft = Histogram("fewshot_time_to_first_token_seconds", "From submission to a sequence's "
                                     "first generated token.", buckets=TTFT_BUCKETS, registry=self.registry)
        self.itl = Histogram("fewshot_inter_token_latency_seconds", "Between two generated tokens of one "
                                   "sequence.", buckets=ITL_BUCKETS, registry=self.registry)
        self.registry.register(_EngineCollector(stats))

    # The engine's latency observer (engine.Engine's `latency`), called on its thread.
    def first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def token_gap(self, seconds: float) -> None:
        self.itl.observe(seconds)

    def route(self, path: str) -> str:
        """A label with few values whatever clients send: unknown paths are one "other"."""
        if path in self.routes:
            return path
        if path.startswith("/v1/models/"):
            return "/v1/models/{model}"
        return "/static/{file}" if path.startswith("/static/") else "other"

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EngineCollector:
    """The engine's counters and gauges, read when Prometheus scrapes."""

    def __init__(self, stats: Callable[[], dict[str, int]]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self.stats()
        for name, key, help in (
            ("fewshot_prompt_tokens", "prompt_tokens", "Prompt tokens of admitted sequences (cached ones included)."),
            ("fewshot_generation_tokens", "generated_tokens", "Tokens generated."),
            ("fewshot_prefix_cache_queried_tokens", "prefix_cache_queried_tokens",
             "Prompt tokens in full blocks that were looked up in the prefix cache."),
            ("fewshot_prefix_cache_hit_tokens", "prefix_cache_hit_tokens", "... of which the prefix cache held."),
        ):
            yield CounterMetricFamily(name, help, value=stats[key])
        for name, key, help in (
            ("fewshot_num_requests_running", "running", "Sequences holding a cache slot (the running batch)."),
            ("fewshot_num_requests_waiting", "waiting", "Sequences waiting for a slot (the queue)."),
            ("fewshot_prefix_cache_bytes", "prefix_cache_bytes", "Memory the prefix cache holds."),
        ):
            yield GaugeMetricFamily(name, help, value=stats[key])


class CountRequests:
    """ASGI middleware: one count per HTTP response, by route and status."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = None

        async def counted_send(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counted_send)
        finally:
            # No status: the client left before the answer started (a 499, in nginx's words).
            self.metrics.requests.labels(self.metrics.route(scope["path"]), str(status or 499)).inc()
