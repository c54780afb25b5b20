"""The `stratus` admin commands, `stratus status` and `stratus chat` against the shared live
gateway (tests/conftest.py `api_server`: real HTTP, access control, a real engine): tables and
--output formats, secrets and upstreams over HTTP (/admin/secrets, /admin/upstreams), the audit
trail through the gateway, and a streamed conversation with the caller's own key."""

import csv
import io
import json
import os
import signal
import subprocess
import sys

import pytest
from click.testing import CliRunner

from stratus.cli.main import main
from tests import issued
from tests.conftest import TINY_MODEL

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def cli(api_server, admin_key):
    """Run `stratus ARGS --url GATEWAY` with STRATUS_API_KEY = `key` (the admin's by default)."""
    runner = CliRunner()

    def run(*args, key=admin_key, input=None, ok=True):
        result = runner.invoke(
            main, [*args, "--url", api_server.url], env={"STRATUS_API_KEY": key}, input=input
        )
        if ok:
            assert result.exit_code == 0, result.output
        return result

    return run


def member(cli, name: str, team: str) -> str:
    """A member of `team`, granted the tiny model; their key's secret."""
    cli("teams", "create", team)
    cli("users", "create", name, "--team", team)
    cli("teams", "grant", team, TINY_MODEL)
    out = cli("keys", "create", f"{name}-key", "--user", name, "--team", team).stdout
    return issued.record(out.strip().splitlines()[-1])


def test_lists_print_a_table_or_what_scripts_read(cli):
    cli("users", "create", "cli-dana")
    table = cli("users", "list").stdout
    header = table.splitlines()[0]
    assert all(word in header for word in ("NAME", "ROLE", "STATE")) and "cli-dana" in table
    users = json.loads(cli("users", "list", "--output", "json").stdout)
    assert "cli-dana" in [u["name"] for u in users]
    lines = cli("users", "list", "-o", "jsonl").stdout.splitlines()
    assert [json.loads(line)["name"] for line in lines] == [u["name"] for u in users]
    rows = list(csv.DictReader(io.StringIO(cli("users", "list", "--output", "csv").stdout)))
    assert {r["name"]: r["role"] for r in rows}["cli-dana"] == "member"
    legacy = cli("users", "list", "--json")  # one more release, with a warning
    assert json.loads(legacy.stdout) == users and "deprecated" in legacy.stderr


def test_a_key_name_is_shown_as_written(cli):
    # the gateway refuses control characters in names; rich markup is text like any other
    out = cli("keys", "create", "x[red]y[/red]").stdout
    issued.record(out.strip().splitlines()[-1])
    assert "x[red]y[/red]" in cli("keys", "list").stdout


def test_secrets_over_http_never_show_a_value(cli, http):
    value = issued.record("webhook-signing-secret-" + "q" * 24)
    stored = cli("secrets", "set", "hook/cli-test", input=value)
    assert "stored hook/cli-test" in stored.stdout and value not in stored.output
    listed = cli("secrets", "list", "--output", "json")
    assert {"name": "hook/cli-test"} in json.loads(listed.stdout) and value not in listed.output
    refused = cli("secrets", "set", "../escape", input=value, ok=False)
    assert refused.exit_code == 2 and "NAME" in refused.output  # refused before it is sent
    assert http.put("/admin/secrets/-x", json={"value": value}).status_code == 400
    assert http.put("/admin/secrets/a..b", json={"value": value}).status_code == 400
    member_key = member(cli, "cli-sec-member", "cli-sec-team")
    denied = cli("secrets", "list", key=member_key, ok=False)
    assert denied.exit_code == 1 and "403" in denied.output
    assert "removed hook/cli-test" in cli("secrets", "delete", "hook/cli-test").stdout
    assert "404" in cli("secrets", "delete", "hook/cli-test", ok=False).output


def test_upstreams_over_http(cli):
    key = issued.record("upstream-cli-key-" + "z" * 24)
    args = ["upstreams", "add", "cli-up", "--model", "cli-llama", "--base-url", "http://127.0.0.1:9/v1"]
    added = cli(*args, "--upstream-model", "meta-llama/Llama-3.1-8B", input=key)
    assert "key stored encrypted" in added.stdout and key not in added.output
    rows = json.loads(cli("upstreams", "list", "-o", "json").stdout)
    assert [(r["name"], r["model"], r["created_by"]) for r in rows if r["name"] == "cli-up"] == [
        ("cli-up", "cli-llama", "admin")
    ]
    assert "cli-up" in cli("upstreams", "list").stdout
    cli("upstreams", "remove", "cli-up")
    assert "cli-up" not in cli("upstreams", "list").stdout


def test_audit_records_through_the_gateway(cli):
    cli("teams", "create", "cli-audited")
    rows = json.loads(
        cli("audit", "list", "--action", "POST /admin/teams", "--since", "1h", "-o", "json").stdout
    )
    assert rows and rows[0]["outcome"] == "ok" and rows[0]["principal"] == "admin"
    assert "POST /admin/teams" in cli("audit", "list", "--limit", "5").stdout
    member_key = member(cli, "cli-aud-member", "cli-aud-team")
    assert "403" in cli("audit", "list", key=member_key, ok=False).output


def test_status_shows_each_model_and_its_replicas(cli):
    rows = json.loads(cli("status", "--interval", "0.2", "-o", "json").stdout)["models"]
    tiny = next(r for r in rows if r["model"] == TINY_MODEL)
    assert tiny["replicas_up"] >= 1 and tiny["replicas"] >= tiny["replicas_up"]
    assert {"requests_per_second", "tokens_per_second", "errors_per_second"} <= set(tiny)
    table = cli("status", "--interval", "0.2").stdout
    assert "REQ/S" in table and "TOK/S" in table and TINY_MODEL in table


def test_status_watch_refreshes_until_interrupted(api_server, admin_key):
    env = {**os.environ, "STRATUS_API_KEY": admin_key, "STRATUS_URL": api_server.url, "COLUMNS": "160"}
    child = subprocess.Popen(
        [sys.executable, "-m", "stratus.cli", "status", "--watch", "--interval", "0.3"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: list[str] = []
    try:  # piped, each refresh is a table of its own: read two
        while sum(line.split()[:1] == [TINY_MODEL] for line in seen) < 2:
            line = child.stdout.readline()
            assert line, child.stderr.read()
            seen.append(line)
    finally:
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=30)
    assert child.returncode == 0, err  # Ctrl-C ends it cleanly
    assert sum("REQ/S" in line for line in seen) == 2


def test_chat_streams_a_conversation_with_the_callers_key(cli, admin_key):
    key = member(cli, "cli-chatter", "cli-chat-team")
    turns = "Tell me a short story please\nAnd what happened next then\n/exit\nnever sent\n"
    result = cli("chat", TINY_MODEL, "--max-tokens", "5", "--temperature", "0", key=key, input=turns)
    answers = result.stdout.splitlines()
    assert len(answers) == 2 and all(a.strip() for a in answers)
    # the second turn carried the first (longer prompt), and both were the member's requests
    filters = ["--principal", "cli-chatter", "--action", "POST /v1/chat/completions", "-o", "json"]
    records = json.loads(cli("audit", "list", *filters).stdout)
    closing = [r for r in records if r["completion_tokens"] is not None]  # a stream's last record
    assert len(closing) == 2 and all(r["outcome"] == "ok" for r in closing)
    newest, oldest = closing
    assert newest["prompt_tokens"] > oldest["prompt_tokens"]
    hidden = cli("chat", "no-such-model", key=key, input="Hello there, anyone listening\n", ok=False)
    assert hidden.exit_code == 1 and "404" in hidden.output
