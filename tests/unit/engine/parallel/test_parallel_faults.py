"""A rank that dies or hangs takes its replica out within a bounded time: the stream in flight
fails with a clear error (never hangs on a collective), no rank process is left behind, and
the engine's restart path brings the replica back with fresh ranks."""

import asyncio
import os
import signal
import time

import pytest

from stratus.engine import Engine, EngineConfig, EngineError, GenerateRequest, SamplingParams

pytestmark = pytest.mark.timeout(300)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def gone(pids: list[int], within: float) -> bool:
    deadline = time.monotonic() + within
    while any(alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


async def collect(engine: Engine, max_tokens: int) -> list[int]:
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    out: list[int] = []
    async for delta in engine.generate(GenerateRequest(prompt_token_ids=[5, 6, 7], params=params)):
        out.extend(delta.token_ids)
    return out


def rank_pids(engine: Engine) -> list[int]:
    return [r["pid"] for r in engine.layout["ranks"]]


def test_a_lost_rank_fails_the_stream_and_the_replica_comes_back(arch_dirs):
    """Rank 1 killed mid-stream, then (after the restart) its successor stopped (SIGSTOP: a
    hang, noticed when a collective times out). One engine for both: starts cost seconds."""

    async def lose_rank(engine: Engine, sig: int, restarts: int) -> None:
        old = rank_pids(engine)
        assert old[0] == engine._transport.process.pid and len(old) == 2
        stream = asyncio.create_task(collect(engine, max_tokens=1500))
        await asyncio.sleep(1.0)
        assert not stream.done()
        os.kill(old[1], sig)
        started = time.monotonic()
        with pytest.raises(EngineError):
            await asyncio.wait_for(stream, timeout=60)
        assert time.monotonic() - started < 30  # a hang: parallel_timeout_s (5) and the kill
        assert await gone(old, within=30)  # the stopped rank too: rank 0 kills it on its way out
        deadline = time.monotonic() + 120
        while not (engine.state == "ready" and engine.restarts == restarts):
            assert time.monotonic() < deadline and engine.state != "failed"
            await asyncio.sleep(0.2)
        new = rank_pids(engine)
        assert not set(new) & set(old) and all(alive(p) for p in new)
        assert len(await collect(engine, max_tokens=8)) == 8

    async def scenario():
        # Paced to 40 tokens/s so the stream is surely mid-way when the rank goes.
        config = EngineConfig(
            kv_cache_memory_mb=8, tensor_parallel_size=2, parallel_timeout_s=5, max_tokens_per_second=40
        )
        engine = Engine(arch_dirs["llama3"], config, isolation="process")
        await engine.start()
        try:
            assert engine.layout["tensor_parallel_size"] == 2
            await lose_rank(engine, signal.SIGKILL, restarts=1)
            await lose_rank(engine, signal.SIGSTOP, restarts=2)
            last = rank_pids(engine)
        finally:
            await engine.shutdown()
        assert await gone(last, within=30)

    asyncio.run(scenario())
