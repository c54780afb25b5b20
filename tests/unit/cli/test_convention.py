"""One CLI convention (cli/common.py, cli/output.py): every command says which credential it uses,
every list/show command prints a table or --output json|jsonl|csv, one flag name per idea with the
old names hidden and warning, and what `stratus status` computes from two scrapes of /metrics."""

import csv
import io
import json

import click
import pytest
from click.testing import CliRunner

from stratus.cli.main import main
from stratus.cli.output import Column, render
from stratus.cli.status import counters, overview, quantile
from stratus.config import load_settings

# the names that one flag replaced (still accepted for one release, hidden from --help)
RETIRED = {
    "--json",
    "--format",
    "--allow-insecure-http",
    "--insecure-worker-http",
    "--concurrency",
    "--daily-tokens",
    "--monthly-tokens",
}


def leaves(group, path=()):
    for name, cmd in group.commands.items():
        if cmd.hidden:
            continue
        if isinstance(cmd, click.Group):
            yield from leaves(cmd, (*path, name))
        else:
            yield (*path, name), cmd


def test_every_command_says_which_credential_it_uses():
    runner = CliRunner()
    for path, _ in leaves(main):
        out = runner.invoke(main, [*path, "--help"], terminal_width=200).output
        assert "Credential:" in out, path


def test_one_flag_name_per_idea():
    for path, cmd in leaves(main):
        shown = {opt for p in cmd.params if not getattr(p, "hidden", False) for opt in p.opts}
        assert not shown & RETIRED, (path, shown & RETIRED)
        gateway = "--url" in shown
        # every command that calls a gateway takes the same connection flags
        assert not gateway or "--cacert" in shown, path
        if path[-1] in ("list", "get", "status", "suspended", "whoami") or path == ("usage",):
            assert "--output" in shown, path


ROWS = [
    {"id": "k1", "name": "[bold]not markup[/bold]", "tags": ["a", "b"], "at": None},
    {"id": "k2", "name": "evil\x1b]0;pwned\x07\x1b[2J", "tags": [], "at": 1.5},
]
COLUMNS = [Column("id"), Column("name"), Column("tags")]


def rendered(capsys, data, output, columns=COLUMNS) -> str:
    render(data, output, columns)
    return capsys.readouterr().out


def test_table_cells_are_plain_text_with_control_characters_escaped(capsys):
    out = rendered(capsys, ROWS, "table")
    assert "[bold]not markup[/bold]" in out  # rich markup in a name is shown, not interpreted
    assert "\x1b" not in out and "\x07" not in out and "\\x1b" in out
    assert "ID" in out and "NAME" in out and "a, b" in out


def test_json_jsonl_and_csv_are_parseable(capsys):
    assert json.loads(rendered(capsys, ROWS, "json")) == ROWS  # every field, as sent
    lines = rendered(capsys, ROWS, "jsonl").splitlines()
    assert [json.loads(line) for line in lines] == ROWS
    table = list(csv.reader(io.StringIO(rendered(capsys, ROWS, "csv"))))
    assert table == [["id", "name", "tags"], ["k1", ROWS[0]["name"], "a;b"], ["k2", ROWS[1]["name"], ""]]
    one = rendered(capsys, ROWS[0], "table")  # one object: a FIELD / VALUE table
    assert "FIELD" in one and "k1" in one


def test_the_old_json_flag_still_works_and_warns():
    runner = CliRunner()
    result = runner.invoke(
        main, ["keys", "list", "--json", "--url", "http://127.0.0.1:9"], env={"STRATUS_API_KEY": "x"}
    )
    assert "--json is deprecated" in result.stderr and "--output json" in result.stderr
    assert "cannot reach" in result.output  # it went on to call the gateway


def test_insecure_http_is_one_setting():
    both = load_settings({"insecure_http": True}, env={}, config_file=None)
    assert both.allow_insecure_http and both.insecure_worker_http
    neither = load_settings({}, env={}, config_file=None)
    assert not (neither.insecure_http or neither.allow_insecure_http or neither.insecure_worker_http)
    env = load_settings({}, env={"STRATUS_INSECURE_HTTP": "1"}, config_file=None)
    assert env.allow_insecure_http and env.insecure_worker_http


@pytest.mark.parametrize(("flag", "warns"), [("--insecure-http", False), ("--allow-insecure-http", True)])
def test_serve_takes_insecure_http_and_the_old_name_warns(tmp_path, flag, warns):
    args = ["serve", "--host", "0.0.0.0", flag, "--model", f"m={tmp_path / 'none'}", "--port", "0"]
    result = CliRunner().invoke(main, args)
    assert "refusing plain HTTP" not in result.output  # allowed: it fails later, on the checkpoint
    assert "no checkpoint at" in result.output
    assert ("is deprecated" in result.stderr) is warns


METRICS_BEFORE = """
# TYPE stratus_requests counter
stratus_requests_total{route="/v1/chat/completions",model="tiny",status="200"} 10.0
stratus_requests_total{route="/v1/chat/completions",model="tiny",status="503"} 1.0
stratus_requests_total{route="/metrics",model="",status="200"} 7.0
# TYPE stratus_generation_tokens counter
stratus_generation_tokens_total{model="tiny"} 100.0
# TYPE stratus_time_to_first_token_seconds histogram
stratus_time_to_first_token_seconds_bucket{model="tiny",le="0.1"} 5.0
stratus_time_to_first_token_seconds_bucket{model="tiny",le="0.5"} 5.0
stratus_time_to_first_token_seconds_bucket{model="tiny",le="1.0"} 5.0
stratus_time_to_first_token_seconds_bucket{model="tiny",le="+Inf"} 5.0
stratus_time_to_first_token_seconds_count{model="tiny"} 5.0
stratus_time_to_first_token_seconds_sum{model="tiny"} 0.25
"""
METRICS_AFTER = """
# TYPE stratus_requests counter
stratus_requests_total{route="/v1/chat/completions",model="tiny",status="200"} 14.0
stratus_requests_total{route="/v1/chat/completions",model="tiny",status="503"} 3.0
stratus_requests_total{route="/v1/completions",model="big",status="200"} 2.0
stratus_requests_total{route="/metrics",model="",status="200"} 9.0
# TYPE stratus_generation_tokens counter
stratus_generation_tokens_total{model="tiny"} 500.0
stratus_generation_tokens_total{model="big"} 40.0
# TYPE stratus_time_to_first_token_seconds histogram
stratus_time_to_first_token_seconds_bucket{model="tiny",le="0.1"} 5.0
stratus_time_to_first_token_seconds_bucket{model="tiny",le="0.5"} 9.0
stratus_time_to_first_token_seconds_bucket{model="tiny",le="1.0"} 13.0
stratus_time_to_first_token_seconds_bucket{model="tiny",le="+Inf"} 13.0
stratus_time_to_first_token_seconds_count{model="tiny"} 13.0
stratus_time_to_first_token_seconds_sum{model="tiny"} 5.0
"""


def test_status_rates_are_the_difference_of_two_scrapes():
    cluster = {
        "models": [
            {
                "model": "tiny",
                "state": "ready",
                "replicas": [
                    {"state": "up", "inflight": 2, "waiting": 1},
                    {"state": "down", "inflight": 0, "waiting": 0},
                ],
            },
            {"model": "big", "state": "ready", "replicas": [{"state": "up", "inflight": 0, "waiting": 0}]},
        ]
    }
    rows = {r["model"]: r for r in overview(cluster, counters(METRICS_BEFORE), counters(METRICS_AFTER), 2.0)}
    tiny = rows["tiny"]
    assert (tiny["replicas"], tiny["replicas_up"], tiny["inflight"], tiny["waiting"]) == (2, 1, 2, 1)
    assert tiny["requests_per_second"] == 3.0  # (17 - 11) / 2: the /metrics scrapes are no model's
    assert tiny["tokens_per_second"] == 200.0
    assert tiny["errors_per_second"] == 1.0 and tiny["errors"] == 3
    assert rows["big"]["requests_per_second"] == 1.0  # absent from the first scrape: counted from 0
    # TTFT over the window: the 8 new observations, 4 in (0.1, 0.5] and 4 in (0.5, 1.0]; the five
    # older ones (<= 0.1 s, before the window) do not count
    assert tiny["ttft_p50"] == pytest.approx(0.5)
    assert tiny["ttft_p95"] == pytest.approx(0.5 + 0.5 * (0.95 * 8 - 4) / 4)
    assert tiny["tpot_p50"] is None and rows["big"]["ttft_p50"] is None  # nothing observed


def test_quantile_is_prometheus_histogram_quantile():
    buckets = {0.1: 10.0, 0.2: 30.0, float("inf"): 40.0}
    assert quantile(0.25, {}, buckets) == pytest.approx(0.1)  # rank 10: the top of the first bucket
    assert quantile(0.5, {}, buckets) == pytest.approx(0.15)  # rank 20: halfway through the second
    assert quantile(0.99, {}, buckets) == 0.2  # in +Inf: the last finite bound
    assert quantile(0.5, buckets, buckets) is None  # no observation between the scrapes
