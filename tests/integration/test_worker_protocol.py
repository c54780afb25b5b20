"""WorkerReplica against malformed worker answers (a real loopback HTTP server scripts them):
every transport or protocol fault is a ReplicaError (the request fails over), never another
exception (a 500); only the engine's refusal is the request's own ValidationError."""

from __future__ import annotations

import asyncio
import json

import pytest

from stratus.cluster.replica import ReplicaError
from stratus.cluster.worker_replica import WorkerReplica
from stratus.engine.types import GenerateRequest, SamplingParams, ValidationError
from tests.recording_server import Recorded, RecordingServer

pytestmark = pytest.mark.timeout(30)

NDJSON = "application/x-ndjson"
REQUEST = GenerateRequest(prompt="hi", params=SamplingParams(max_tokens=2))


async def _drain(replica: WorkerReplica) -> None:
    async for _ in replica.generate(REQUEST):
        pass


@pytest.mark.parametrize(
    "body",
    [
        b"[1, 2]\n",  # not an object
        b'"text"\n',
        b'{"error": "boom"}\n',  # an error that is not an object
        b'{"error": null}\n',
        b'{"index": 0, "token_ids": "x"}\n',  # a delta of the wrong shape
        b"{not json\n",
        b"{}\n{}\n",  # keepalives, then the end: truncated
    ],
)
def test_malformed_streams_are_replica_errors(body):
    with RecordingServer(lambda _req: (200, NDJSON, body)) as server:

        async def run():
            replica = WorkerReplica("w", "demo", server.url, b"s")
            try:
                with pytest.raises(ReplicaError):
                    await _drain(replica)
            finally:
                await replica.shutdown()

        asyncio.run(run())


def test_the_engines_refusal_is_a_validation_error():
    line = b'{"error": {"message": "too long", "type": "invalid_request_error", "param": "max_tokens"}}\n'
    with RecordingServer(lambda _req: (200, NDJSON, line)) as server:

        async def run():
            replica = WorkerReplica("w", "demo", server.url, b"s")
            with pytest.raises(ValidationError) as refused:
                await _drain(replica)
            assert refused.value.param == "max_tokens"
            await replica.shutdown()

        asyncio.run(run())


def test_a_closed_replica_and_non_object_answers_are_replica_errors():
    def answer(req: Recorded) -> tuple[int, str, bytes]:
        if req.path.endswith("/health"):
            return 200, "application/json", b"[1]"
        return 503, "application/json", b'{"error": "not an object"}'

    with RecordingServer(answer) as server:

        async def run():
            replica = WorkerReplica("w", "demo", server.url, b"s")
            with pytest.raises(ReplicaError):
                await replica.probe()  # a JSON list, not an object
            with pytest.raises(ReplicaError):
                await _drain(replica)  # a 503 whose error is not an object
            await replica.shutdown()
            with pytest.raises(ReplicaError):
                await _drain(replica)  # httpx: the client has been closed
            with pytest.raises(ReplicaError):
                await replica.probe()

        asyncio.run(run())


def test_a_refused_registration_does_not_echo_what_the_url_answered():
    from stratus.cluster.registration import RegistrationError, WorkerDirectory

    page = b'{"error": {"message": "internal-only page: db password hunter2"}}'
    with RecordingServer(lambda _req: (403, "application/json", page)) as server:

        async def run():
            directory = WorkerDirectory(None, b"s" * 32)
            with pytest.raises(RegistrationError) as refused:
                await directory.register({"id": "w", "model": "demo", "url": server.url})
            assert "hunter2" not in str(refused.value) and "403" not in str(refused.value)
            assert server.requests[0].path == "/internal/v1/checkpoint-files"  # it did ask

        asyncio.run(run())


def test_missed_heartbeats_remove_a_worker_only_when_a_probe_fails():
    from stratus.api.registry import ModelRegistry
    from stratus.cluster.checkpoint_files import read_checkpoint_files
    from stratus.cluster.registration import WorkerDirectory
    from stratus.config import demo_model_path

    if not (demo_model_path() / "config.json").is_file():
        pytest.skip("no demo model: run `make demo-model`")
    files = {"model": "demo", "max_model_len": 1024, "files": read_checkpoint_files(demo_model_path())}
    checkpoint = (200, "application/json", json.dumps(files).encode())

    def answer(req: Recorded) -> tuple[int, str, bytes]:
        return checkpoint if req.path.endswith("/checkpoint-files") else (200, "application/json", b"{}")

    now = [0.0]
    with RecordingServer(answer) as alive, RecordingServer(answer) as doomed:

        async def run():
            registry = ModelRegistry()
            directory = WorkerDirectory(registry, b"s" * 32, interval=1, missed=3, clock=lambda: now[0])
            try:
                await directory.register({"id": "alive", "model": "demo", "url": alive.url})
                await directory.register({"id": "doomed", "model": "demo", "url": doomed.url})
                doomed.__exit__()  # the machine is gone: nothing listens there any more
                now[0] = 10.0  # both missed their heartbeats
                assert await directory.expire() == ["doomed"]
                assert set(directory.workers) == {"alive"}  # it answered the probe: kept
                assert [r.id for r in registry.replica_sets()["demo"].replicas] == ["alive"]
                assert directory.heartbeat({"id": "alive", "model": "demo", "stats": {}})
                assert await directory.expire() == []
            finally:
                await directory.close()
                await registry.shutdown()

        asyncio.run(run())
        assert any(r.path.endswith("/health") for r in alive.requests)
