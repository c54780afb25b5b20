#!/usr/bin/env python3
"""How much of a held-out perplexity difference between int4 variants is rounding luck.

    .venv/bin/python bench/int4_rounding_noise.py                 # demo model, 30 draws
    .venv/bin/python bench/int4_rounding_noise.py --draws 5       # quicker

Plain int4 of a model is one rounding of its weights among many equally good ones: scaling an
input channel of a linear layer by s and the matching output of the layer (or norm) before it
by 1/s computes the same function, yet rounds differently. This script draws `--draws` such
random rescalings (s = exp(sigma * N(0, 1)) per channel, folded exactly as AWQ folds its scales,
no clipping), rounds each with plain int4, and measures on the held-out text the mean
per-token NLL increase over the float model and the KL divergence from it. The spread of the
NLL increase across draws is what a perplexity comparison of two int4 variants must beat; the
KL barely moves. Plain int4 and AWQ (`stratus compress --awq`) are measured the same way.

All variants are float32 replays (weights fake-quantized, float32 kernels), so the figures
differ slightly from the engine's int4 kernels. Results print and go to
bench/results/int4_rounding_noise-<time>.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

import common  # noqa: E402  (bench/common.py)

from stratus.compress.awq import apply_awq  # noqa: E402
from stratus.compress.calibration import calibration_sequences, capture_inputs  # noqa: E402
from stratus.compress.checkpoint import read_config, read_weights, write_checkpoint  # noqa: E402
from stratus.compress.generation import batched_logits, open_engine, windows  # noqa: E402
from stratus.compress.quantize import fake_quantize_int4  # noqa: E402
from stratus.engine.config import ModelConfig  # noqa: E402


def is_linear(name: str) -> bool:
    return name.startswith("model.layers.") and name.endswith("_proj.weight")


def write_fake_int4(src: Path, dst: Path, tensors: dict, group: int, clips: dict | None = None) -> Path:
    clips = clips or {}
    out = {
        name: (
            fake_quantize_int4(t.float(), group, clips.get(name)) if is_linear(name) else t.float()
        ).contiguous()
        for name, t in tensors.items()
    }
    write_checkpoint(src, dst, read_config(src), out, overwrite=True)
    return dst


def token_measures(path: Path, chunks: list[list[int]], reference: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token NLL and KL from `reference` (filled on the first call: the float model)."""
    engine = open_engine(path)
    nll, kl = [], []
    for i, logits in batched_logits(engine, chunks):
        logp = F.log_softmax(logits[:-1].float(), dim=-1)
        nll.append(F.nll_loss(logp, torch.tensor(chunks[i][1:]), reduction="none"))
        ref = reference.setdefault(i, logp)
        kl.append((ref.exp() * (ref - logp)).sum(dim=-1))
    return torch.cat(nll), torch.cat(kl)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=REPO / "models" / "demo")
    ap.add_argument("--eval-text", type=Path, default=REPO / "corpus" / "heldout.txt")
    ap.add_argument("--calibration", type=Path, default=REPO / "corpus" / "austen" / "emma.txt")
    ap.add_argument("--calibration-tokens", type=int, default=1024)
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--draws", type=int, default=30)
    ap.add_argument("--sigma", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/int4_rounding_noise"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.workdir.mkdir(parents=True, exist_ok=True)

    config = ModelConfig.from_dir(args.model)
    weights = read_weights(args.model)
    engine = open_engine(args.model)
    chunks = windows(engine.tokenizer.encode(args.eval_text.read_text(encoding="utf-8")), 512)
    inputs = capture_inputs(
        engine, calibration_sequences(engine, args.calibration, args.calibration_tokens, seed=0)
    )
    del engine
    reference: dict = {}
    float_nll, _ = token_measures(args.model, chunks, reference)

    def summary(nll: torch.Tensor, kl: torch.Tensor) -> dict:
        diff = nll - float_nll
        return {
            "nll_increase": float(diff.mean()),
            "standard_error": float(diff.std() / len(diff) ** 0.5),
            "kl": float(kl.mean()),
        }

    def scaled_copy(choose_scale=None):
        tensors = {name: t.float().clone() for name, t in weights.items()}
        kwargs = {} if choose_scale is None else {"choose_scale": choose_scale}
        clips, _ = apply_awq(tensors, config, inputs, args.group_size, **kwargs)
        return tensors, clips

    results = {"tokens": len(float_nll)}
    plain = token_measures(
        write_fake_int4(args.model, args.workdir / "v", weights, args.group_size), chunks, reference
    )
    results["int4"] = summary(*plain)
    tensors, clips = scaled_copy()
    awq = token_measures(
        write_fake_int4(args.model, args.workdir / "v", tensors, args.group_size, clips), chunks, reference
    )
    results["awq"] = summary(*awq)
    diff = awq[0] - plain[0]
    results["awq_minus_int4"] = {
        "nll": float(diff.mean()),
        "standard_error": float(diff.std() / len(diff) ** 0.5),
    }

    generator = torch.Generator().manual_seed(args.seed)

    def random_scale(x, _weights, _group_size, expand=None):
        width = x.shape[1] if expand is None else expand.kv_heads * expand.head_dim
        return torch.exp(args.sigma * torch.randn(width, generator=generator))

    draws = []
    for n in range(args.draws):
        tensors, _ = scaled_copy(random_scale)  # the clips are ignored: plain int4 of a rescaled model
        draws.append(
            summary(
                *token_measures(
                    write_fake_int4(args.model, args.workdir / "v", tensors, args.group_size),
                    chunks,
                    reference,
                )
            )
        )
        print(f"draw {n}: NLL +{draws[-1]['nll_increase']:.2e}, KL {draws[-1]['kl']:.2e}", flush=True)
    increases = torch.tensor([d["nll_increase"] for d in draws])
    kls = torch.tensor([d["kl"] for d in draws])
    results["draws"] = {
        "sigma": args.sigma,
        "count": args.draws,
        "nll_increase_mean": float(increases.mean()),
        "nll_increase_sd": float(increases.std()),
        "nll_increase_min": float(increases.min()),
        "nll_increase_max": float(increases.max()),
        "kl_mean": float(kls.mean()),
        "kl_sd": float(kls.std()),
        "each": draws,
    }

    print(
        f"\n{results['tokens']} held-out tokens; NLL increase over float32 per token (± standard error), KL"
    )
    for name in ("int4", "awq"):
        r = results[name]
        print(f"  {name:5s} {r['nll_increase']:+.2e} ± {r['standard_error']:.1e}   KL {r['kl']:.2e}")
    d = results["awq_minus_int4"]
    print(f"  awq - int4: {d['nll']:+.2e} ± {d['standard_error']:.1e} nats per token")
    r = results["draws"]
    print(
        f"  {r['count']} equivalent roundings of plain int4 (sigma {r['sigma']}): NLL increase "
        f"{r['nll_increase_mean']:.2e} ± {r['nll_increase_sd']:.1e} (sd; range {r['nll_increase_min']:.1e} to "
        f"{r['nll_increase_max']:.1e}), KL {r['kl_mean']:.2e} ± {r['kl_sd']:.0e}"
    )
    common.write_report(
        results, common.RESULTS_DIR / f"int4_rounding_noise-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )


if __name__ == "__main__":
    main()
