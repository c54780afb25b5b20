"""The engine's token-rate throttle (EngineConfig.max_tokens_per_second)."""

import asyncio
import time

import pytest

from stratus.config import ConfigError, load_settings
from stratus.engine import Engine, EngineConfig, GenerateRequest, SamplingParams
from stratus.engine.step_loop import Pacer

pytestmark = pytest.mark.timeout(120)


def test_pacer_spaces_steps_by_their_tokens():
    pacer = Pacer(rate=10.0)
    assert pacer.delay(100.0) == 0.0
    pacer.stepped(started=100.0, tokens=5)  # 5 tokens at 10/s: the next step at 100.5
    assert pacer.delay(100.2) == pytest.approx(0.3)
    pacer.stepped(started=100.5, tokens=2)
    assert pacer.ready_at == pytest.approx(100.7)
    pacer.stepped(started=100.7, tokens=0)  # a prefill chunk that produced nothing
    assert pacer.ready_at == pytest.approx(100.7)
    pacer.stepped(started=200.0, tokens=1)  # after idling: no credit saved up
    assert pacer.ready_at == pytest.approx(200.1)


async def _generate_all(engine: Engine, n: int, max_tokens: int) -> dict[str, list[int]]:
    async def one(i: int) -> tuple[str, list[int]]:
        params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
        request = GenerateRequest(prompt_token_ids=[5 + i, 6, 7, 8], params=params, request_id=f"r{i}")
        ids = []
        async for delta in engine.generate(request):
            ids.extend(delta.token_ids)
        return request.request_id, ids

    await engine.start(warmup=False)
    try:
        return dict(await asyncio.gather(*(one(i) for i in range(n))))
    finally:
        await engine.shutdown()


def test_throttled_engine_gives_the_same_tokens_and_never_exceeds_its_rate(llama_dir):
    n, max_tokens, rate = 4, 12, 80.0
    free = asyncio.run(_generate_all(Engine(llama_dir, EngineConfig(kv_cache_memory_mb=8)), n, max_tokens))
    throttled_engine = Engine(llama_dir, EngineConfig(kv_cache_memory_mb=8, max_tokens_per_second=rate))
    start = time.monotonic()
    throttled = asyncio.run(_generate_all(throttled_engine, n, max_tokens))
    elapsed = time.monotonic() - start
    assert throttled == free
    # A lower bound only (a loaded machine can only make it slower): every token but the
    # first step's n waited for the budget.
    assert elapsed >= (n * max_tokens - n) / rate


def test_the_setting_is_validated():
    for bad in (0, -5.0, float("inf"), float("nan"), True):
        with pytest.raises(ValueError, match="max_tokens_per_second"):
            EngineConfig(max_tokens_per_second=bad)
    settings = load_settings(env={"STRATUS_MAX_TOKENS_PER_SECOND": "20"}, config_file=None)
    assert settings.engine.max_tokens_per_second == 20.0
    with pytest.raises(ConfigError, match="max_tokens_per_second"):
        load_settings({"max_tokens_per_second": -1.0}, env={})


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_a_bad_rate_on_the_command_line_is_a_usage_error(command, tmp_path):
    from click.testing import CliRunner

    from stratus.cli.main import main

    env = {"STRATUS_CLUSTER_SECRET": "s" * 40, "STRATUS_DATA_DIR": str(tmp_path)}
    args = [command, "--model", "demo=models/demo", "--max-tokens-per-second", "-1"]
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 2, result.output
    assert "max_tokens_per_second must be a positive number" in result.output
