"""Prometheus metrics for one gateway, in a registry of its own (never the process-global one).

Request-path metrics are updated as requests finish; engine gauges (running and waiting
requests, KV cache usage, prefix-cache hit rate) are read from each engine's `stats()` at
scrape time, so they are never stale and cost nothing between scrapes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger("stratus.metrics")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.5)

StatsSource = Callable[[], Mapping[str, Any]]  # model name -> EngineStats (or None if not loaded)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, engine_stats: StatsSource | None = None):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "stratus_requests",
            "HTTP requests by route, model and status code",
            ["route", "model", "status"],
            registry=r,
        )
        self.ttft = Histogram(
            "stratus_time_to_first_token_seconds",
            "Arrival to first generated token",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "stratus_time_per_output_token_seconds",
            "Mean time between output tokens of a request",
            ["model"],
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "stratus_e2e_request_latency_seconds",
            "Arrival to last byte of a generation request",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "stratus_prompt_tokens", "Prompt tokens processed", ["model"], registry=r
        )
        self.completion_tokens = Counter(
            "stratus_generation_tokens", "Completion tokens generated", ["model"], registry=r
        )
        self.aborted = Counter(
            "stratus_aborted_requests",
            "Generations stopped before they finished",
            ["model", "reason"],
            registry=r,
        )
        self.cache_lookups = Counter(
            "stratus_response_cache_lookups", "Response cache lookups", ["model"], registry=r
        )
        self.cache_hits = Counter(
            "stratus_response_cache_hits",
            "Response cache lookups answered from the cache",
            ["model"],
            registry=r,
        )
        if engine_stats is not None:
            r.register(EngineCollector(engine_stats))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def observe_generation(
        self,
        model: str,
        *,
        prompt_tokens: int,
        completion_tokens: int,
        ttft: float | None,
        decode_seconds: float | None,
        e2e: float,
    ) -> None:
        self.prompt_tokens.labels(model).inc(prompt_tokens)
        self.completion_tokens.labels(model).inc(completion_tokens)
        if ttft is not None:
            self.ttft.labels(model).observe(ttft)
        if decode_seconds is not None and completion_tokens > 1:
            self.tpot.labels(model).observe(decode_seconds / (completion_tokens - 1))
        self.e2e.labels(model).observe(e2e)


class EngineCollector:
    """Reads every engine's stats when Prometheus scrapes."""

    def __init__(self, source: StatsSource):
        self.source = source

    def describe(self) -> Iterable[Metric]:
        return []  # dynamic; avoids calling the engines at registration time

    def collect(self) -> Iterable[Metric]:
        running = GaugeMetricFamily("stratus_requests_running", "Requests in the batch", labels=["model"])
        waiting = GaugeMetricFamily("stratus_requests_waiting", "Requests queued", labels=["model"])
        kv = GaugeMetricFamily(
            "stratus_kv_cache_usage_ratio", "Fraction of KV cache blocks in use", labels=["model"]
        )
        hit_rate = GaugeMetricFamily(
            "stratus_prefix_cache_hit_rate", "Prefix-cache hit rate (tokens)", labels=["model"]
        )
        queries = CounterMetricFamily(
            "stratus_prefix_cache_queries", "Prompt tokens looked up in the prefix cache", labels=["model"]
        )
        hits = CounterMetricFamily(
            "stratus_prefix_cache_hits", "Prompt tokens found in the prefix cache", labels=["model"]
        )
        preempt = CounterMetricFamily(
            "stratus_preemptions", "Sequences preempted for lack of KV blocks", labels=["model"]
        )
        try:
            stats = dict(self.source())
        except Exception:  # a scrape must never fail because one engine is unhappy
            log.exception("reading engine stats failed")
            stats = {}
        for model, s in stats.items():
            if s is None:
                continue
            running.add_metric([model], s.running)
            waiting.add_metric([model], s.waiting)
            kv.add_metric([model], s.kv_blocks_used / s.kv_blocks_total if s.kv_blocks_total else 0.0)
            hit_rate.add_metric([model], s.prefix_hit_rate)
            queries.add_metric([model], s.prefix_cache_queries)
            hits.add_metric([model], s.prefix_cache_hits)
            preempt.add_metric([model], s.preemptions)
        return [running, waiting, kv, hit_rate, queries, hits, preempt]
