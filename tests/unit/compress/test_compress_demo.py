"""Perplexity of the demo model on its held-out text, before and after compression.

Targets (issue 8): int8 within +1% of full precision, int4 within +10%, and the activation-aware
option (AWQ scales and clipping, calibrated on training text) better than plain int4.
"""

from pathlib import Path

import pytest

from stratus.compress import CompressSpec, compress
from stratus.compress.evaluate import perplexity
from stratus.compress.generation import open_engine

REPO = Path(__file__).resolve().parents[3]
DEMO = REPO / "models" / "demo"
HELDOUT = REPO / "corpus" / "heldout.txt"
CALIBRATION = REPO / "corpus" / "austen" / "emma.txt"  # training text, never the held-out slice
EVAL_TOKENS = 8192

pytestmark = [
    pytest.mark.skipif(
        not (DEMO / "config.json").is_file(),
        reason="models/demo is absent: train it with `make demo-model` (scripts/train_demo_model.py)",
    ),
    pytest.mark.skipif(not HELDOUT.is_file(), reason="corpus/heldout.txt is absent"),
]


@pytest.fixture(scope="module")
def perplexities(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    calibration = CALIBRATION if CALIBRATION.is_file() else None
    specs = {
        "int8": CompressSpec("int8"),
        "int4": CompressSpec("int4"),
        "awq": CompressSpec("int4", awq=True, calibration=calibration),
    }
    paths = {"fp32": DEMO}
    for name, spec in specs.items():
        compress(DEMO, out / name, spec)
        paths[name] = out / name
    result = {}
    ids = None
    for name, path in paths.items():
        engine = open_engine(path)
        if ids is None:
            ids = engine.tokenizer.encode(HELDOUT.read_text(encoding="utf-8"))[:EVAL_TOKENS]
        result[name], _ = perplexity(engine, ids, 512)
        del engine
    print("demo perplexity:", {k: round(v, 4) for k, v in result.items()})
    return result


def test_int8_perplexity_within_one_percent(perplexities):
    assert perplexities["int8"] <= perplexities["fp32"] * 1.01


def test_int4_perplexity_within_ten_percent(perplexities):
    assert perplexities["int4"] <= perplexities["fp32"] * 1.10


def test_awq_beats_plain_int4(perplexities):
    assert perplexities["awq"] < perplexities["int4"]
    assert perplexities["awq"] <= perplexities["fp32"] * 1.10
