"""Continuous batching, paged KV cache, preemption and prefix caching keep outputs exact."""

import asyncio

from stratus.engine import Engine, EngineConfig, EngineCore, GenerateRequest, SamplingParams


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)


def run_all(engine: EngineCore, prompts: dict[str, list[int]], max_tokens: int) -> dict[str, list[int]]:
    for rid, ids in prompts.items():
        engine.add_request(GenerateRequest(prompt_token_ids=ids, params=greedy(max_tokens), request_id=rid))
    out: dict[str, list[int]] = {rid: [] for rid in prompts}
    while engine.has_work():
        for delta in engine.step():
            out[delta.request_id].extend(delta.token_ids)
    return out


def make_prompts(count: int, length_base: int) -> dict[str, list[int]]:
    return {f"r{i}": [(7 * i + 3 * j) % 500 + 7 for j in range(length_base + 3 * i)] for i in range(count)}


def test_more_sequences_than_the_pool_holds_all_complete_exactly(llama_dir):
    prompts = make_prompts(8, 20)
    alone = {}
    for rid, ids in prompts.items():
        solo = EngineCore(llama_dir, EngineConfig(num_kv_blocks=16, max_model_len=128))
        alone |= run_all(solo, {rid: ids}, 60)
    # 8 sequences of ~100 tokens need ~56 blocks; the pool has 16 (it fits one context window).
    engine = EngineCore(
        llama_dir, EngineConfig(num_kv_blocks=16, max_model_len=128, max_num_batched_tokens=64)
    )
    together = run_all(engine, prompts, 60)
    assert engine.stats().preemptions > 0
    assert together == alone
    assert engine.blocks.num_used == 0  # prefix-cached blocks stay evictable, none referenced


def test_chunked_prefill_matches_single_shot(llama_dir):
    prompt = {"long": [(11 * j) % 500 + 7 for j in range(300)], "short": [9, 8, 7, 6]}
    whole = EngineCore(llama_dir, EngineConfig(kv_cache_memory_mb=8, max_num_batched_tokens=1024))
    chunked = EngineCore(llama_dir, EngineConfig(kv_cache_memory_mb=8, max_num_batched_tokens=32))
    assert run_all(chunked, prompt, 20) == run_all(whole, prompt, 20)


def test_prefix_cache_reuses_a_512_token_prefix(llama_dir):
    prefix = [(13 * j) % 500 + 7 for j in range(512)]
    engine = EngineCore(llama_dir, EngineConfig(kv_cache_memory_mb=8))
    first = run_all(engine, {"a": prefix + [1, 2, 3]}, 16)["a"]
    hits_before = engine.stats().prefix_cache_hits
    second = run_all(engine, {"b": prefix + [4, 5, 6]}, 16)["b"]
    stats = engine.stats()
    assert stats.prefix_cache_hits - hits_before == 512  # 32 full blocks of 16 tokens
    assert stats.prefix_hit_rate > 0.45
    uncached = EngineCore(llama_dir, EngineConfig(kv_cache_memory_mb=8, enable_prefix_caching=False))
    assert run_all(uncached, {"b": prefix + [4, 5, 6]}, 16)["b"] == second
    assert run_all(uncached, {"a": prefix + [1, 2, 3]}, 16)["a"] == first


def test_prefix_cache_evicts_lru_when_the_pool_is_needed(llama_dir):
    engine = EngineCore(llama_dir, EngineConfig(num_kv_blocks=10, max_model_len=128))
    run_all(engine, {"a": list(range(10, 74))}, 4)  # leaves 4 cached full blocks
    assert len(engine.blocks.cached) == 4
    run_all(engine, {"b": list(range(100, 228 - 8))}, 8)  # needs the whole pool
    assert engine.blocks.num_used == 0
    assert all(engine.blocks.hashes[b] is None or b in engine.blocks.evictable for b in range(10))


def test_async_generate_abort_frees_blocks(llama_dir):
    async def scenario():
        engine = Engine.from_pretrained(llama_dir, EngineConfig(kv_cache_memory_mb=8))
        await engine.start()
        request = GenerateRequest(prompt_token_ids=list(range(7, 60)), params=greedy(10_000 // 10))
        seen = 0
        stream = engine.generate(request)
        async for _ in stream:
            seen += 1
            if seen == 3:
                break
        await stream.aclose()  # a disconnected client
        for _ in range(100):
            if engine.core.blocks.num_used == 0 and not engine.core.requests:
                break
            await asyncio.sleep(0.02)
        used = engine.core.blocks.num_used
        await engine.shutdown()
        return used

    assert asyncio.run(scenario()) == 0


def test_async_concurrent_requests_are_independent(llama_dir):
    async def scenario():
        engine = Engine.from_pretrained(llama_dir, EngineConfig(kv_cache_memory_mb=8))
        await engine.start()

        async def one(ids):
            out = []
            async for delta in engine.generate(GenerateRequest(prompt_token_ids=ids, params=greedy(12))):
                out.extend(delta.token_ids)
            return out

        prompts = list(make_prompts(6, 5).values())
        together = await asyncio.gather(*(one(p) for p in prompts))
        alone = [await one(p) for p in prompts]
        await engine.shutdown()
        return together, alone

    together, alone = asyncio.run(scenario())
    assert together == alone
