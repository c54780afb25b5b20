"""The cluster secret, worker URLs and upstream base URLs: what is accepted and what is refused."""

from __future__ import annotations

import asyncio

import pytest

from stratus.cluster.registration import RegistrationError, WorkerDirectory, check_worker_url
from stratus.cluster.secret import ClusterSecretError, load_cluster_secret
from stratus.cluster.upstream import check_base_url
from stratus.cluster.worker_server import check_secret
from stratus.config import ConfigError, load_settings

pytestmark = pytest.mark.timeout(30)

GOOD = "k" * 40


def test_secret_from_file_or_environment(tmp_path):
    file = tmp_path / "secret"
    file.write_text(GOOD + "\n")
    assert load_cluster_secret(file, env={}) == GOOD.encode()
    assert load_cluster_secret(None, env={"STRATUS_CLUSTER_SECRET": GOOD}) == GOOD.encode()
    assert load_cluster_secret(None, env={}) is None


@pytest.mark.parametrize("bad", ["short", "k" * 20 + " " + "k" * 20, "k" * 31, "k" * 39 + "\x00"])
def test_weak_or_malformed_secrets_are_refused(bad):
    with pytest.raises(ClusterSecretError):
        load_cluster_secret(None, env={"STRATUS_CLUSTER_SECRET": bad})
    with pytest.raises(ConfigError):
        load_settings({}, env={"STRATUS_CLUSTER_SECRET": bad}, config_file=None)


def test_a_missing_secret_file_is_a_clear_error(tmp_path):
    with pytest.raises(ClusterSecretError, match="cluster secret file"):
        load_cluster_secret(tmp_path / "nope", env={})


def test_bearer_check():
    secret = GOOD.encode()
    assert check_secret(f"Bearer {GOOD}", secret)
    assert check_secret(f"bearer {GOOD}", secret)
    for given in (None, "", GOOD, f"Basic {GOOD}", f"Bearer {GOOD}x", "Bearer "):
        assert not check_secret(given, secret)


@pytest.mark.parametrize(
    "url",
    ["https://10.0.0.5:8100", "https://worker-1.internal:8443/", "http://[::1]:8100", "http://localhost:1"],
)
def test_worker_urls_accepted(url):
    assert check_worker_url(url) == url.rstrip("/")


@pytest.mark.parametrize(
    "url", ["http://10.0.0.5:8100", "http://worker-1.internal:8100/", "http://[fe80::1]:1"]
)
def test_plain_http_to_a_remote_worker_only_when_allowed(url):
    """The gateway sends the cluster secret to a worker's URL: never in clear by default."""
    with pytest.raises(RegistrationError, match="in clear"):
        check_worker_url(url)
    assert check_worker_url(url, insecure_http=True) == url.rstrip("/")
    directory = WorkerDirectory(None, GOOD.encode())  # refused before any connection or registry use

    async def register():
        with pytest.raises(RegistrationError, match="in clear"):
            await directory.register({"id": "w1", "model": "demo", "url": url})

    asyncio.run(register())
    assert directory.workers == {}


def test_a_worker_refuses_a_plain_http_gateway_off_loopback(tmp_path):
    from click.testing import CliRunner

    from stratus.cli.main import main
    from stratus.config import demo_model_path

    if not (demo_model_path() / "config.json").is_file():
        pytest.skip("no demo model: run `make demo-model`")
    args = ["worker", "--model", f"demo={demo_model_path()}", "--gateway", "http://10.0.0.1:8000"]
    env = {"STRATUS_CLUSTER_SECRET": GOOD}
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 2, result.output
    assert "in clear" in result.output and GOOD not in result.output


@pytest.mark.parametrize(
    "url",
    [
        "",
        "file:///etc/passwd",
        "ftp://h/",
        "http://u:p@h:1",
        "http://h:1/?x=1",
        "http://h:1/#f",
        "http://h:99999",
    ],
)
def test_worker_urls_refused(url):
    with pytest.raises(RegistrationError):
        check_worker_url(url)


@pytest.mark.parametrize(
    "url",
    ["gopher://h/", "http://key@h/v1", "http://h/v1?api_key=x", "h:8000/v1", "http:///v1", "http://h:0x1/v1"],
)
def test_upstream_base_urls_refused(url):
    with pytest.raises(ValueError):
        check_base_url(url)


def test_upstream_base_url_normalised():
    assert check_base_url(" http://10.0.0.7:8000/v1/ ") == "http://10.0.0.7:8000/v1"


def test_worker_timeouts_and_plain_http_settings():
    s = load_settings(
        {"worker_first_token_timeout": 120.0},
        env={"STRATUS_WORKER_READ_TIMEOUT": "5", "STRATUS_INSECURE_WORKER_HTTP": "true"},
        config_file=None,
    )
    assert (s.worker_read_timeout, s.worker_first_token_timeout, s.insecure_worker_http) == (5.0, 120.0, True)
    assert load_settings({}, env={}, config_file=None).insecure_worker_http is False
    for name in ("worker_read_timeout", "worker_first_token_timeout"):
        with pytest.raises(ConfigError, match=name):
            load_settings({name: 0.0}, env={}, config_file=None)
