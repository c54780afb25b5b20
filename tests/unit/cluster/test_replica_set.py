"""ReplicaSet over real engines (the demo model, thread isolation): a replica whose engine stops
mid-stream hands the stream to another replica with nothing lost or repeated; a request whose
replica is down before the first token is retried elsewhere; breakers, probes and draining."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from stratus.cluster.breaker import CircuitBreaker
from stratus.cluster.local import LocalReplica
from stratus.cluster.replica import ReplicaError
from stratus.cluster.replica_set import ReplicaSet
from stratus.engine import Engine, EngineConfig, GenerateRequest, SamplingParams

pytestmark = pytest.mark.timeout(180)

DEMO = Path(__file__).resolve().parents[3] / "models" / "demo"
PROMPT = "Mr. Darcy said that"


def engine() -> Engine:
    return Engine(DEMO, EngineConfig(kv_cache_memory_mb=16), isolation="thread")


@pytest.fixture(scope="module")
def reference_engine():
    return engine()


async def collect(stream, on_delta=None) -> dict[int, tuple[list[int], str, str | None]]:
    out: dict[int, tuple[list[int], str, str | None]] = {}
    async for d in stream:
        ids, text, _ = out.get(d.index, ([], "", None))
        out[d.index] = (ids + d.token_ids, text + d.text, d.finish_reason)
        if on_delta is not None:
            await on_delta(d, out)
    return out


async def reference(ref: Engine, params: SamplingParams):
    await ref.start(warmup=False)
    return await collect(ref.generate(GenerateRequest(prompt=PROMPT, params=params)))


async def replica_set(n: int, **kwargs) -> tuple[ReplicaSet, list[LocalReplica]]:
    rs = ReplicaSet("demo", **kwargs)
    replicas = [LocalReplica("demo", engine(), f"demo/r{i}") for i in range(n)]
    for r in replicas:
        await r.start()
        rs.add(r)
    return rs, replicas


def serving(rs: ReplicaSet, replicas: list[LocalReplica]) -> LocalReplica:
    busy = [r for r in replicas if r.id in rs.entries and rs.entries[r.id].inflight]
    assert len(busy) == 1
    return busy[0]


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(max_tokens=40, temperature=0, ignore_eos=True),
        SamplingParams(max_tokens=30, temperature=1.0, seed=5, n=2, ignore_eos=True, stop=["the"]),
    ],
    ids=["greedy", "seeded-n2-stop"],
)
def test_stream_migrates_when_its_replica_dies_mid_way(reference_engine, params):
    async def main():
        expected = await reference(reference_engine, params)
        rs, replicas = await replica_set(2, probe_interval=0.2)
        events: list[dict] = []
        killed: list[LocalReplica] = []

        async def kill_after_some_tokens(delta, out):
            if not killed and sum(len(v[0]) for v in out.values()) >= 8:
                victim = serving(rs, replicas)
                killed.append(victim)
                await victim.engine.shutdown()  # its in-flight streams fail with EngineError

        try:
            got = await collect(
                rs.generate(GenerateRequest(prompt=PROMPT, params=params), events.append),
                kill_after_some_tokens,
            )
        finally:
            await rs.shutdown()
        assert killed, "the stream finished before a replica could be stopped"
        assert got == expected
        assert [e["event"] for e in events] == ["migrate"]
        assert events[0]["from"] == killed[0].id and events[0]["delivered_tokens"] >= 8
        assert rs.migrations == 1

    asyncio.run(main())


def test_request_to_a_dead_replica_is_retried_and_probes_take_it_out(reference_engine):
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)

    async def main():
        expected = await reference(reference_engine, params)
        # Round robin sends one of the first two requests to the dead replica; probes run only
        # when added and after a failure.
        rs, replicas = await replica_set(2, policy="round_robin", probe_interval=60)
        dead = replicas[0]
        await dead.engine.shutdown()
        try:
            for _ in range(4):
                got = await collect(rs.generate(GenerateRequest(prompt=PROMPT, params=params)))
                assert got == expected
            await asyncio.sleep(0.1)  # the probe the failure triggered
            assert not rs.entries[dead.id].available and not rs.entries[dead.id].routable()
            assert rs.entries[replicas[1].id].served == 4
            assert rs.retries == 1 and rs.migrations == 0 and rs.entries[dead.id].failed == 1
        finally:
            await rs.shutdown()

    asyncio.run(main())


def test_no_replica_left_is_a_clear_error_and_a_probe_brings_one_back(reference_engine):
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)

    async def main():
        rs, (only,) = await replica_set(
            1, probe_interval=0.05, breaker=lambda: CircuitBreaker(open_seconds=0.2)
        )
        try:
            await only.engine.shutdown()
            with pytest.raises(ReplicaError, match="no replica of the model demo is available"):
                await collect(rs.generate(GenerateRequest(prompt=PROMPT, params=params)))
            await asyncio.sleep(0.2)
            assert not rs.healthy
            await only.engine.start(warmup=False)  # the engine comes back
            for _ in range(100):
                if rs.healthy:
                    break
                await asyncio.sleep(0.05)
            assert rs.healthy
            await collect(rs.generate(GenerateRequest(prompt=PROMPT, params=params)))
        finally:
            await rs.shutdown()

    asyncio.run(main())


def test_a_draining_replica_finishes_its_work_and_gets_nothing_new():
    params = SamplingParams(max_tokens=30, temperature=0, ignore_eos=True)

    async def main():
        rs, replicas = await replica_set(2, probe_interval=60)
        try:
            first = asyncio.ensure_future(collect(rs.generate(GenerateRequest(prompt=PROMPT, params=params))))
            while not any(e.inflight for e in rs.entries.values()):
                await asyncio.sleep(0.01)
            busy = serving(rs, replicas)
            drained = asyncio.ensure_future(rs.drain(busy.id))
            await asyncio.sleep(0)
            second = await collect(rs.generate(GenerateRequest(prompt=PROMPT, params=params)))
            assert len(second[0][0]) == 30
            assert await drained is busy  # returned once its request finished
            assert len((await first)[0][0]) == 30
            assert (
                busy.id not in rs.entries
                and rs.entries[[r for r in replicas if r is not busy][0].id].served == 1
            )
        finally:
            await rs.shutdown()
            for r in replicas:
                await r.shutdown()

    asyncio.run(main())


class LosesTheFinish(LocalReplica):
    """A replica whose connection breaks right after its last token, before the finish arrives
    (what a worker killed at that instant looks like from the gateway)."""

    async def generate(self, request):
        async for delta in super().generate(request):
            if delta.finish_reason is not None:
                delta.finish_reason = None
                yield delta
                raise ReplicaError(f"replica {self.id}: connection lost")
            yield delta


def test_a_choice_whose_finish_was_lost_is_finished_without_resuming(reference_engine):
    params = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)

    async def main():
        expected = await reference(reference_engine, params)
        rs = ReplicaSet("demo", probe_interval=60)
        flaky = LosesTheFinish("demo", engine(), "demo/flaky")
        await flaky.start()
        rs.add(flaky)
        try:
            got = await collect(rs.generate(GenerateRequest(prompt=PROMPT, params=params)))
        finally:
            await rs.shutdown()
        assert got == {0: (expected[0][0], expected[0][1], "length")}
        assert rs.migrations == 1  # counted, though nothing was left to resume

    asyncio.run(main())


class FailsRequests(LocalReplica):
    """Answers health probes but fails every request (out of memory, a broken engine...)."""

    async def generate(self, request):
        raise ReplicaError(f"replica {self.id}: generation failed")
        yield  # an async generator, like every replica's


def test_a_replica_that_passes_probes_but_fails_requests_is_taken_out_by_its_breaker(reference_engine):
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)

    async def main():
        expected = await reference(reference_engine, params)
        rs = ReplicaSet(
            "demo", "round_robin", probe_interval=0.01, breaker=lambda: CircuitBreaker(3, open_seconds=60)
        )
        bad = FailsRequests("demo", engine(), "demo/bad")
        good = LocalReplica("demo", engine(), "demo/good")
        for r in (bad, good):
            await r.start()
            rs.add(r)
        try:
            for i in range(8):  # different prompts: no prefix affinity
                request = GenerateRequest(prompt=f"{PROMPT} {i}", params=params)
                got = await collect(rs.generate(request))
                assert len(got[0][0]) == 6
                await asyncio.sleep(0.05)  # probes (which pass) run in between
            assert rs.entries[bad.id].failed == 3  # then its breaker opened and it got nothing
            assert rs.entries[bad.id].breaker.state == "open" and not rs.entries[bad.id].unreachable
            assert rs.entries[good.id].served == 8 and rs.retries == 3
            got = await collect(rs.generate(GenerateRequest(prompt=PROMPT, params=params)))
            assert got == expected
        finally:
            await rs.shutdown()

    asyncio.run(main())


def test_requests_of_one_user_stay_on_one_replica():
    params = SamplingParams(max_tokens=3, temperature=0, ignore_eos=True)

    async def main():
        rs, replicas = await replica_set(2, policy="round_robin", probe_interval=60)
        try:
            for i in range(4):  # different prompts: only the user ties them together
                await collect(
                    rs.generate(GenerateRequest(prompt=f"{PROMPT} {i}", params=params), None, "alice")
                )
            assert sorted(e.served for e in rs.entries.values()) == [0, 4]
            for i in range(4):  # without it, round robin alternates
                await collect(rs.generate(GenerateRequest(prompt=f"{i} {PROMPT}", params=params)))
            assert sorted(e.served for e in rs.entries.values()) == [2, 6]
        finally:
            await rs.shutdown()

    asyncio.run(main())
