"""`stratus worker` reads stratus.toml and `STRATUS_*` settings like `stratus serve`:
flag > environment > stratus.toml > default (the worker's default port being 8100).

Nothing here loads a model: `build_worker` is replaced by one that records what it was given.
"""

import socket

import click
import pytest
from click.testing import CliRunner

from stratus.cli.main import main
from stratus.cli.worker import worker_options, worker_settings

SECRET = "s" * 40


class Built(Exception):
    """Raised by the stand-in build_worker, carrying the WorkerOptions it was given."""

    def __init__(self, options, port):
        super().__init__("built")
        self.options, self.port = options, port


@pytest.fixture
def fake_build(monkeypatch):
    import stratus.cluster.worker_main as worker_main

    def build_worker(options, sock):
        port = sock.getsockname()[1]
        sock.close()
        raise Built(options, port)  # before the banner and the signal handlers

    monkeypatch.setattr(worker_main, "build_worker", build_worker)


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "model"
    path.mkdir()
    (path / "config.json").write_text("{}")  # the worker checks it is there; nothing loads it
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_worker_reads_stratus_toml_and_environment(tmp_path, monkeypatch, fake_build, model):
    port = free_port()
    (tmp_path / "stratus.toml").write_text(
        f"port = {port}\n"
        "max_num_seqs = 7\n"
        "kv_cache_memory_mb = 32\n"
        'engine_isolation = "thread"\n'
        "drain_timeout = 12.5\n"
        'log_level = "warning"\n'
    )
    monkeypatch.chdir(tmp_path)
    env = {"STRATUS_CLUSTER_SECRET": SECRET, "STRATUS_MAX_NUM_SEQS": "9"}  # env beats toml
    args = ["worker", "--model", f"demo={model}", "--drain-timeout", "3"]  # a flag beats both
    result = CliRunner().invoke(main, args, env=env)
    assert isinstance(result.exception, Built), result.output
    options = result.exception.options
    assert (options.host, options.port, result.exception.port) == ("127.0.0.1", port, port)
    assert options.engine.max_num_seqs == 9
    assert options.engine.kv_cache_memory_mb == 32
    assert options.isolation == "thread"
    assert options.drain_timeout == 3.0
    assert options.log_level == "warning"
    assert options.secret == SECRET.encode()


def test_precedence_and_the_workers_own_default_port(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = worker_settings({}, env={})
    assert (settings.host, settings.port, settings.engine_isolation) == ("127.0.0.1", 8100, "process")
    (tmp_path / "stratus.toml").write_text('port = 8000\nhost = "::1"\n')  # serve's default, set
    assert worker_settings({}, env={}).port == 8000
    assert worker_settings({}, env={}).host == "::1"
    assert worker_settings({}, env={"STRATUS_PORT": "8300"}).port == 8300
    assert worker_settings({"port": 8400}, env={"STRATUS_PORT": "8300"}).port == 8400
    other = tmp_path / "other.toml"
    other.write_text("port = 8500\nmax_num_seqs = 3\n")
    assert worker_settings({}, env={"STRATUS_CONFIG": str(other)}).port == 8500
    from_flag = worker_settings({"max_num_seqs": 5}, config_file=other, env={})
    assert (from_flag.port, from_flag.engine.max_num_seqs) == (8500, 5)
    (tmp_path / "stratus.toml").unlink()
    assert worker_settings({}, env={}).port == 8100


def test_tls_and_cluster_secret_file_from_the_settings(tmp_path, monkeypatch, model):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cluster.secret").write_text(SECRET + "\n")
    (tmp_path / "stratus.toml").write_text('host = "0.0.0.0"\ncluster_secret_file = "cluster.secret"\n')
    settings = worker_settings({}, env={})
    with pytest.raises(click.ClickException, match="refusing plain HTTP on 0.0.0.0"):
        worker_options(f"demo={model}", settings)
    env = {"STRATUS_TLS_CERT": "cert.pem", "STRATUS_TLS_KEY": "key.pem"}
    options = worker_options(f"demo={model}", worker_settings({}, env=env))
    assert (options.host, options.tls_cert, options.tls_key) == ("0.0.0.0", "cert.pem", "key.pem")
    assert options.secret == SECRET.encode()


def test_bad_settings_are_usage_errors_that_name_their_source(tmp_path, monkeypatch, fake_build, model):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    args = ["worker", "--model", f"demo={model}"]
    result = runner.invoke(main, args, env={"STRATUS_CLUSTER_SECRET": SECRET, "STRATUS_PORT": "eighty"})
    assert result.exit_code == 2 and "STRATUS_PORT: expected an integer" in result.output
    result = runner.invoke(main, [*args, "--config", str(tmp_path / "missing.toml")])
    assert result.exit_code == 2 and "does not exist" in result.output
    (tmp_path / "stratus.toml").write_text("max_tokens_per_second = -1\n")
    result = runner.invoke(main, args, env={"STRATUS_CLUSTER_SECRET": SECRET})
    assert result.exit_code == 2 and "max_tokens_per_second must be a positive" in result.output
    (tmp_path / "stratus.toml").write_text('cluster_secret = "short"\n')
    result = runner.invoke(main, args, env={"STRATUS_CLUSTER_SECRET": None})
    assert result.exit_code == 2 and "at least 32" in result.output
