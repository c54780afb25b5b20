"""The step loop in a process of its own behaves like the in-thread one, and its death is
reported to callers instead of hanging them."""

import asyncio
import os
import signal

import pytest

from stratus.engine import Engine, EngineConfig, EngineError, GenerateRequest, SamplingParams, ValidationError


async def collect(engine, ids, max_tokens=12):
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    out = []
    async for delta in engine.generate(GenerateRequest(prompt_token_ids=ids, params=params)):
        out.extend(delta.token_ids)
    return out


def test_process_isolation_matches_thread(llama_dir):
    async def scenario():
        config = EngineConfig(kv_cache_memory_mb=8)
        threaded = Engine(llama_dir, config, isolation="thread")
        isolated = Engine(llama_dir, config, isolation="process")
        await threaded.start()
        await isolated.start()
        prompts = [[5, 6, 7, 8], [9, 10, 11], list(range(20, 60))]
        a = await asyncio.gather(*(collect(threaded, p) for p in prompts))
        b = await asyncio.gather(*(collect(isolated, p) for p in prompts))
        with pytest.raises(ValidationError, match="context window"):
            await collect(isolated, [5] * (isolated.max_model_len + 1))
        stats = isolated.stats()
        await threaded.shutdown()
        await isolated.shutdown()
        return a, b, stats

    a, b, stats = asyncio.run(scenario())
    assert a == b
    assert stats.kv_blocks_total > 0 and stats.generated_tokens_total >= 36


def test_dead_engine_process_fails_requests_instead_of_hanging(llama_dir):
    async def scenario():
        engine = Engine(llama_dir, EngineConfig(kv_cache_memory_mb=8), isolation="process")
        await engine.start()
        task = asyncio.create_task(collect(engine, [5, 6, 7], max_tokens=1500))
        await asyncio.sleep(0.5)
        os.kill(engine._transport.process.pid, signal.SIGKILL)
        with pytest.raises(EngineError, match="engine process exited"):
            await asyncio.wait_for(task, timeout=30)
        assert not engine.healthy
        with pytest.raises(EngineError):  # later requests fail at once too
            await collect(engine, [5, 6])
        await engine.shutdown()

    asyncio.run(scenario())


def test_a_killed_engine_process_is_restarted_and_serves_again(llama_dir):
    async def scenario():
        engine = Engine(llama_dir, EngineConfig(kv_cache_memory_mb=8), isolation="process")
        await engine.start()
        before = await collect(engine, [5, 6, 7])
        first_pid = engine._transport.process.pid
        os.kill(first_pid, signal.SIGKILL)
        deadline = asyncio.get_running_loop().time() + 60
        seen = set()
        while engine.restarts == 0 or not engine.healthy:
            seen.add(engine.state)
            if engine.state == "restarting":
                assert "being restarted" in engine.problem
            assert asyncio.get_running_loop().time() < deadline, "the engine was not restarted"
            await asyncio.sleep(0.05)
        after = await collect(engine, [5, 6, 7])
        pid = engine._transport.process.pid
        await engine.shutdown()
        return before, after, seen, first_pid, pid, engine.restarts

    before, after, seen, first_pid, pid, restarts = asyncio.run(scenario())
    assert "restarting" in seen and restarts == 1
    assert pid != first_pid
    assert after == before  # same weights, same greedy answer


def test_an_engine_that_cannot_be_restarted_gives_up(llama_dir, monkeypatch):
    import stratus.engine.engine as engine_module
    import stratus.engine.process as process_module

    monkeypatch.setattr(engine_module, "RESTART_BACKOFF_S", (0.01,))
    monkeypatch.setattr(engine_module, "MAX_RESTART_ATTEMPTS", 2)

    async def scenario():
        engine = Engine(llama_dir, EngineConfig(kv_cache_memory_mb=8), isolation="process")
        await engine.start()
        real = process_module.ProcessTransport

        class Broken(real):
            def wait_ready(self):
                raise RuntimeError("the engine process failed to load the model: out of memory")

        monkeypatch.setattr(process_module, "ProcessTransport", Broken)
        os.kill(engine._transport.process.pid, signal.SIGKILL)
        for _ in range(600):
            if engine.state == "failed":
                break
            await asyncio.sleep(0.05)
        state, problem = engine.state, engine.problem
        await engine.shutdown()
        return state, problem

    state, problem = asyncio.run(scenario())
    assert state == "failed"
    assert "could not be restarted" in problem and "out of memory" in problem
