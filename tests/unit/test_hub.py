"""Hugging Face names as models (hub.py): what reads as a name, a path, or neither; the cache found
from the environment; offline resolution from a cache laid out as huggingface_hub lays it out.

Never the network: every test that resolves sets HF_HUB_OFFLINE=1 and a temporary HF_HOME.
"""

import pytest
from click.testing import CliRunner

from stratus.cli.main import main
from stratus.config import ConfigError, parse_model_spec
from stratus.hub import HubError, HubName, cache_dir, parse_source, resolve_model

pytestmark = pytest.mark.timeout(60)

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fake_cache(hub: str, repo: str, files: dict[str, str], *, ref: str = "main", commit: str = COMMIT):
    """A repo in huggingface_hub's cache layout: blobs, snapshots/<commit>/<file>, refs/<ref>."""
    from pathlib import Path

    root = Path(hub) / ("models--" + repo.replace("/", "--"))
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (snapshot / name).write_text(text)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hf"


def test_names_paths_and_neither(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse_source("org/repo") == HubName("org/repo")
    assert parse_source("HuggingFaceTB/SmolLM2-135M-Instruct@v1.0") == HubName(
        "HuggingFaceTB/SmolLM2-135M-Instruct", "v1.0"
    )
    assert parse_source(f"org/repo@{COMMIT}:model.Q4_0.gguf") == HubName(
        "org/repo", COMMIT, "model.Q4_0.gguf"
    )
    assert str(HubName("org/repo", "v1", "m.gguf")) == "org/repo@v1:m.gguf"
    for path in ("/abs/missing", "./rel", "../up", "~/m", "one-name", "a/b/c", "x/model.gguf"):
        assert parse_source(path) is None, path
    (tmp_path / "models" / "demo").mkdir(parents=True)  # an existing path always wins
    assert parse_source("models/demo") is None
    (tmp_path / "org" / "weird@x").mkdir(parents=True)
    assert parse_source("org/weird@x") is None
    for bogus in (
        "https://huggingface.co/org/repo",
        "org/re po",
        "org/repo@",
        "org/repo:weights.bin",
        "org--x/repo",
        "org/repo@v1@v2",
        "name@rev",
    ):
        with pytest.raises(HubError, match="neither an existing path nor a Hugging Face name|is a URL"):
            parse_source(bogus)


def test_model_specs_name_a_hub_model_by_its_repo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse_model_spec("tiny=org/repo@v2") == ("tiny", "org/repo@v2")
    assert parse_model_spec("org/repo@v2") == ("org/repo", "org/repo@v2")
    assert parse_model_spec("/ckpt/llama-3/") == ("llama-3", "/ckpt/llama-3/")
    with pytest.raises(ConfigError, match=r"--model: 'https://huggingface.co/org/repo' is a URL.*org/repo"):
        parse_model_spec("m=https://huggingface.co/org/repo")
    with pytest.raises(ConfigError, match="neither an existing path nor a Hugging Face name"):
        parse_model_spec("m=org/repo@")


def test_the_cache_is_read_from_the_environment_now(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    assert cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache"


def test_offline_resolution_reads_the_cache(hf_home):
    files = {"config.json": "{}", "model.safetensors": "x"}
    snapshot = fake_cache(str(hf_home / "hub"), "org/repo", files)
    assert resolve_model("org/repo") == snapshot
    assert resolve_model(f"org/repo@{COMMIT}") == snapshot
    other = "fedcba9876543210fedcba9876543210fedcba98"
    tagged = fake_cache(str(hf_home / "hub"), "org/repo", files, ref="v1", commit=other)
    assert resolve_model("org/repo@v1") == tagged
    gguf = fake_cache(str(hf_home / "hub"), "org/quant", {"m.Q4_0.gguf": "GGUF"})
    assert resolve_model("org/quant:m.Q4_0.gguf") == gguf / "m.Q4_0.gguf"
    local = hf_home.parent / "local"
    local.mkdir()
    assert resolve_model(str(local)) == local  # paths are not looked up


def test_offline_and_not_cached_says_what_to_do(hf_home):
    with pytest.raises(HubError) as info:
        resolve_model("org/absent@v3")
    text = str(info.value)
    assert "org/absent@v3" in text and str(hf_home / "hub") in text
    assert "HF_HUB_OFFLINE" in text and "network access" in text and "hf download org/absent" in text


def test_serve_refuses_an_uncached_name_offline_and_a_bogus_spec(tmp_path):
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": ""}
    runner = CliRunner()
    args = ["serve", "--port", "0", "--data-dir", str(tmp_path / "data"), "--no-auth"]
    result = runner.invoke(main, [*args, "--model", "m=org/absent"], env=env)
    assert result.exit_code == 1, result.output
    assert "org/absent is not in the Hugging Face cache at" in result.output
    assert str(tmp_path / "hf" / "hub") in result.output and "HF_HUB_OFFLINE" in result.output
    result = runner.invoke(main, [*args, "--model", "m=hf://org/repo"], env=env)
    assert result.exit_code == 2 and "is a URL" in result.output
    result = runner.invoke(main, [*args, "--model", "m=org/repo@"], env=env)
    assert result.exit_code == 2 and "neither an existing path nor a Hugging Face name" in result.output


def test_worker_refuses_an_uncached_name_offline(tmp_path, monkeypatch):
    import click

    from stratus.cli.worker import worker_options, worker_settings

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    settings = worker_settings({}, env={"STRATUS_CLUSTER_SECRET": "s" * 40})
    with pytest.raises(click.ClickException, match="org/absent is not in the Hugging Face cache"):
        worker_options("m=org/absent", settings)
    snapshot = fake_cache(str(tmp_path / "hf" / "hub"), "org/repo", {"config.json": "{}"})
    assert worker_options("m=org/repo", settings).path == snapshot


def test_download_progress_is_reported_from_the_byte_bars():
    from stratus.hub import _progress_bars

    heard: list[float] = []
    bar_class = _progress_bars(heard.append)
    with bar_class(total=200, unit="B", disable=True) as bytes_bar:
        bytes_bar.update(50)
        bytes_bar.update(150)
    with bar_class(total=3, unit="it", disable=True) as files_bar:  # files, not bytes: not reported
        files_bar.update(1)
    assert heard == [0.25, 1.0]
