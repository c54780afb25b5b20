"""Metrics live in a registry per app, and engine gauges are read at scrape time."""

from prometheus_client import REGISTRY

from stratus.engine.types import EngineStats
from stratus.observe.metrics import Metrics


def stats(**kw):
    base = dict(
        running=2,
        waiting=1,
        kv_blocks_total=10,
        kv_blocks_used=4,
        kv_blocks_free=6,
        prefix_cache_queries=100,
        prefix_cache_hits=25,
        prefix_hit_rate=0.25,
        tokens_per_second=1.0,
        preemptions=0,
        generated_tokens_total=0,
        prompt_tokens_total=0,
    )
    return EngineStats(**{**base, **kw})


def test_two_apps_do_not_share_metrics_or_touch_the_global_registry():
    a, b = Metrics(), Metrics()
    a.requests.labels("/v1/models", "", "200").inc()
    assert 'route="/v1/models"' in a.render().decode()
    assert 'route="/v1/models"' not in b.render().decode()
    assert REGISTRY.get_sample_value("stratus_requests_total", {"route": "/v1/models"}) is None


def test_engine_gauges_and_generation_histograms():
    m = Metrics(lambda: {"tiny": stats(), "loading": None})
    m.observe_generation("tiny", prompt_tokens=5, completion_tokens=3, ttft=0.1, decode_seconds=0.2, e2e=0.5)
    text = m.render().decode()
    assert 'stratus_requests_running{model="tiny"} 2.0' in text
    assert 'stratus_requests_waiting{model="tiny"} 1.0' in text
    assert 'stratus_kv_cache_usage_ratio{model="tiny"} 0.4' in text
    assert 'stratus_prefix_cache_hit_rate{model="tiny"} 0.25' in text
    assert 'stratus_time_per_output_token_seconds_sum{model="tiny"} 0.1' in text
    assert 'stratus_prompt_tokens_total{model="tiny"} 5.0' in text
    assert 'model="loading"' not in text


def test_a_failing_stats_source_does_not_break_the_scrape():
    def broken():
        raise RuntimeError("engine gone")

    assert b"stratus_requests_running" in Metrics(broken).render()
