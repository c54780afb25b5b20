"""Bad input over real HTTP: every error is the OpenAI envelope with a status that fits."""

import socket

import pytest

from tests.conftest import TINY_CONTEXT, TINY_MODEL

pytestmark = pytest.mark.timeout(120)

CHAT = "/v1/chat/completions"


def envelope(r, status):
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert "Traceback" not in err["message"]
    return err


def chat(**kw):
    return {"model": TINY_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **kw}


def test_malformed_json(http):
    err = envelope(
        http.post(CHAT, content=b'{"model": "tiny",', headers={"content-type": "application/json"}), 400
    )
    assert "not valid JSON" in err["message"] and err["type"] == "invalid_request_error"
    err = envelope(http.post(CHAT, content=b"[1, 2]"), 400)
    assert "must be a JSON object" in err["message"]
    envelope(http.post(CHAT, content=b""), 400)


def test_json_with_a_form_content_type_is_accepted(http):
    # `curl -d` sends application/x-www-form-urlencoded; the body is still JSON.
    r = http.post(
        CHAT,
        content=b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}',
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 200, r.text


def test_wrong_types_name_the_field(http):
    err = envelope(http.post(CHAT, json=chat(temperature="hot")), 400)
    assert err["param"] == "temperature" and "temperature" in err["message"]
    err = envelope(http.post(CHAT, json=chat(messages=[{"role": "user", "content": 5}])), 400)
    assert err["param"] == "messages.0.content"
    err = envelope(http.post("/v1/completions", json={"model": TINY_MODEL}), 400)
    assert err["param"] == "prompt" and "Missing required parameter" in err["message"]


def test_unsupported_values(http):
    err = envelope(http.post(CHAT, json=chat(tools=[{"type": "function", "function": {"name": "f"}}])), 400)
    assert err["param"] == "tools" and "does not render tools" in err["message"]  # its template takes none
    err = envelope(http.post(CHAT, json=chat(n=100)), 400)
    assert err["param"] == "n"
    err = envelope(http.post("/v1/completions", json={"model": TINY_MODEL, "prompt": [10**6]}), 400)
    assert err["param"] == "prompt" and "out of range" in err["message"]


def test_unknown_model_is_404(http):
    err = envelope(http.post(CHAT, json=chat(model="gpt-9")), 404)
    assert err["code"] == "model_not_found" and err["param"] == "model"
    assert "tiny" in err["message"]  # says what exists
    envelope(http.get("/v1/models/gpt-9"), 404)
    assert 'model="gpt-9"' not in http.get("/metrics").text  # client strings never become labels


def test_prompt_over_the_context_window_says_both_lengths(http):
    long_prompt = "hello world " * TINY_CONTEXT
    err = envelope(http.post("/v1/completions", json={"model": TINY_MODEL, "prompt": long_prompt}), 400)
    assert err["code"] == "context_length_exceeded" and err["param"] == "prompt"
    assert f"maximum context length is {TINY_CONTEXT} tokens" in err["message"]
    n_tokens = http.post("/tokenize", json={"model": TINY_MODEL, "prompt": long_prompt}).json()["count"]
    assert f"the prompt is {n_tokens} tokens" in err["message"]


def test_max_tokens_that_cannot_fit(http):
    err = envelope(http.post(CHAT, json=chat(max_tokens=TINY_CONTEXT)), 400)
    assert err["param"] == "max_tokens" and err["code"] == "context_length_exceeded"
    assert f"{TINY_CONTEXT} for the completion" in err["message"]
    err = envelope(http.post(CHAT, json=chat(max_tokens=None, max_completion_tokens=10**6)), 400)
    assert err["param"] == "max_completion_tokens"


def test_body_over_the_limit_is_413(http, api_server):
    limit = api_server.app.state.stratus.settings.max_body_bytes
    big = {"model": TINY_MODEL, "prompt": "x" * (limit + 10)}
    err = envelope(http.post("/v1/completions", json=big), 413)
    assert str(limit) in err["message"] and err["code"] == "request_too_large"

    def chunks():  # no Content-Length: the limit must hold for what actually arrives
        yield b'{"model": "tiny", "prompt": "'
        for _ in range(limit // 4096 + 2):
            yield b"y" * 4096
        yield b'"}'

    envelope(http.post("/v1/completions", content=chunks()), 413)


def test_lying_content_length_is_refused_without_reading_it(api_server, admin_key):
    """Headers first: an unknown caller gets 401 and a known one 413, and neither waits for (or
    holds) a body it announced as 1 GB."""

    def head_of(authorization: bytes) -> str:
        with socket.create_connection(("127.0.0.1", api_server.port), timeout=10) as s:
            s.sendall(
                b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + authorization
                + b"Content-Length: 999999999\r\n\r\n{"
            )
            return s.recv(4096).decode()

    assert head_of(b"").startswith("HTTP/1.1 401")
    assert head_of(b"Authorization: Bearer " + admin_key.encode() + b"\r\n").startswith("HTTP/1.1 413")


def test_unknown_route_and_method(http):
    err = envelope(http.get("/v2/nothing"), 404)
    assert "/v2/nothing" in err["message"]
    envelope(http.get(CHAT), 405)


def test_errors_change_nothing(http):
    before = http.get("/metrics").text
    http.post(CHAT, json=chat(temperature=9))
    after = http.get("/metrics").text

    def tokens(text):
        return [ln for ln in text.splitlines() if ln.startswith("stratus_generation_tokens_total")]

    assert tokens(before) == tokens(after)


def test_oversized_headers_are_refused_with_431(http):
    r = http.get("/v1/models", headers={"Authorization": "Bearer " + "x" * (1024 * 1024)})
    err = envelope(r, 431)
    assert err["code"] == "headers_too_large"
    r = http.get("/v1/models", headers={f"x-pad-{i}": "y" * 4000 for i in range(10)})
    envelope(r, 431)
