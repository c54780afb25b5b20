"""Perplexity of the demo model on its held-out text, before and after compression.

Targets (issue 8): int8 within +1% of full precision, int4 within +10%, and the activation-aware
options better than plain int4. Measured (all 11,055 tokens of corpus/heldout.txt, group 128,
calibration 1,024 tokens of *Emma*; docs/BENCHMARKS.md has the table):

    variant      perplexity        KL from fp32 per token
    fp32         86.736            0
    int8         86.735 (-0.00%)   1.0e-5
    int4         86.791 (+0.06%)   8.5e-4
    AWQ          86.848 (+0.13%)   7.4e-4
    AWQ + GPTQ   86.786 (+0.06%)   4.6e-4

"Better" is asserted where it is measurable: the KL divergence of the quantized model's
next-token distribution from the float model's (AWQ -12%, AWQ + GPTQ -46%). Perplexity cannot
rank the int4 variants on this model: plain int4 costs only +6e-4 nats per token, and the
standard error of the per-token difference between two int4 variants is ~5e-4 nats, so every
int4 variant lands within noise of the others (AWQ + GPTQ's 86.786 against 86.791 is as much
luck as AWQ's 86.848; in a float32 replay of the same weights GPTQ alone, at 2.4x lower KL,
scored a higher perplexity than plain int4). The test asserts that, not a ranking noise decides.
"""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from stratus.compress import CompressSpec, compress
from stratus.compress.generation import batched_logits, open_engine, windows

REPO = Path(__file__).resolve().parents[3]
DEMO = REPO / "models" / "demo"
HELDOUT = REPO / "corpus" / "heldout.txt"
CALIBRATION = REPO / "corpus" / "austen" / "emma.txt"  # training text, never the held-out slice

pytestmark = [
    pytest.mark.timeout(900),
    pytest.mark.skipif(
        not (DEMO / "config.json").is_file(),
        reason="models/demo is absent: train it with `make demo-model` (scripts/train_demo_model.py)",
    ),
    pytest.mark.skipif(not HELDOUT.is_file(), reason="corpus/heldout.txt is absent"),
]


@pytest.fixture(scope="module")
def measures(tmp_path_factory):
    """{variant: (per-token NLL [tokens], mean KL divergence from float32 per token)}."""
    out = tmp_path_factory.mktemp("demo")
    calibration = dict(calibration=CALIBRATION if CALIBRATION.is_file() else None, calibration_tokens=1024)
    specs = {
        "int8": CompressSpec("int8"),
        "int4": CompressSpec("int4"),
        "awq": CompressSpec("int4", awq=True, **calibration),
        "awq+gptq": CompressSpec("int4", awq=True, gptq=True, **calibration),
    }
    paths = {"fp32": DEMO}
    for name, spec in specs.items():
        compress(DEMO, out / name, spec)
        paths[name] = out / name
    result, reference, chunks = {}, {}, None
    for name, path in paths.items():
        engine = open_engine(path)
        if chunks is None:
            chunks = windows(engine.tokenizer.encode(HELDOUT.read_text(encoding="utf-8")), 512)
        nll, kl = [], 0.0
        for i, logits in batched_logits(engine, chunks):
            nll.append(F.cross_entropy(logits[:-1], torch.tensor(chunks[i][1:]), reduction="none"))
            logp = F.log_softmax(logits, dim=-1)
            if name == "fp32":
                reference[i] = logp
            kl += (reference[i].exp() * (reference[i] - logp)).sum().item()
        result[name] = (torch.cat(nll), kl / sum(map(len, chunks)))
        del engine
    print(
        "demo (perplexity, KL from float32):", {k: (perplexity(k, result), v[1]) for k, v in result.items()}
    )
    return result


def perplexity(name, measures) -> float:
    return float(measures[name][0].mean().exp())


def test_int8_perplexity_within_one_percent(measures):
    assert perplexity("int8", measures) <= perplexity("fp32", measures) * 1.01


def test_int4_perplexity_within_ten_percent(measures):
    for name in ("int4", "awq", "awq+gptq"):
        assert perplexity(name, measures) <= perplexity("fp32", measures) * 1.10, name


def test_activation_aware_options_beat_plain_int4(measures):
    kl = {name: value[1] for name, value in measures.items()}
    assert kl["int8"] < kl["int4"]  # the divergence measure orders precisions
    assert kl["awq"] < kl["int4"]
    assert kl["awq+gptq"] < 0.7 * kl["int4"]


def test_int4_variants_are_within_noise_of_each_other_on_perplexity(measures):
    """Paired per-token NLL differences: neither activation-aware variant is worse than plain
    int4 by more than three standard errors (a broken transform would be: its errors would
    act on every token)."""
    for name in ("awq", "awq+gptq"):
        diff = measures[name][0] - measures["int4"][0]
        assert diff.mean() <= 3 * diff.std() / len(diff) ** 0.5, name
