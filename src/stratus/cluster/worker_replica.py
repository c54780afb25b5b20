"""`WorkerReplica`: a `stratus worker` reached over HTTP, as a `Replica` (cluster/replica.py).

    replica = WorkerReplica("w1", "demo", "http://10.0.0.5:8100", secret=b"...")
    await replica.start()            # fetches tokenizer and config files; no weights needed here
    async for delta in replica.generate(GenerateRequest(prompt="Hi")): ...

Everything is bounded: connecting takes at most `connect_timeout`, a stream that sends nothing
for `read_timeout` seconds (a hung or partitioned worker) fails, and so does one whose first token
takes longer than `first_token_timeout` (generous: the worker sends keepalive lines while a
request queues, so a busy worker is told apart from a dead one without a retry storm). A failure of the
worker (unreachable, 5xx, a broken or truncated stream) is a `ReplicaError`, so the request can
move to another replica; a 400 is the request's own fault, a `ValidationError`.
"""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson

from stratus.cluster import wire
from stratus.cluster.checkpoint_files import CHECKPOINT_FILES, checkpoint_digest
from stratus.cluster.replica import ReplicaError
from stratus.cluster.worker_server import PREFIX
from stratus.engine.config import ModelConfig
from stratus.engine.tokenizer import Tokenizer
from stratus.engine.types import Delta, EngineStats, GenerateRequest, RequestFailed, ValidationError
from stratus.observe import tracing
from stratus.observe.logs import request_id_var

log = logging.getLogger("stratus.cluster")

CACHE_DIR = Path(tempfile.gettempdir()) / f"stratus-worker-checkpoints-{os.getuid()}"


def client_tls(
    ca: str | None = None, cert: str | None = None, key: str | None = None
) -> ssl.SSLContext | bool:
    """How the gateway checks workers' certificates (`ca`: a private CA's PEM; None: the system's)
    and, for mutual TLS, the client certificate it presents to them."""
    if not (ca or cert):
        return True
    context = ssl.create_default_context(cafile=ca)
    if cert:
        context.load_cert_chain(cert, key)
    return context


class WorkerReplica:
    kind = "worker"

    def __init__(
        self,
        replica_id: str,
        model: str,
        url: str,
        secret: bytes,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        first_token_timeout: float = 600.0,
        verify: ssl.SSLContext | bool = True,
    ):
        self.id = replica_id
        self.model = model
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {secret.decode()}"}
        timeout = httpx.Timeout(read_timeout, connect=connect_timeout)
        self._client = httpx.AsyncClient(base_url=self.url + PREFIX, timeout=timeout, verify=verify)
        self.first_token_timeout = first_token_timeout
        self._stats = EngineStats.empty()
        self.tokenizer: Tokenizer
        self.model_config: ModelConfig
        self.max_model_len = 0
        self.checkpoint_digest = ""  # known after start()

    def __repr__(self) -> str:
        return f"WorkerReplica({self.id!r}, {self.model!r}, {self.url!r})"

    async def start(self) -> None:
        """Read the worker's tokenizer and config; raises ReplicaError if it is not serving."""
        body = await self._get("/checkpoint-files")
        if body.get("model") != self.model:
            raise ReplicaError(f"worker {self.id} serves {body.get('model')!r}, not {self.model!r}")
        files = body.get("files") or {}
        missing = {"config.json", "tokenizer.json"} - set(files)
        if missing or set(files) - set(CHECKPOINT_FILES):
            raise ReplicaError(f"worker {self.id} sent an incomplete checkpoint (missing {sorted(missing)})")
        self.checkpoint_digest = checkpoint_digest(files)
        folder = _cache(files, self.checkpoint_digest)
        self.model_config = ModelConfig.from_dir(folder)
        self.tokenizer = Tokenizer(folder)
        self.max_model_len = int(body["max_model_len"])

    async def probe(self) -> None:
        body = await self._get("/health")
        self.update_stats(body.get("stats") or {})

    def stats(self) -> EngineStats:
        return self._stats

    def update_stats(self, stats: dict) -> None:
        """Latest numbers from a probe or a heartbeat."""
        self._stats = wire.stats_from_dict(stats)

    async def shutdown(self) -> None:
        await self._client.aclose()  # the worker process is not ours to stop

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Delta]:
        payload = orjson.dumps(wire.request_to_dict(request))
        headers = tracing.inject({**self._headers, "Content-Type": "application/json"})
        request_id = request_id_var.get()
        if request_id:  # the worker's log lines and span name the gateway's request
            headers["X-Request-Id"] = request_id
        unfinished = set(range(request.params.n))
        deadline = time.monotonic() + self.first_token_timeout
        first = True
        try:
            async with self._client.stream("POST", "/generate", content=payload, headers=headers) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise _refusal(self.id, response)
                async for line in response.aiter_lines():
                    if not line:
                        continue
                    data = orjson.loads(line)
                    if not isinstance(data, dict):
                        raise ReplicaError(f"worker {self.id} sent a malformed stream (not an object)")
                    if not data:  # a keepalive: the request waits in the worker's queue or runs
                        if first and time.monotonic() > deadline:
                            raise ReplicaError(
                                f"worker {self.id} sent no token within {self.first_token_timeout:.0f} s"
                            )
                        continue
                    if "error" in data:
                        raise _stream_error(self.id, data["error"])
                    delta = wire.delta_from_dict(data)
                    first = False
                    if delta.finish_reason is not None:
                        unfinished.discard(delta.index)
                    yield delta
                    if not unfinished:
                        return
        except (ReplicaError, ValidationError, RequestFailed):
            raise
        except httpx.TimeoutException as exc:
            raise ReplicaError(f"worker {self.id} timed out ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise ReplicaError(f"worker {self.id} failed: {type(exc).__name__}: {exc}") from exc
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ReplicaError(f"worker {self.id} sent a malformed stream ({exc})") from exc
        except RuntimeError as exc:  # httpx: the client was closed (the replica is shutting down)
            raise ReplicaError(f"worker {self.id} is closed ({exc})") from exc
        raise ReplicaError(f"worker {self.id}: the stream ended before every choice finished")

    async def _get(self, path: str) -> dict:
        try:
            response = await self._client.get(path, headers=self._headers)
        except (httpx.HTTPError, RuntimeError) as exc:  # RuntimeError: the client was closed
            raise ReplicaError(f"worker {self.id} unreachable: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise _refusal(self.id, response)
        try:
            body = response.json()
        except ValueError as exc:
            raise ReplicaError(f"worker {self.id} answered {path} with something not JSON") from exc
        if not isinstance(body, dict):
            raise ReplicaError(f"worker {self.id} answered {path} with something not a JSON object")
        return body


def _stream_error(replica_id: str, error: object) -> Exception:
    """An `{"error": ...}` line: the engine's refusal is the request's fault, anything else the worker's."""
    if not isinstance(error, dict):
        return ReplicaError(f"worker {replica_id} failed (a malformed error record)")
    message = str(error.get("message") or "unknown error")
    if error.get("type") == "invalid_request_error":
        param = error.get("param")
        return ValidationError(message, param if isinstance(param, str) else None)
    if error.get("type") == "request_failed":
        return RequestFailed(message)
    return ReplicaError(f"worker {replica_id}: {message}")


def _refusal(replica_id: str, response: httpx.Response) -> Exception:
    """A non-200 answer: 400 is the request's fault, anything else the worker's."""
    try:
        error = response.json().get("error") or {}
        if not isinstance(error, dict):
            error = {}
    except (ValueError, AttributeError):
        error = {}
    message = error.get("message") or f"HTTP {response.status_code}"
    if response.status_code == 400:
        return ValidationError(message, error.get("param"))
    return ReplicaError(f"worker {replica_id} answered {response.status_code}: {message}")


def _cache(files: dict[str, str], digest: str) -> Path:
    """The files in a folder named by their digest, shared by every replica of one checkpoint."""
    folder = CACHE_DIR / digest
    if (folder / ".complete").is_file():
        return folder
    CACHE_DIR.mkdir(mode=0o700, exist_ok=True)
    if CACHE_DIR.stat().st_uid != os.getuid():  # another user's folder: never trust its files
        raise ReplicaError(f"{CACHE_DIR} belongs to another user")
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        tmp = folder / f".{name}.{os.getpid()}"
        tmp.write_text(text)
        os.replace(tmp, folder / name)
    (folder / ".complete").touch()
    return folder
