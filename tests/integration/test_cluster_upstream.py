"""An OpenAI-compatible upstream behind the gateway: a second `stratus serve` process on loopback.

The upstream serves the tiny checkpoint as "tiny" with an admin key of its own; the gateway (in
this process, access control on) has no model of its own and gets the upstream registered by an
admin as model "remote". The official openai client then uses "remote" through the gateway.
"""

from __future__ import annotations

import time

import httpx
import orjson
import pytest
from click.testing import CliRunner
from openai import OpenAI

from stratus.cli.main import main
from stratus.config import Settings
from stratus.security.keys import generate
from tests import issued
from tests.live_server import LiveServer, ServeProcess

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

CHAT = {
    "messages": [{"role": "user", "content": "Say something about foxes"}],
    "max_tokens": 12,
    "temperature": 0,
}


@pytest.fixture(scope="module")
def upstream(tiny_checkpoint, tmp_path_factory):
    key = issued.record(generate().secret)
    data = issued.data_dir_of(tmp_path_factory.mktemp("upstream-data"))
    server = ServeProcess(
        "--model", f"tiny={tiny_checkpoint}", "--data-dir", str(data), env={"STRATUS_ADMIN_KEY": key}
    )
    try:
        server.wait_ready()
        yield server, key
    finally:
        server.terminate()  # SIGTERM stops its engine process too; a bare kill -9 would orphan it
        server.wait(60)
        server.kill()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, admin_key):
    from stratus.api import create_app
    from stratus.api.auth import build_access
    from stratus.security.bootstrap import bootstrap
    from stratus.security.stage import IdentityStage

    data = issued.data_dir_of(tmp_path_factory.mktemp("upstream-gw"))
    settings = Settings(data_dir=str(data), local_models=False)  # "remote" lives upstream only
    access = build_access(settings)
    bootstrap(access.store, admin_key)
    app = create_app(settings, identity=IdentityStage(access))
    server = LiveServer(app).start()
    try:
        yield server, data
    finally:
        server.stop()


def test_upstream_behind_the_gateway(upstream, gateway, admin_key):
    up, up_key = upstream
    gw, data = gateway
    admin = {"Authorization": f"Bearer {admin_key}"}
    with httpx.Client(base_url=gw.url, headers=admin, timeout=60) as c:
        # Bad registrations are refused and leave nothing behind.
        for bad in (
            "http://admin:pw@127.0.0.1:1/v1",
            "file:///etc/passwd",
            "ftp://127.0.0.1/v1",
            "127.0.0.1:80",
        ):
            body = {
                "name": "bad",
                "model": "remote",
                "base_url": bad,
                "upstream_model": "tiny",
                "api_key": up_key,
            }
            r = c.post("/admin/upstreams", json=body)
            assert r.status_code == 400 and r.json()["error"]["param"] == "base_url", r.text
        assert c.get("/admin/upstreams").json()["data"] == []
        body = {
            "name": "local-stratus",
            "model": "remote",
            "base_url": up.url + "/v1",
            "upstream_model": "tiny",
        }
        r = c.post("/admin/upstreams", json={**body, "api_key": up_key})
        assert r.status_code == 201, r.text
        assert up_key not in r.text
        listed = c.get("/admin/upstreams").json()["data"]
        assert [u["name"] for u in listed] == ["local-stratus"] and up_key not in str(listed)
        assert c.post("/admin/upstreams", json={**body, "api_key": up_key}).status_code == 409

    client = OpenAI(base_url=gw.url + "/v1", api_key=admin_key, max_retries=0, timeout=60)
    assert "remote" in [m.id for m in client.models.list()]
    assert client.models.retrieve("remote").owned_by == "upstream"
    direct = OpenAI(base_url=up.url + "/v1", api_key=up_key, max_retries=0)
    expected = direct.chat.completions.create(model="tiny", **CHAT)
    client = OpenAI(base_url=gw.url + "/v1", api_key=admin_key, max_retries=0, timeout=60)
    got = client.chat.completions.create(model="remote", **CHAT)
    assert got.model == "remote"
    assert got.choices[0].message.content == expected.choices[0].message.content
    assert got.usage.completion_tokens == expected.usage.completion_tokens

    # Streaming passes through; the usage chunk comes only when asked for.
    chunks = list(client.chat.completions.create(model="remote", stream=True, **CHAT))
    assert (
        "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        == got.choices[0].message.content
    )
    assert all(ch.usage is None for ch in chunks)
    chunks = list(
        client.chat.completions.create(
            model="remote", stream=True, stream_options={"include_usage": True}, **CHAT
        )
    )
    assert chunks[-1].usage.completion_tokens == got.usage.completion_tokens

    # Completions too.
    text = client.completions.create(model="remote", prompt="The quick brown", max_tokens=5, temperature=0)
    assert (
        text.choices[0].text
        == direct.completions.create(model="tiny", prompt="The quick brown", max_tokens=5, temperature=0)
        .choices[0]
        .text
    )

    # (A URL supplied by the client is never used: test_client_urls_never_reach_the_upstream.)

    # What the upstream refuses (here: more tokens than its context window) is the client's 400.
    too_long = {"model": "remote", **CHAT, "max_tokens": 100_000}
    r = httpx.post(gw.url + "/v1/chat/completions", json=too_long, headers=admin, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "upstream_rejected", r.text
    assert "context" in r.json()["error"]["message"]

    # The gateway charged exactly the usage the upstream reported (three chats, a completion, and
    # the refused request at zero tokens).
    want = {
        "requests": 5,
        "prompt_tokens": 3 * got.usage.prompt_tokens + text.usage.prompt_tokens,
        "completion_tokens": 3 * got.usage.completion_tokens + text.usage.completion_tokens,
    }

    def charged() -> dict:
        r = httpx.get(gw.url + "/admin/usage", params={"by": "model"}, headers=admin, timeout=30)
        row = next((row for row in r.json()["data"] if row["model"] == "remote"), {})
        return {k: row.get(k) for k in want}

    deadline = time.monotonic() + 30
    while charged() != want and time.monotonic() < deadline:
        time.sleep(0.2)
    assert charged() == want

    # The key is in the store only encrypted.
    for file in data.rglob("*"):
        if file.is_file():
            assert up_key.encode() not in file.read_bytes(), file

    # Removed: the model is gone, and so is its stored key.
    with httpx.Client(base_url=gw.url, headers=admin, timeout=60) as c:
        assert c.delete("/admin/upstreams/local-stratus").status_code == 200
        assert c.delete("/admin/upstreams/local-stratus").status_code == 404
    r = httpx.post(
        gw.url + "/v1/chat/completions", json={"model": "remote", **CHAT}, headers=admin, timeout=30
    )
    assert r.status_code == 404


def test_an_unreachable_upstream_is_a_503_and_the_stream_is_never_started(gateway, admin_key):
    gw, _ = gateway
    admin = {"Authorization": f"Bearer {admin_key}"}
    with httpx.Client(base_url=gw.url, headers=admin, timeout=60) as c:
        body = {
            "name": "dead",
            "model": "dead-model",
            "base_url": "http://127.0.0.1:9/v1",
            "upstream_model": "x",
        }
        assert c.post("/admin/upstreams", json=body).status_code == 201
        try:
            for stream in (False, True):
                r = c.post("/v1/chat/completions", json={"model": "dead-model", "stream": stream, **CHAT})
                assert r.status_code == 503, r.text
                assert r.json()["error"]["code"] == "upstream_unavailable"
        finally:
            c.delete("/admin/upstreams/dead")


def test_upstreams_cli(tmp_path):
    data = str(issued.data_dir_of(tmp_path))
    key = issued.record("upstream-key-" + generate().secret)
    runner = CliRunner()
    args = ["upstreams", "add", "vllm-a", "--model", "llama", "--base-url", "http://10.0.0.7:8000/v1"]
    args += ["--upstream-model", "meta-llama/Llama-3.1-8B", "--data-dir", data]
    r = runner.invoke(main, args, input=key)
    assert r.exit_code == 0, r.output
    assert key not in r.output
    r = runner.invoke(main, ["upstreams", "list", "--data-dir", data])
    assert "vllm-a" in r.output and key not in r.output
    r = runner.invoke(main, ["secrets", "rotate-master-key", "--data-dir", data])
    assert r.exit_code == 0 and "1 re-encrypted" in r.output, r.output  # secrets rotate covers it
    bad = runner.invoke(main, [*args[:6], "http://u:p@10.0.0.7/v1", *args[7:]], input=key)
    assert bad.exit_code != 0 and "credentials" in bad.output
    for file in tmp_path.rglob("*"):
        if file.is_file():
            assert key.encode() not in file.read_bytes()
    assert runner.invoke(main, ["upstreams", "remove", "vllm-a", "--data-dir", data]).exit_code == 0
    assert "vllm-a" not in runner.invoke(main, ["upstreams", "list", "--data-dir", data]).output


def test_a_dead_upstream_is_skipped_before_the_first_byte(upstream, gateway, admin_key):
    up, up_key = upstream
    gw, _ = gateway
    admin = {"Authorization": f"Bearer {admin_key}"}
    live = {
        "name": "alive",
        "model": "twin",
        "base_url": up.url + "/v1",
        "upstream_model": "tiny",
        "api_key": up_key,
    }
    dead = {"name": "gone", "model": "twin", "base_url": "http://127.0.0.1:9/v1", "upstream_model": "tiny"}
    with httpx.Client(base_url=gw.url, headers=admin, timeout=60) as c:
        assert c.post("/admin/upstreams", json=live).status_code == 201
        assert c.post("/admin/upstreams", json=dead).status_code == 201
        try:
            for _ in range(6):  # whichever the router picks first, every request is answered
                r = c.post("/v1/chat/completions", json={"model": "twin", **CHAT})
                assert r.status_code == 200, r.text
        finally:
            c.delete("/admin/upstreams/alive")
            c.delete("/admin/upstreams/gone")


def test_an_upstream_dying_mid_stream_ends_the_stream_with_an_error_event(
    gateway, admin_key, tmp_path, tiny_checkpoint
):
    gw, _ = gateway
    key = issued.record(generate().secret)
    data = issued.data_dir_of(tmp_path)
    # One process (engine in a thread), so kill -9 takes all of it down, as a lost machine would;
    # 40 tokens/s, so the stream is surely still running when it dies.
    fragile = ServeProcess(
        "--model",
        f"tiny={tiny_checkpoint}",
        "--data-dir",
        str(data),
        "--engine-isolation",
        "thread",
        "--max-tokens-per-second",
        "40",
        env={"STRATUS_ADMIN_KEY": key},
    )
    admin = {"Authorization": f"Bearer {admin_key}"}
    try:
        fragile.wait_ready()
        body = {
            "name": "fragile",
            "model": "fragile",
            "base_url": fragile.url + "/v1",
            "upstream_model": "tiny",
        }
        with httpx.Client(base_url=gw.url, headers=admin, timeout=60) as c:
            assert c.post("/admin/upstreams", json={**body, "api_key": key}).status_code == 201
            request = {
                "model": "fragile",
                "stream": True,
                "max_tokens": 400,
                "temperature": 0,
                "ignore_eos": True,
            }
            request["messages"] = CHAT["messages"]
            events = []
            with c.stream("POST", "/v1/chat/completions", json=request) as r:
                assert r.status_code == 200
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        events.append(line[6:])
                        if len(events) == 3:
                            fragile.proc.kill()  # kill -9 mid-stream
            assert events[-1] == "[DONE]"
            error = orjson.loads(events[-2])["error"]
            assert error["code"] == "upstream_failed_midstream"
            assert "cannot be resumed" in error["message"]
            assert len(events) < 400  # it really was cut short
            c.delete("/admin/upstreams/fragile")
    finally:
        fragile.kill()


CANNED_ANSWER = {  # what a recording upstream answers every chat request with
    "id": "c1",
    "object": "chat.completion",
    "created": 0,
    "model": "x",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


def test_client_urls_never_reach_the_upstream(gateway, admin_key):
    """The upstream is a recording HTTP server: it is called at the registered URL only, and the
    fields with which some servers let a request pick another backend are not passed on."""
    from tests.recording_server import RecordingServer

    gw, _ = gateway
    admin = {"Authorization": f"Bearer {admin_key}"}
    with (
        RecordingServer(lambda _r: (200, "application/json", orjson.dumps(CANNED_ANSWER))) as registered,
        RecordingServer(lambda _r: (200, "application/json", orjson.dumps(CANNED_ANSWER))) as elsewhere,
        httpx.Client(base_url=gw.url, headers=admin, timeout=60) as c,
    ):
        body = {"name": "rec", "model": "recorded", "base_url": registered.url + "/v1", "upstream_model": "u"}
        assert c.post("/admin/upstreams", json=body).status_code == 201
        try:
            client = OpenAI(base_url=gw.url + "/v1", api_key=admin_key, max_retries=0, timeout=60)
            sneaky = {
                "base_url": elsewhere.url,
                "url": elsewhere.url + "/v1",
                "api_base": elsewhere.url,
                "user_config": {"model_list": [{"litellm_params": {"api_base": elsewhere.url}}]},
                "aws_secret_access_key": "x",
                "vertex_credentials": "x",
                "Azure_AD_Token": "x",
            }
            got = client.chat.completions.create(model="recorded", extra_body=sneaky, **CHAT)
            assert got.choices[0].message.content == "ok"
        finally:
            c.delete("/admin/upstreams/rec")
    assert elsewhere.requests == []
    assert [(r.method, r.path) for r in registered.requests] == [("POST", "/v1/chat/completions")]
    sent = registered.requests[0].json()
    assert not set(sneaky) & set(sent) and elsewhere.url not in registered.requests[0].body.decode()
    assert sent["model"] == "u" and sent["messages"] == CHAT["messages"]


def test_a_request_without_max_tokens_forwards_the_reserved_cap(gateway, admin_key):
    """Admission reserves a default cap for a request that names none; the upstream must be held
    to it, or a tokens-per-minute limit is overspent by whatever the upstream chooses."""
    from stratus.api.upstream_proxy import DEFAULT_MAX_TOKENS
    from tests.recording_server import RecordingServer

    gw, _ = gateway
    admin = {"Authorization": f"Bearer {admin_key}"}
    with (
        RecordingServer(lambda _r: (200, "application/json", orjson.dumps(CANNED_ANSWER))) as upstream,
        httpx.Client(base_url=gw.url, headers=admin, timeout=60) as c,
    ):
        body = {"name": "capped", "model": "capped", "base_url": upstream.url + "/v1", "upstream_model": "u"}
        assert c.post("/admin/upstreams", json=body).status_code == 201
        try:
            chat = {"model": "capped", "messages": [{"role": "user", "content": "hi"}]}
            assert c.post("/v1/chat/completions", json=chat).status_code == 200
            chat["max_tokens"] = 7
            assert c.post("/v1/chat/completions", json=chat).status_code == 200
        finally:
            c.delete("/admin/upstreams/capped")
    sent = [r.json() for r in upstream.requests]
    assert sent[0]["max_tokens"] == DEFAULT_MAX_TOKENS
    assert sent[1]["max_tokens"] == 7


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
TOOL_TURN = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
        }
    ],
}
SCHEMA_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "w", "strict": True, "schema": {"type": "object", "properties": {}}},
}


def _tool_call_answer(req) -> tuple[int, str, bytes]:
    """An upstream that calls a tool: a JSON answer, or the stream of tool-call deltas."""
    call = {
        "index": 0,
        "id": "call_9",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    if not req.json().get("stream"):
        message = {"role": "assistant", "content": None, "tool_calls": [{**call, "function": {
            "name": "get_weather", "arguments": '{"city": "Paris"}'}}]}  # fmt: skip
        answer = {
            **CANNED_ANSWER,
            "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
        }
        return 200, "application/json", orjson.dumps(answer)
    base = {"id": "c2", "object": "chat.completion.chunk", "created": 0, "model": "x"}
    deltas = [
        {"role": "assistant", "tool_calls": [call]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
    ]
    chunks = [{**base, "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
    chunks.append(
        {**base, "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15}}
    )
    body = b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
    return 200, "text/event-stream", body


def test_tools_and_structured_outputs_pass_through_to_the_upstream(gateway, admin_key):
    """Fields the gateway does not act on reach the upstream as the client sent them (tools, a
    tool turn, tool_choice, a JSON schema, logit_bias, provider extras); its tool calls come back
    unchanged but for the model name, streamed as OpenAI's deltas too."""
    from tests.recording_server import RecordingServer

    gw, _ = gateway
    admin = {"Authorization": f"Bearer {admin_key}"}
    with (
        RecordingServer(_tool_call_answer) as upstream,
        httpx.Client(base_url=gw.url, headers=admin, timeout=60) as c,
    ):
        body = {"name": "tooled", "model": "tooled", "base_url": upstream.url + "/v1", "upstream_model": "u"}
        assert c.post("/admin/upstreams", json=body).status_code == 201
        try:
            client = OpenAI(base_url=gw.url + "/v1", api_key=admin_key, max_retries=0, timeout=60)
            asked = {
                "model": "tooled",
                "messages": [
                    {"role": "user", "content": "Weather in Oslo?"},
                    TOOL_TURN,
                    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                    {"role": "user", "content": "And Paris?"},
                ],
                "tools": TOOLS,
                "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                "parallel_tool_calls": False,
                "response_format": SCHEMA_FORMAT,
                "logit_bias": {"50256": -100},
                "max_tokens": 20,
            }
            extras = {
                "guided_decoding_backend": "xgrammar",
                "chat_template_kwargs": {"enable_thinking": False},
                "stop_token_ids": [7],  # a provider extra whose name holds "token": passed on
            }
            done = client.chat.completions.create(**asked, extra_body=extras)
            streamed = client.chat.completions.create(**asked, extra_body=extras, stream=True)
            chunks = list(streamed)
        finally:
            c.delete("/admin/upstreams/tooled")
    assert len(upstream.requests) == 2
    for got in upstream.requests:
        sent = got.json()
        for field in (
            "messages",
            "tools",
            "tool_choice",
            "parallel_tool_calls",
            "response_format",
            "logit_bias",
        ):
            assert sent[field] == asked[field], field
        assert {k: sent[k] for k in extras} == extras and sent["model"] == "u"
    [call] = done.choices[0].message.tool_calls
    assert (call.id, call.function.name, call.function.arguments) == (
        "call_9",
        "get_weather",
        '{"city": "Paris"}',
    )
    assert done.choices[0].finish_reason == "tool_calls" and done.model == "tooled"
    deltas = [ch.choices[0].delta for ch in chunks if ch.choices]
    assert "".join(d.tool_calls[0].function.arguments for d in deltas if d.tool_calls) == '{"city": "Paris"}'
    assert deltas[0].tool_calls[0].id == "call_9" and chunks[-1].model == "tooled"
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "tool_calls"
