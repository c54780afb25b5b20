"""`stratus serve` with access control: on by default, --no-auth only on loopback, the first admin
key from STRATUS_ADMIN_KEY or generated and printed once."""

import click
import httpx
import pytest
from click.testing import CliRunner

from stratus.cli.main import main
from stratus.cli.serve import access_hooks as _access_hooks
from stratus.config import Settings
from stratus.security import keys
from tests import issued
from tests.live_server import ServeProcess


def printed_key(text: str) -> str:
    """The key `serve` prints on the line after 'shown this once'."""
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if "shown this once" in line)
    return issued.record(lines[at + 1].strip())


def test_no_auth_is_refused_off_loopback(tmp_path):
    result = CliRunner().invoke(main, ["serve", "--no-auth", "--host", "0.0.0.0", "--model", f"m={tmp_path}"])
    assert result.exit_code == 1 and "refusing --no-auth on 0.0.0.0" in result.output
    result = CliRunner().invoke(
        main, ["serve", "--host", "0.0.0.0", "--model", f"m={tmp_path}"], env={"STRATUS_AUTH": "false"}
    )
    assert result.exit_code == 1 and "refusing --no-auth" in result.output


def test_first_admin_key_is_generated_and_printed_once(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("STRATUS_ADMIN_KEY", raising=False)
    settings = Settings(data_dir=str(issued.data_dir_of(tmp_path)))
    hooks = _access_hooks(settings)
    out = capsys.readouterr().out
    secret = printed_key(out)
    assert keys.lookup_of(secret) and hooks.access.authenticate(secret).roles == {"admin"}
    hooks.access.store.close()
    again = _access_hooks(settings)  # the same data dir: nothing new, nothing printed
    assert capsys.readouterr().out == ""
    again.access.store.close()


def test_first_admin_key_from_the_environment(tmp_path, capsys, monkeypatch):
    chosen = issued.record(keys.generate().secret)
    monkeypatch.setenv("STRATUS_ADMIN_KEY", chosen)
    hooks = _access_hooks(Settings(data_dir=str(issued.data_dir_of(tmp_path / "a"))))
    out = capsys.readouterr().out
    assert chosen not in out and keys.lookup_of(chosen) in out  # only its public prefix
    assert hooks.access.authenticate(chosen).user == "admin"
    hooks.access.store.close()
    monkeypatch.setenv("STRATUS_ADMIN_KEY", "hunter2")
    with pytest.raises(click.ClickException, match="stratus keys generate") as err:
        _access_hooks(Settings(data_dir=str(issued.data_dir_of(tmp_path / "b"))))
    assert "hunter2" not in str(err.value.message)


def test_unreachable_database_url_is_a_clear_error(tmp_path):
    settings = Settings(
        data_dir=str(tmp_path), database_url="postgresql://stratus:pw-never-shown@127.0.0.1:1/x"
    )
    with pytest.raises(click.ClickException) as err:
        _access_hooks(settings)
    assert "cannot open the database" in err.value.message and "pw-never-shown" not in err.value.message


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_serve_is_closed_by_default(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.delenv("STRATUS_ADMIN_KEY", raising=False)
    server = ServeProcess(
        "--model", f"tiny={tiny_checkpoint}", "--data-dir", str(issued.data_dir_of(tmp_path))
    )
    try:
        server.wait_ready()
        secret = printed_key(server.output)
        assert "access: API key or OIDC token required" in server.output
        with httpx.Client(base_url=server.url, timeout=30) as c:
            assert c.get("/v1/models").status_code == 401
            assert c.get("/ready").json()["models"] == {}  # no model names for strangers
            r = c.get("/admin/whoami", headers={"Authorization": f"Bearer {secret}"})
            assert r.status_code == 200 and r.json()["user"] == "admin"
    finally:
        server.kill()  # its output (less the one deliberate print of the key) is searched for secrets
