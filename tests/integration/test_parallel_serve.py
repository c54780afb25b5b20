"""`stratus serve` with a model split over ranks (--model-parallel): the same answers over HTTP
as the one-process replica, its layout in /admin/cluster, and a rank killed mid-stream ends the
stream cleanly, the replica comes back, and no process is left behind."""

import json
import os
import signal
import time

import httpx
import pytest

from tests.live_server import ServeProcess

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def layout(c: httpx.Client, model: str) -> dict:
    models = {m["model"]: m for m in c.get("/admin/cluster").json()["models"]}
    return models[model]["replicas"][0]["layout"]


def test_tensor_parallel_replica_over_http(tiny_checkpoint, tmp_path):
    server = ServeProcess(
        "--model",
        f"one={tiny_checkpoint}",
        "--model",
        f"two={tiny_checkpoint}",
        "--model-parallel",
        "two=2x1",
        "--parallel-timeout-s",
        "5",
        "--kv-cache-memory-mb",
        "8",
        "--data-dir",
        str(tmp_path / "data"),
        "--no-auth",  # loopback, and not about access control
    )
    try:
        server.wait_ready(180)
        with httpx.Client(base_url=server.url, timeout=120) as c:
            answers = {}
            for model in ("one", "two"):
                body = {
                    "model": model,
                    "prompt": "Beautiful is better than",
                    "max_tokens": 64,
                    "temperature": 0,
                    "logprobs": 1,
                }
                r = c.post("/v1/completions", json=body)
                assert r.status_code == 200, r.text
                choice = r.json()["choices"][0]
                answers[model] = (choice["text"], choice["logprobs"]["tokens"])
            assert answers["one"] == answers["two"] and len(answers["two"][1]) > 0

            one, two = layout(c, "one"), layout(c, "two")
            assert (one["tensor_parallel_size"], len(one["ranks"])) == (1, 1)
            assert (two["tensor_parallel_size"], two["pipeline_parallel_size"]) == (2, 1)
            ranks = two["ranks"]
            assert [r["tp_rank"] for r in ranks] == [0, 1] and ranks[0]["pid"] != ranks[1]["pid"]
            whole = one["ranks"][0]["weight_mib"]
            assert all(0.4 * whole < r["weight_mib"] < 0.6 * whole for r in ranks)
            old = [r["pid"] for r in ranks]

            # A rank killed mid-stream: the stream ends with an error event, not a hang.
            body = {"model": "two", "prompt": "hello", "max_tokens": 480, "stream": True, "ignore_eos": True}
            events, started = [], None
            with c.stream("POST", "/v1/completions", json=body) as r:
                assert r.status_code == 200
                for line in r.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    events.append(json.loads(line[6:]))
                    if len(events) == 3:
                        os.kill(old[1], signal.SIGKILL)
                        started = time.monotonic()
            assert started is not None and time.monotonic() - started < 30
            assert "error" in events[-1], events[-1]
            deadline = time.monotonic() + 30
            while any(alive(p) for p in old):
                assert time.monotonic() < deadline, "a rank outlived its replica"
                time.sleep(0.1)
            # The engine's restart brings the replica back with fresh ranks. (/ready alone may
            # answer 200 before the gateway's probe has seen the replica go down.)
            deadline, new = time.monotonic() + 180, old
            while set(new) & set(old) or c.get("/ready").status_code != 200:
                assert time.monotonic() < deadline and server.proc.poll() is None
                time.sleep(0.2)
                current = layout(c, "two")
                new = [r["pid"] for r in current["ranks"]] if current else old
            assert all(alive(p) for p in new)
            again = c.post("/v1/completions", json={"model": "two", "prompt": "hello", "max_tokens": 4})
            assert again.status_code == 200, again.text
        server.terminate()
        assert server.wait(60) == 0, server.output
        assert not any(alive(p) for p in new)
    finally:
        server.kill()
