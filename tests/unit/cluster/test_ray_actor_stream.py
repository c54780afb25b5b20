"""EngineActor's stream without Ray: the actor class is plain Python (ray.remote wraps it only
when RayReplica places it), so its buffering and its abort are checked here on the demo model,
in this process. A slow reader gets batches of at most STREAM_BUFFER deltas, and nothing is
lost; closing the stream early aborts the engine's request. The engine is throttled, so a
request of MAX_TOKENS takes seconds however fast the machine is."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[test]' (ray==2.60.0)")

from stratus.cluster.ray_replica import STREAM_BUFFER, EngineActor  # noqa: E402
from stratus.engine import EngineConfig, GenerateRequest, SamplingParams  # noqa: E402

pytestmark = pytest.mark.timeout(120)

DEMO = Path(__file__).resolve().parents[3] / "models" / "demo"
RATE = 200.0  # tokens/s: MAX_TOKENS takes at least 1.5 s
MAX_TOKENS = 300
ABORTED_TOKENS = (
    1000  # at least 5 s (the context holds 1024): the close comes first even if this process stalls
)


def request(max_tokens: int = MAX_TOKENS) -> GenerateRequest:
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    return GenerateRequest(prompt="Once upon a time", params=params)


async def wait_until(condition, what: str) -> None:
    for _ in range(1200):  # bounded (60 s): a wait, never a measurement
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_slow_reader_gets_bounded_batches_and_closing_aborts():
    if not (DEMO / "config.json").is_file():
        pytest.skip("models/demo is missing: make demo-model")
    asyncio.run(_run())


async def _run() -> None:
    config = EngineConfig(num_threads=1, kv_cache_memory_mb=16, max_tokens_per_second=RATE)
    actor = EngineActor(str(DEMO), config, isolation="thread")
    engine = actor._engine
    try:
        # A reader that stalls until the engine has produced the whole request: the actor
        # holds at most STREAM_BUFFER of it, so no batch is larger, and every token arrives.
        await actor._ensure_started()  # the warm-up's tokens are counted by now
        base = engine.stats().generated_tokens_total
        stream = actor.generate(request())
        batches = [await anext(stream)]
        done = base + MAX_TOKENS
        await wait_until(lambda: engine.stats().generated_tokens_total >= done, "the request")
        batches += [batch async for batch in stream]
        assert max(len(batch) for batch in batches) <= STREAM_BUFFER
        deltas = [d for batch in batches for d in batch]
        assert sum(len(d.token_ids) for d in deltas) == MAX_TOKENS
        assert deltas[-1].finish_reason == "length"

        # Closing after the first batch stops the engine's request well before its end.
        before = engine.stats().generated_tokens_total
        stream = actor.generate(request(ABORTED_TOKENS))
        await anext(stream)
        await stream.aclose()
        # a report that counts the batch read is from after the request started, not stale
        await wait_until(
            lambda: (
                engine.stats().generated_tokens_total > before
                and engine.stats().running + engine.stats().waiting == 0
            ),
            "the abort",
        )
        generated = engine.stats().generated_tokens_total - before
        assert engine.stats().running == 0 and generated < ABORTED_TOKENS, generated
    finally:
        await actor.shutdown()
