"""`stratus serve` as users run it: a process that prints how to call it and drains on SIGTERM."""

import json
import threading

import httpx
import pytest

from tests.live_server import ServeProcess

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]


def test_serve_prints_banner_and_drains_on_sigterm(tiny_checkpoint, tmp_path):
    server = ServeProcess(
        "--model",
        f"tiny={tiny_checkpoint}",
        "--drain-timeout",
        "60",
        "--data-dir",
        str(tmp_path / "data"),
        "--no-auth",  # loopback, and not about access control
        env={"STRATUS_MAX_WAITING": "100"},
    )
    try:
        server.wait_ready()
        assert f"listening on {server.url}" in server.output
        assert "/v1/chat/completions" in server.output and "OpenAI(base_url=" in server.output

        max_tokens = 120
        body = {"model": "tiny", "prompt": "drain", "max_tokens": max_tokens, "ignore_eos": True}
        sigterm_sent = threading.Event()
        started = threading.Barrier(4)  # 3 streams have their first chunk, and the test thread
        outcomes: dict[str, object] = {}

        def stream(i):
            texts, done, after = [], False, False
            try:
                with (
                    httpx.Client(base_url=server.url, timeout=120) as c,
                    c.stream("POST", "/v1/completions", json={**body, "stream": True}) as r,
                ):
                    for n, line in enumerate(r.iter_lines()):
                        if n == 0:
                            started.wait(60)
                        if sigterm_sent.is_set():
                            after = True
                        if line == "data: [DONE]":
                            done = True
                        elif line.startswith("data: "):
                            texts.append(json.loads(line[6:])["choices"][0])
                outcomes[f"s{i}"] = (done, texts[-1]["finish_reason"], after)
            except Exception as exc:  # recorded, so the assertion below shows it
                outcomes[f"s{i}"] = exc

        def plain(i):
            try:
                with httpx.Client(base_url=server.url, timeout=120) as c:
                    r = c.post("/v1/completions", json=body)
                outcomes[f"p{i}"] = (r.status_code, r.json()["usage"]["completion_tokens"])
            except Exception as exc:
                outcomes[f"p{i}"] = exc

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(3)]
        threads += [threading.Thread(target=plain, args=(0,))]
        for t in threads:
            t.start()
        started.wait(60)
        server.terminate()
        sigterm_sent.set()
        for t in threads:
            t.join(120)
        assert server.wait(60) == 0, server.output
    finally:
        server.kill()

    streams = [outcomes[f"s{i}"] for i in range(3)]
    assert all(s[:2] == (True, "length") for s in streams), outcomes
    assert any(s[2] for s in streams), "no stream was still running when SIGTERM arrived"
    assert outcomes["p0"] == (200, max_tokens), outcomes
    assert "stratus: stopped" in server.output
