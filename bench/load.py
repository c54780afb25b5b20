#!/usr/bin/env python3
"""Sustained mixed load: open-loop arrivals for a fixed time against a gateway and its replicas,
with the memory and file descriptors of every process of the deployment sampled throughout.

    .venv/bin/python bench/load.py --duration 60 --rate 6                 # starts its own deployment
    .venv/bin/python bench/load.py --workers 1 --local --model models/demo --json out.json
    .venv/bin/python bench/load.py --url http://127.0.0.1:8000 --key sk-stratus-... --model-name demo \\
        --watch-pid gateway=1234 --watch-pid worker=5678                # an existing gateway
    .venv/bin/python bench/load.py --mix chat=5,completion=3,bad_model=1,bad_key=1,stream=0.5,long=0.2,n=0.1

The deployment it starts, on loopback: a `stratus serve` gateway with access control and metering
on (its first admin from STRATUS_ADMIN_KEY; the load runs with a member's key of a team that is
granted the model and has generous limits, so the limits are evaluated on every request) and
`--workers` `stratus worker` replicas registered with it over the cluster secret; `--local` also
loads the model in the gateway (its engine in a child process). The model is `--model` (a
checkpoint directory), else models/demo, else a small random Llama built once under
bench/results/checkpoints.

Arrivals are Poisson at `--rate` requests/s for `--duration` s, whatever the server's pace (open
loop: a slow server gets a queue, not fewer requests). `--mix` weighs the kinds of request: chat,
completion, bad_model (404 expected) and bad_key (401 expected, or 429 once the sender is locked
out: bad keys come from 203.0.113.7 through X-Forwarded-For, which the started gateway trusts from
loopback, so the lockout falls on the "attacker" and not on the legitimate traffic); and the
shares of good requests that stream, that are long (a long prompt and a long output) and that ask
for n=2.

The report: throughput (requests/s and output tokens/s of the 200s), TTFT, TPOT and end-to-end
latency p50/p90/p99, errors by status and by error code, requests whose status was not the one
their kind expects, and per process of the deployment (gateway, engine children, workers and
theirs) RSS and open file descriptors sampled every `--sample-every` s, with the drift over the
steady state (after `--warmup` s): first against last sample and a least-squares slope per
minute. Printed, and with `--json PATH` written with every sample.

tests/fault/test_sustained_load.py runs the same code (Deployment, plan, run_load, Sampler,
summarize) and checks the gateway's ledger and audit trail against what the clients saw.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from tests.live_server import ServeProcess  # noqa: E402
from tests.worker_process import WorkerProcess  # noqa: E402

ATTACKER = "203.0.113.7"  # TEST-NET-3: where the bad keys claim to come from (X-Forwarded-For)
LOAD_TEAM = "load"
SMALL_LLAMA = dict(  # when there is no models/demo and no --model
    hidden_size=256,
    num_layers=4,
    num_heads=8,
    num_kv_heads=4,
    intermediate_size=688,
    vocab_size=8000,
    max_position_embeddings=1024,
)

# A small fixed pool of prompts: the prefix cache sees repeats, as with real system prompts, and
# a test's secret-and-prompt search (tests/issued.py) has few texts to look for.
SHORT_PROMPTS = [
    "Tell me a short story about a lighthouse keeper.",
    "What is the capital of France, and why?",
    "Write a haiku about the sea at night.",
    "Explain what a hash chain is in two sentences.",
    "List three things to pack for a hike in the rain.",
    "Summarize the rules of chess for a child.",
]
LONG_PARAGRAPH = (
    "The quick brown fox jumps over the lazy dog. Beautiful is better than ugly. Explicit is "
    "better than implicit. Simple is better than complex. Readability counts. Errors should "
    "never pass silently. "
)


# -- the mix -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mix:
    """Weights of the kinds of request, and shares among the good ones (chat and completion)."""

    chat: float = 5.0
    completion: float = 3.0
    bad_model: float = 0.5  # a model nobody serves: 404 model_not_found
    bad_key: float = 0.5  # a well-formed key nobody issued: 401 invalid_api_key (429 once locked)
    stream: float = 0.5  # share of good requests streamed
    long: float = 0.2  # share of good requests with a long prompt and a long output
    n: float = 0.1  # share of good requests asking for n=2
    short_tokens: int = 16  # max_tokens of a short request
    long_tokens: int = 96  # ... and of a long one
    long_repeats: int = 4  # the long prompt: LONG_PARAGRAPH this many times

    @classmethod
    def parse(cls, text: str) -> Mix:
        """'chat=5,completion=3,bad_key=1,stream=0.5': any field, the others default."""
        types = {f.name: f.type for f in fields(cls)}
        values: dict = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, _, value = part.partition("=")
            if name not in types:
                raise ValueError(f"unknown mix field {name!r}; known: {', '.join(types)}")
            values[name] = int(value) if types[name] == "int" else float(value)
        return cls(**values)


KINDS = ("chat", "completion", "bad_model", "bad_key")
EXPECTED = {"chat": {200}, "completion": {200}, "bad_model": {404}, "bad_key": {401, 429}}


@dataclass
class Shot:
    """One planned request: when it is sent (seconds after the start) and what it asks."""

    request_id: str
    at: float
    kind: str
    stream: bool
    long: bool
    n: int
    prompt: str
    max_tokens: int

    @property
    def path(self) -> str:
        return "/v1/chat/completions" if self.kind == "chat" else "/v1/completions"

    def body(self, model: str) -> dict:
        body: dict = {
            "model": "no-such-model" if self.kind == "bad_model" else model,
            "max_tokens": self.max_tokens,
            "ignore_eos": True,  # every good request produces exactly max_tokens per choice
            "stream": self.stream,
        }
        if self.kind == "chat":
            body["messages"] = [{"role": "user", "content": self.prompt}]
        else:
            body["prompt"] = self.prompt
        if self.n > 1:
            body["n"] = self.n
            body["temperature"] = 0.8
        if self.stream:
            body["stream_options"] = {"include_usage": True}
        return body


def plan(mix: Mix, rate: float, duration: float, seed: int = 0, prefix: str = "load") -> list[Shot]:
    """Poisson arrivals at `rate` per second for `duration` seconds, each drawn from the mix;
    request ids `<prefix>-000000`, `<prefix>-000001`, ..."""
    rng = random.Random(seed)
    weights = [getattr(mix, k) for k in KINDS]
    long_prompts = [" ".join([p, LONG_PARAGRAPH * mix.long_repeats]) for p in SHORT_PROMPTS[:3]]
    shots, t = [], rng.expovariate(rate)
    while t < duration:
        kind = rng.choices(KINDS, weights)[0]
        good = kind in ("chat", "completion")
        long = good and rng.random() < mix.long
        shots.append(
            Shot(
                request_id=f"{prefix}-{len(shots):06d}",
                at=t,
                kind=kind,
                stream=good and rng.random() < mix.stream,
                long=long,
                n=2 if good and rng.random() < mix.n else 1,
                prompt=rng.choice(long_prompts if long else SHORT_PROMPTS),
                max_tokens=mix.long_tokens if long else mix.short_tokens,
            )
        )
        t += rng.expovariate(rate)
    return shots


# -- one request ---------------------------------------------------------------------------------


@dataclass
class Result:
    """What the client saw of one shot. Times are seconds; `sent` is after the start of the run."""

    request_id: str
    kind: str
    stream: bool
    n: int
    sent: float = 0.0
    late: float = 0.0  # how long after its planned time it was sent (the client's own lag)
    status: int | None = None  # None: no response (a transport error)
    code: str | None = None  # the error envelope's code, a stream's error event's, or the exception
    ttft: float | None = None
    e2e: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    done: bool = False  # a stream ended with [DONE]

    @property
    def complete(self) -> bool:
        """The whole response arrived: a body, or a stream through [DONE] with no error event."""
        if self.status is None:
            return False
        return not self.stream or self.status != 200 or (self.done and self.code is None)

    @property
    def delivered(self) -> bool:
        return self.status == 200 and self.complete

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first, of a single-choice stream."""
        if not (self.stream and self.n == 1 and self.ttft is not None and self.e2e is not None):
            return None
        tokens = self.completion_tokens or 0
        return (self.e2e - self.ttft) / (tokens - 1) if tokens > 1 else None


def _error_code(payload: object) -> str:
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        return str(payload["error"].get("code") or payload["error"].get("type") or "error")
    return "error"


def _has_text(chunk: dict) -> bool:
    for choice in chunk.get("choices") or []:
        if choice.get("text") or (choice.get("delta") or {}).get("content"):
            return True
    return False


def _usage(res: Result, usage: dict | None) -> None:
    if usage:
        res.prompt_tokens = usage.get("prompt_tokens")
        res.completion_tokens = usage.get("completion_tokens")


async def _read_stream(r: httpx.Response, res: Result, t0: float) -> None:
    async for line in r.aiter_lines():
        if line == "data: [DONE]":
            res.done = True
            break
        if not line.startswith("data: {"):
            continue
        chunk = json.loads(line[6:])
        if "error" in chunk:
            res.code = _error_code(chunk)
        elif res.ttft is None and _has_text(chunk):
            res.ttft = time.perf_counter() - t0
        _usage(res, chunk.get("usage"))


async def fire(client: httpx.AsyncClient, shot: Shot, key: str, model: str) -> Result:
    """Send one shot and time it; never raises for what the network or the server does."""
    res = Result(shot.request_id, shot.kind, shot.stream, shot.n)
    headers = {"X-Request-Id": shot.request_id, "Authorization": f"Bearer {key}"}
    if shot.kind == "bad_key":
        headers["Authorization"] = f"Bearer {fake_key()}"
        headers["X-Forwarded-For"] = ATTACKER
    t0 = time.perf_counter()
    try:
        async with client.stream("POST", shot.path, json=shot.body(model), headers=headers) as r:
            res.status = r.status_code
            if r.status_code == 200 and shot.stream:
                await _read_stream(r, res, t0)
            else:
                data = json.loads(await r.aread())
                if r.status_code == 200:
                    _usage(res, data.get("usage"))
                else:
                    res.code = _error_code(data)
    except (httpx.HTTPError, ValueError) as exc:  # a dropped connection, a body cut mid-JSON
        res.code = res.code or type(exc).__name__
    res.e2e = time.perf_counter() - t0
    return res


def fake_key() -> str:
    """A key in the issued form that no gateway has ever issued."""
    from stratus.security.keys import generate

    return generate().secret


async def run_load(url: str, key: str, model: str, shots: list[Shot], timeout: float = 300.0) -> list[Result]:
    """Send every shot at its planned time (open loop) and wait for all of them to end."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    async with httpx.AsyncClient(
        base_url=url, timeout=httpx.Timeout(timeout, pool=None), limits=limits
    ) as client:
        loop = asyncio.get_running_loop()
        start = loop.time()

        async def timed(shot: Shot) -> Result:
            sent = loop.time() - start
            res = await fire(client, shot, key, model)
            res.sent, res.late = sent, max(0.0, sent - shot.at)
            return res

        tasks = []
        for shot in shots:
            await asyncio.sleep(max(0.0, start + shot.at - loop.time()))
            tasks.append(asyncio.create_task(timed(shot)))
        return list(await asyncio.gather(*tasks))


# -- processes: RSS and open files ---------------------------------------------------------------


def children(pid: int) -> list[int]:
    found = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found += [int(c) for c in f.read().split()]
    except OSError:  # it ended
        pass
    return found


def descendants(pid: int) -> list[int]:
    out, todo = [], children(pid)
    while todo:
        child = todo.pop()
        out.append(child)
        todo += children(child)
    return out


def role(pid: int) -> str:
    """A child's part, from its command line: the engine, multiprocessing's resource tracker, ..."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "gone"
    if "spawn_main" in cmd:
        return "engine"  # the one multiprocessing child stratus spawns: an engine's step loop
    if "resource_tracker" in cmd:
        return "resource_tracker"
    return Path(cmd.split(" ", 1)[0]).name or "process"


def rss_and_fds(pid: int) -> tuple[float, int] | None:
    """(resident MiB, open file descriptors) of a live process; None once it has ended."""
    try:
        with open(f"/proc/{pid}/status") as f:
            rss_kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return rss_kib / 1024, len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, StopIteration):
        return None


class Sampler:
    """Samples every process under each watched root (the root and its descendants) on a period,
    in a thread of its own so that a busy client event loop does not skew its clock."""

    def __init__(self, roots: dict[str, int], every: float = 1.0):
        self.roots = roots
        self.every = every
        self.t0 = time.monotonic()
        self.series: dict[str, list[tuple[float, float, int]]] = {}  # name -> (t, rss MiB, fds)
        self.pids: dict[str, int] = {}
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="load-sampler", daemon=True)

    def names(self) -> dict[str, int]:
        """Every process now, by a stable name: 'worker-1', 'worker-1/engine', ..."""
        found: dict[str, int] = {}
        for label, pid in self.roots.items():
            found[label] = pid
            for child in descendants(pid):
                name = f"{label}/{role(child)}"
                found[name if name not in found else f"{name}-{child}"] = child
        return found

    def sample(self) -> None:
        t = time.monotonic() - self.t0
        for name, pid in self.names().items():
            got = rss_and_fds(pid)
            if got is None:
                continue
            if self.pids.setdefault(name, pid) != pid:  # replaced (an engine restart): a new series
                name = f"{name}-{pid}"
                self.pids.setdefault(name, pid)
            self.series.setdefault(name, []).append((round(t, 2), round(got[0], 2), got[1]))

    def _loop(self) -> None:
        while not self._halt.is_set():
            started = time.monotonic()
            self.sample()
            self._halt.wait(max(0.0, self.every - (time.monotonic() - started)))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._halt.set()
        self._thread.join(10)
        self.sample()  # one last sample after the load has ended


# -- figures -------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    """The q-quantile (q in [0, 1]), nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def spread(values: list[float]) -> dict:
    """p50/p90/p99 and max in milliseconds."""
    ms = [v * 1000 for v in values]
    out = {f"p{q}": percentile(ms, q / 100) for q in (50, 90, 99)}
    out["max"] = max(ms) if ms else None
    out["count"] = len(ms)
    return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in out.items()}


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (t seconds, value) points, per minute."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    return 60 * sum((t - mt) * (v - mv) for t, v in points) / var


def drift(series: list[tuple[float, float, int]], steady_from: float, until: float | None = None) -> dict:
    """RSS and fds of one process over the steady state: its first and last sample, the most,
    and the least-squares slope per minute."""
    window = [s for s in series if s[0] >= steady_from and (until is None or s[0] <= until)]
    if not window:
        return {"samples": 0}
    rss = [(t, r) for t, r, _ in window]
    fds = [(t, float(f)) for t, _, f in window]
    return {
        "samples": len(window),
        "from_s": window[0][0],
        "to_s": window[-1][0],
        "rss_mib_start": window[0][1],
        "rss_mib_end": window[-1][1],
        "rss_mib_max": max(r for _, r in rss),
        "rss_mib_per_min": round(slope_per_minute(rss), 3),
        "fds_start": window[0][2],
        "fds_end": window[-1][2],
        "fds_max": max(int(f) for _, f in fds),
        "fds_per_min": round(slope_per_minute(fds), 3),
    }


def _counts(values) -> dict[str, int]:
    return {str(k): v for k, v in sorted(Counter(values).items(), key=str)}


def unexpected(results: list[Result]) -> list[Result]:
    """Requests whose status is not the one their kind expects, and 200s that did not complete."""
    return [r for r in results if r.status not in EXPECTED[r.kind] or (r.status == 200 and not r.complete)]


def summarize(results: list[Result], wall: float) -> dict:
    """Throughput, latencies and errors of one run (`wall`: first send to last end, seconds)."""
    ok = [r for r in results if r.delivered]
    tokens = sum(r.completion_tokens or 0 for r in ok)
    by_kind = {}
    for kind in ("chat", "completion"):
        for stream in (False, True):
            e2e = [r.e2e for r in ok if r.kind == kind and r.stream == stream and r.e2e is not None]
            by_kind[kind + ("-stream" if stream else "")] = spread(e2e)
    odd = unexpected(results)
    return {
        "requests": len(results),
        "delivered": len(ok),
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(ok) / wall, 3) if wall else None,
        "output_tokens": tokens,
        "output_tokens_per_s": round(tokens / wall, 1) if wall else None,
        "ttft_ms": spread([r.ttft for r in ok if r.ttft is not None]),
        "tpot_ms": spread([t for r in ok if (t := r.tpot) is not None]),
        "e2e_ms": spread([r.e2e for r in ok if r.e2e is not None]),
        "e2e_ms_by_kind": by_kind,
        "send_lag_ms": spread([r.late for r in results]),
        "by_kind": _counts(r.kind for r in results),
        "by_status": _counts(r.status for r in results),
        "by_code": _counts(f"{r.status} {r.code}" for r in results if r.code),
        "unexpected": [(r.request_id, r.kind, r.status, r.code) for r in odd[:50]],
        "unexpected_count": len(odd),
    }


# -- the deployment ------------------------------------------------------------------------------


def default_model() -> Path:
    from stratus.config import demo_model_path

    demo = demo_model_path()
    if (demo / "config.json").is_file():
        return demo
    sys.path.insert(0, str(REPO / "bench"))
    import common

    return common.random_llama("load-small-llama", SMALL_LLAMA)


class Deployment:
    """A gateway with access control and metering, and `workers` worker replicas, on loopback.

    with Deployment(model_path, data_dir, workers=2) as d:
        d.url, d.key, d.roots()          # the member key runs the load; roots: label -> pid
    d.gateway_exit                       # SIGTERM's exit code (0: drained cleanly)
    """

    def __init__(
        self,
        model_path: str | Path,
        data_dir: str | Path,
        name: str = "demo",
        workers: int = 2,
        local: bool = False,
        serve_args: tuple[str, ...] = (),
        worker_args: tuple[str, ...] = (),
    ):
        if workers < 1 and not local:
            raise ValueError("a deployment needs a worker or --local")
        self.model_path, self.data_dir, self.name = str(model_path), Path(data_dir), name
        self.workers_wanted, self.local = workers, local
        self.serve_args, self.worker_args = serve_args, worker_args
        self.admin_key = fake_key()
        self.cluster_secret = secrets.token_urlsafe(32)
        self.gateway: ServeProcess | None = None
        self.workers: list[WorkerProcess] = []
        self.key = ""
        self.gateway_exit: int | None = None

    @property
    def url(self) -> str:
        assert self.gateway is not None
        return self.gateway.url

    def start(self) -> Deployment:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {"STRATUS_ADMIN_KEY": self.admin_key, "STRATUS_CLUSTER_SECRET": self.cluster_secret}
        args = ["--data-dir", str(self.data_dir), "--metering", "--forwarded-allow-ips", "127.0.0.1"]
        args += ["--log-level", "warning", "--drain-timeout", "60"]
        args += ["--model", f"{self.name}={self.model_path}"] if self.local else ["--no-local-models"]
        self.gateway = ServeProcess(*args, *self.serve_args, env=env)
        for _ in range(self.workers_wanted):
            wargs = ("--gateway", self.url, "--heartbeat-interval", "1", "--log-level", "warning")
            self.workers.append(
                WorkerProcess(self.name, self.model_path, self.cluster_secret, *wargs, *self.worker_args)
            )
        for w in self.workers:
            w.wait_serving()
        self._wait_for_replicas(self.workers_wanted + int(self.local))
        self.gateway.wait_ready()
        self.key = self._member_key()
        return self

    def _admin(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, timeout=60, headers={"Authorization": f"Bearer {self.admin_key}"}
        )

    def _wait_for_replicas(self, count: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        with self._admin() as c:
            while time.monotonic() < deadline:
                models = c.get("/admin/cluster").json().get("models", [])
                up = [
                    r for m in models if m["model"] == self.name for r in m["replicas"] if r["state"] == "up"
                ]
                if len(up) >= count:
                    return
                time.sleep(0.2)
        raise TimeoutError(f"{count} replicas of {self.name} did not come up")

    def _member_key(self) -> str:
        """A member of team `load`, which is granted the model and has (generous) limits."""
        with self._admin() as c:
            for method, path, body in [
                ("POST", "/admin/teams", {"name": LOAD_TEAM}),
                ("PUT", f"/admin/teams/{LOAD_TEAM}/models/{self.name}", None),
                ("POST", "/admin/users", {"name": "loader", "team": LOAD_TEAM}),
                (
                    "PUT",
                    "/admin/limits",
                    {"scope": "team", "subject": LOAD_TEAM, "rpm": 1_000_000, "tpm": 1_000_000_000},
                ),
            ]:
                r = c.request(method, path, json=body)
                r.raise_for_status()
            r = c.post("/admin/keys", json={"name": "load", "user": "loader", "team": LOAD_TEAM})
            r.raise_for_status()
            return r.json()["secret"]

    def roots(self) -> dict[str, int]:
        assert self.gateway is not None
        found = {"gateway": self.gateway.proc.pid}
        found.update({f"worker-{i + 1}": w.proc.pid for i, w in enumerate(self.workers)})
        return found

    def stop(self) -> None:
        """SIGTERM the gateway (it drains and closes its audit writer and ledger), then the workers."""
        if self.gateway is not None and self.gateway.proc.poll() is None:
            self.gateway.terminate()
            try:
                self.gateway_exit = self.gateway.wait(90)
            except Exception:
                self.gateway.kill()
        if self.gateway is not None:
            self.gateway.kill()  # a no-op once it has exited; records its output
        for w in self.workers:
            if w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)
                try:
                    w.proc.wait(60)
                except Exception:
                    pass
            w.stop()

    def __enter__(self) -> Deployment:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


# -- one run -------------------------------------------------------------------------------------


@dataclass
class Run:
    results: list[Result]
    wall: float
    samples: dict[str, list[tuple[float, float, int]]]
    load_from: float  # the sampler's clock when the load started
    load_to: float
    summary: dict = field(default_factory=dict)
    processes: dict[str, dict] = field(default_factory=dict)


def measure(
    url: str,
    key: str,
    model: str,
    shots: list[Shot],
    roots: dict[str, int],
    warmup: float,
    sample_every: float = 1.0,
    settle: float = 0.0,
) -> Run:
    """Run the shots against `url` while sampling `roots`; `settle` s of samples follow the load.
    The steady state runs from `warmup` s after the load began to its end."""
    with Sampler(roots, sample_every) as sampler:
        started = time.monotonic()
        load_from = started - sampler.t0
        results = asyncio.run(run_load(url, key, model, shots))
        wall = time.monotonic() - started
        time.sleep(settle)
    run = Run(results, wall, sampler.series, load_from, load_from + wall)
    run.summary = summarize(results, wall)
    steady = load_from + warmup
    run.processes = {name: drift(series, steady, run.load_to) for name, series in sampler.series.items()}
    for name, series in sampler.series.items():  # idle again: the last sample, after `settle`
        if run.processes[name].get("samples"):
            run.processes[name].update(rss_mib_after=series[-1][1], fds_after=series[-1][2])
    return run


# -- the report ----------------------------------------------------------------------------------


def _fmt(spread_ms: dict) -> str:
    if not spread_ms.get("count"):
        return "-"
    return f"{spread_ms['p50']:.1f} / {spread_ms['p90']:.1f} / {spread_ms['p99']:.1f}"


def print_report(run: Run, args: dict) -> None:
    s = run.summary
    print(f"\n{s['requests']} requests in {s['wall_s']} s at {args.get('rate')} req/s offered")
    print(
        f"  delivered {s['delivered']}: {s['requests_per_s']} req/s, {s['output_tokens_per_s']} output tok/s"
    )
    print(f"  by kind   {s['by_kind']}")
    print(f"  by status {s['by_status']}")
    print(f"  by code   {s['by_code']}")
    print(f"  unexpected statuses: {s['unexpected_count']}")
    print("  latency (ms)      p50 / p90 / p99")
    print(f"    TTFT            {_fmt(s['ttft_ms'])}")
    print(f"    TPOT            {_fmt(s['tpot_ms'])}")
    print(f"    end to end      {_fmt(s['e2e_ms'])}")
    for kind, sp in s["e2e_ms_by_kind"].items():
        print(f"      {kind:<18}{_fmt(sp)}   ({sp['count']})")
    print(f"    send lag        {_fmt(s['send_lag_ms'])}   (the client's own lateness)")
    print("\n  per process: the steady state's first -> last sample (max, least-squares slope per minute),")
    print("  then the last sample, idle after the load")
    print(f"  {'process':<28} {'RSS MiB':<32}{'idle':>7}  {'open fds':<26}{'idle':>4}")
    for name, d in sorted(run.processes.items()):
        if not d.get("samples"):
            continue
        rss = f"{d['rss_mib_start']:.1f} -> {d['rss_mib_end']:.1f} ({d['rss_mib_max']:.1f}, {d['rss_mib_per_min']:+.2f})"
        fds = f"{d['fds_start']} -> {d['fds_end']} ({d['fds_max']}, {d['fds_per_min']:+.2f})"
        print(f"  {name:<28} {rss:<32}{d['rss_mib_after']:7.1f}  {fds:<26}{d['fds_after']:4d}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of arrivals [60]")
    p.add_argument("--rate", type=float, default=6.0, help="requests per second, Poisson [6]")
    p.add_argument("--mix", default="", help="e.g. chat=5,completion=3,bad_model=0.5,bad_key=0.5,stream=0.5")
    p.add_argument("--warmup", type=float, default=None, help="seconds before the steady state [10%%, >=5]")
    p.add_argument("--sample-every", type=float, default=1.0, help="seconds between samples [1]")
    p.add_argument("--settle", type=float, default=3.0, help="seconds of samples after the load [3]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the report here (with every sample)")
    p.add_argument("--url", help="an existing gateway (else one is started here)")
    p.add_argument("--key", default=os.environ.get("STRATUS_API_KEY"), help="its API key [STRATUS_API_KEY]")
    p.add_argument("--model-name", default="demo", help="the model's name [demo]")
    p.add_argument("--watch-pid", action="append", default=[], metavar="LABEL=PID", help="with --url")
    p.add_argument("--model", type=Path, help="checkpoint directory [models/demo, or a small random Llama]")
    p.add_argument("--workers", type=int, default=2, help="stratus worker replicas [2]")
    p.add_argument("--local", action="store_true", help="also serve the model in the gateway")
    p.add_argument("--num-threads", type=int, default=1, help="PyTorch threads per engine [1]")
    p.add_argument("--data-dir", type=Path, help="the started gateway's data directory [a temporary one]")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO / "bench"))
    import tempfile

    import common

    mix = Mix.parse(args.mix)
    shots = plan(mix, args.rate, args.duration, args.seed)
    warmup = args.warmup if args.warmup is not None else max(5.0, args.duration / 10)
    report: dict = {"benchmark": "load", "machine": common.machine_info(), "mix": asdict(mix)}
    report["args"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "key"}
    print(f"{len(shots)} requests planned over {args.duration} s; machine: {report['machine']}")
    if args.url:
        if not args.key:
            raise SystemExit("--url needs --key (or STRATUS_API_KEY)")
        roots = {label: int(pid) for label, _, pid in (w.partition("=") for w in args.watch_pid)}
        run = measure(
            args.url, args.key, args.model_name, shots, roots, warmup, args.sample_every, args.settle
        )
    else:
        model = args.model or default_model()
        with tempfile.TemporaryDirectory(prefix="stratus-load-") as tmp:
            data_dir = args.data_dir or Path(tmp) / "data"
            threads = ("--num-threads", str(args.num_threads))
            deployment = Deployment(
                model, data_dir, args.model_name, args.workers, args.local, threads, threads
            )
            with deployment as d:
                print(f"deployment up: {d.url}, processes {d.roots()}")
                run = measure(
                    d.url, d.key, args.model_name, shots, d.roots(), warmup, args.sample_every, args.settle
                )
            report["gateway_exit"] = d.gateway_exit
            report["model"] = str(model)
    report.update(summary=run.summary, processes=run.processes, warmup_s=warmup)
    report["load_window_s"] = [round(run.load_from, 2), round(run.load_to, 2)]
    report["samples"] = {name: [list(s) for s in series] for name, series in run.samples.items()}
    report["results"] = [{**asdict(r), "delivered": r.delivered} for r in run.results]
    print_report(run, vars(args))
    if args.json:
        common.write_report(report, args.json)


if __name__ == "__main__":
    main()
