"""Perplexity of the demo model on its held-out text, before and after compression.

Targets (issue 8): int8 within +1% of full precision, int4 within +10%, and the activation-aware
options better than plain int4. Measured on a 2-core AMD EPYC (AVX2), 2026-11-29, with
`.venv/bin/pytest tests/unit/compress/test_compress_demo.py -s` (all 11,055 scored tokens of
corpus/heldout.txt, group 128, calibration 1,024 tokens of *Emma*; docs/BENCHMARKS.md has the
table). z: the mean paired per-token difference from plain int4 in standard errors.

    variant      perplexity        KL from fp32 per token   NLL vs int4   KL vs int4
    fp32         86.736            0                        z -1.7
    int8         86.733 (-0.00%)   8.5e-6
    int4         86.794 (+0.07%)   8.5e-4
    AWQ          86.865 (+0.15%)   7.2e-4 (-15%)            z +1.6        z -15.8
    AWQ + GPTQ   86.824 (+0.10%)   4.5e-4 (-47%)            z +0.7        z -54.0

"Better" is asserted where it is measurable: the KL divergence of the quantized model's
next-token distribution from the float model's, on the held-out tokens, by more than three
standard errors. Held-out perplexity cannot rank int4 variants of this model, and no int4
variant could pass a three-standard-error perplexity test against plain int4 here: the float
model itself is only 1.7 standard errors better than plain int4. Plain int4's own figure is
luck, too: bench/int4_rounding_noise.py rounds 30 equivalent versions of the model (random
channel rescalings folded in exactly, as AWQ folds its scales; KL within 3% of plain int4's),
and their held-out NLL increase is 1.27e-3 +- 3.6e-4 nats per token (sd; 6.2e-4 to 2.1e-3),
every one above plain int4's 5.7e-4 and AWQ's 1.46e-3 inside the spread (float32 replays).
Beating plain int4 by three standard errors (~1.5e-3 nats) would take a model some 8e-4 nats
per token better than the float one. So the tests assert the KL ranking, and on perplexity only
that no variant is worse than plain int4 by more than that noise.
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
    """{variant: (per-token NLL [tokens], per-token KL divergence from float32 [tokens])}, both
    at the scored positions (a window's last position predicts a token outside it)."""
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
        nll, kl = [], []
        for i, logits in batched_logits(engine, chunks):
            nll.append(F.cross_entropy(logits[:-1], torch.tensor(chunks[i][1:]), reduction="none"))
            logp = F.log_softmax(logits[:-1], dim=-1)
            if name == "fp32":
                reference[i] = logp
            kl.append((reference[i].exp() * (reference[i] - logp)).sum(dim=-1))
        result[name] = (torch.cat(nll), torch.cat(kl))
        del engine
    print("demo (perplexity, KL from float32, NLL and KL vs int4 in standard errors):")
    for name, (nll, kl) in result.items():
        print(f"  {name:9s} {perplexity(name, result):.3f} {kl.mean():.2e}", end="")
        if name != "int4":
            print(
                f" NLL {paired_z(nll, result['int4'][0]):+.1f} KL {paired_z(kl, result['int4'][1]):+.1f}",
                end="",
            )
        print()
    return result


def perplexity(name, measures) -> float:
    return float(measures[name][0].mean().exp())


def paired_z(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean per-token difference a - b in standard errors of that mean."""
    diff = a - b
    return float(diff.mean() / (diff.std() / len(diff) ** 0.5))


def test_int8_perplexity_within_one_percent(measures):
    assert perplexity("int8", measures) <= perplexity("fp32", measures) * 1.01


def test_int4_perplexity_within_ten_percent(measures):
    for name in ("int4", "awq", "awq+gptq"):
        assert perplexity(name, measures) <= perplexity("fp32", measures) * 1.10, name


def test_activation_aware_options_beat_plain_int4(measures):
    """On the held-out tokens, by more than three standard errors of the paired per-token
    KL differences (the measured margins are some 15 and 50)."""
    kl = {name: value[1] for name, value in measures.items()}
    assert kl["int8"].mean() < kl["int4"].mean()  # the divergence measure orders precisions
    for name in ("awq", "awq+gptq"):
        assert paired_z(kl[name], kl["int4"]) < -3, name
    assert kl["awq+gptq"].mean() < 0.7 * kl["int4"].mean()


def test_int4_variants_are_within_noise_of_each_other_on_perplexity(measures):
    """Paired per-token NLL differences: neither activation-aware variant is worse than plain
    int4 by more than three standard errors (a broken transform would be: its errors would
    act on every token)."""
    for name in ("awq", "awq+gptq"):
        assert paired_z(measures[name][0], measures["int4"][0]) <= 3, name
