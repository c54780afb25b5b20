"""The `stratus` command line: help everywhere, and clear errors before anything starts."""

from click.testing import CliRunner

from stratus.cli.main import main
from stratus.cli.serve import banner
from stratus.config import Settings


def all_commands(group, prefix=()):
    yield prefix
    for name, cmd in getattr(group, "commands", {}).items():
        yield from all_commands(cmd, (*prefix, name))


def test_every_command_has_help():
    runner = CliRunner()
    for path in all_commands(main):
        result = runner.invoke(main, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage:" in result.output


def test_serve_help_documents_every_knob():
    out = CliRunner().invoke(main, ["serve", "--help"], terminal_width=200).output
    for flag in (
        "--model",
        "--host",
        "--port",
        "--data-dir",
        "--tls-cert",
        "--tls-key",
        "--drain-timeout",
        "--max-body-bytes",
        "--max-waiting",
        "--response-cache-size",
        "--max-num-seqs",
        "--kv-cache-memory-mb",
        "--max-model-len",
        "--config",
    ):
        assert flag in out


def test_bad_settings_are_usage_errors(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["serve", "--model", "bad name=/x"])
    assert result.exit_code == 2 and "model name 'bad name'" in result.output
    result = runner.invoke(main, ["serve"], env={"STRATUS_PORT": "eighty"})
    assert result.exit_code == 2 and "STRATUS_PORT: expected an integer" in result.output
    result = runner.invoke(main, ["serve", "--model", "a=/x", "--model", "a=/y"])
    assert result.exit_code == 2 and "only once" in result.output


def test_missing_checkpoint_fails_before_listening(tmp_path):
    result = CliRunner().invoke(main, ["serve", "--model", f"m={tmp_path / 'nothing'}", "--port", "0"])
    assert result.exit_code == 1
    assert "no checkpoint at" in result.output and "--model NAME=PATH" in result.output


def test_plain_http_off_loopback_is_refused(tmp_path):
    result = CliRunner().invoke(main, ["serve", "--host", "0.0.0.0", "--model", f"m={tmp_path}"])
    assert result.exit_code == 1 and "refusing plain HTTP" in result.output


def test_banner_shows_how_to_call():
    text = banner(Settings(models={"tiny": "/m"}), "127.0.0.1", 8123)
    assert "listening on http://127.0.0.1:8123" in text
    assert "curl http://127.0.0.1:8123/v1/chat/completions" in text
    assert "OpenAI(base_url='http://127.0.0.1:8123/v1'" in text


def test_client_chosen_text_cannot_drive_the_terminal():
    from stratus.cli.common import terminal_safe

    hostile = "model\x1b]0;pwned\x07\x1b[2J\r\x9b"
    shown = terminal_safe(hostile)
    assert not any(ord(ch) < 32 or 0x7F <= ord(ch) <= 0x9F for ch in shown)
    assert shown.startswith("model") and "\\x1b" in shown
    assert terminal_safe("plain text\tand tab") == "plain text\tand tab"


def test_forwarded_headers_are_believed_only_from_configured_proxies(tiny_checkpoint, tmp_path):
    """uvicorn believes X-Forwarded-For from loopback by default; a client on this machine could
    then pick the address that lockouts and the audit trail see. Only named proxies count."""
    from stratus.cli.serve import build_server
    from stratus.config import Settings

    def config(**over):
        settings = Settings(
            models={"tiny": str(tiny_checkpoint)}, port=0, data_dir=str(tmp_path), auth=False, **over
        )
        server, sock = build_server(settings)
        sock.close()
        return server.config

    assert config().proxy_headers is False
    behind = config(forwarded_allow_ips="10.0.0.5")
    assert behind.proxy_headers is True and behind.forwarded_allow_ips == "10.0.0.5"
