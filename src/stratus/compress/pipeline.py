"""`compress()`: source checkpoint -> (prune) -> (AWQ) -> quantize (GPTQ) -> write -> evaluate -> report.

    report = compress(Path("models/demo"), Path("models/demo-int4"), CompressSpec("int4", awq=True),
                      eval_options=EvalOptions(eval_text=Path("corpus/heldout.txt")))

Every check on the input runs before anything is written; the checkpoint itself is written
through a temporary directory (checkpoint.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm import tqdm

from stratus.engine.config import CheckpointError, ModelConfig

from .awq import apply_awq
from .calibration import calibration_sequences, capture_inputs
from .checkpoint import CompressError, check_source, check_target, read_config, read_weights, write_checkpoint
from .evaluate import EvalOptions, Evaluator
from .generation import open_engine
from .gptq import gptq_int4
from .prune import prune_weight
from .quantize import quantize
from .report import Report, machine
from .spec import CompressSpec

LINEAR_PARTS = {  # checkpoint layer -> the calibration input it reads
    "self_attn.q_proj": "qkv",
    "self_attn.k_proj": "qkv",
    "self_attn.v_proj": "qkv",
    "self_attn.o_proj": "o",
    "mlp.gate_proj": "gate_up",
    "mlp.up_proj": "gate_up",
    "mlp.down_proj": "down",
}
FORMAT = "stratus-v1"


def layer_linears(config: ModelConfig) -> list[tuple[int, str, str]]:
    """(layer index, checkpoint weight name, calibration input kind) of every decoder linear."""
    return [
        (n, f"model.layers.{n}.{part}.weight", kind)
        for n in range(config.num_layers)
        for part, kind in LINEAR_PARTS.items()
    ]


def _model_config(raw: dict, src: Path) -> ModelConfig:
    try:
        return ModelConfig.from_dict(raw, source=str(src / "config.json"))
    except CheckpointError as exc:
        raise CompressError(str(exc)) from exc


def compress(
    src: Path,
    dst: Path,
    spec: CompressSpec,
    overwrite: bool = False,
    eval_options: EvalOptions | None = None,
) -> Report | None:
    """Write the compressed checkpoint DST; evaluate it against SRC when eval_options is given."""
    src, dst = Path(src), Path(dst)
    spec.validate()
    raw = check_source(src)
    check_target(src, dst, overwrite)
    config = _model_config(raw, src)
    tensors = read_weights(src)
    missing = [name for _, name, _ in layer_linears(config) if name not in tensors]
    if missing:
        raise CompressError(f"{src}: tensor {missing[0]} missing; is this a Llama-family checkpoint?")
    dtypes = {name: t.dtype for name, t in tensors.items()}

    inputs = None
    if spec.needs_calibration:
        engine = open_engine(src)
        sequences = calibration_sequences(engine, spec.calibration, spec.calibration_tokens, spec.seed)
        inputs = capture_inputs(engine, sequences)
        del engine

    nonzero = None
    if spec.method == "prune":
        kept = total = 0
        for n, name, kind in tqdm(layer_linears(config), desc=f"prune {spec.pattern}", unit="matrix"):
            norm = inputs[n].get(kind).norm(dim=0) if inputs is not None else None
            tensors[name] = prune_weight(tensors[name].float(), spec.pattern, spec.sparsity, norm)
            kept += int((tensors[name] != 0).sum())
            total += tensors[name].numel()
        nonzero = kept / total

    clips: dict[str, torch.Tensor] = {}
    if spec.awq:
        for name in tensors:
            if name.startswith("model.layers."):
                tensors[name] = tensors[name].float()
        clips, inputs = apply_awq(tensors, config, inputs, spec.group_size)

    method = spec.quant_method
    if method is not None:
        names = [name for _, name, _ in layer_linears(config)]
        if spec.quantize_head:
            names.append("lm_head.weight")
        seen = {name: inputs[n].get(kind) for n, name, kind in layer_linears(config)} if spec.gptq else {}
        for name in tqdm(names, desc=f"quantize {method}" + (" (gptq)" if spec.gptq else ""), unit="matrix"):
            weight = tensors.pop(name, None)
            if weight is None:  # tied output head: quantize a copy of the embeddings
                weight = tensors["model.embed_tokens.weight"]
            stem = name[: -len("weight")]
            if name in seen:
                stored = gptq_int4(weight, seen[name], spec.group_size, clips.get(name))
            else:
                stored = quantize(weight, method, spec.group_size, clips.get(name))
            for key, value in stored.items():
                tensors[stem + key] = value

    out = {
        name: t.to(dtypes[name]) if name in dtypes and t.is_floating_point() else t
        for name, t in tensors.items()
    }
    new_config = dict(raw)
    if method is not None:
        section = {"method": method, "format": FORMAT, "lm_head": spec.quantize_head}
        if method == "int4":
            section |= {"group_size": spec.group_size, "awq": spec.awq}
        new_config["quantization"] = section
    new_config["compression"] = {"source": str(src), **spec.describe()}
    if nonzero is not None:
        new_config["compression"]["nonzero_fraction"] = round(nonzero, 6)
    write_checkpoint(src, dst, new_config, out, overwrite)
    if eval_options is None:
        return None
    return evaluate_pair(src, dst, eval_options)


def evaluate_pair(src: Path, dst: Path, options: EvalOptions) -> Report:
    """Measure SRC and DST side by side; write the report into DST and return it."""
    src, dst = Path(src), Path(dst)
    for path in (src, dst):
        if not (path / "config.json").is_file():
            raise CompressError(f"{path}: no config.json; expected a checkpoint directory")
    if options.eval_text is not None and not Path(options.eval_text).is_file():
        raise CompressError(f"--eval-text: no file at {options.eval_text}")
    if read_config(src).get("quantization"):
        raise CompressError(f"{src}: is itself quantized; SRC must be the original checkpoint")
    dst_raw = read_config(dst)
    _model_config(dst_raw, dst)
    evaluator = Evaluator(options)
    with tqdm(total=2 * evaluator.steps_per_model(), desc="evaluate", unit="step") as bar:
        try:
            before, _ = evaluator.measure(src, bar)
            after, agree = evaluator.measure(dst, bar)
        except CheckpointError as exc:
            raise CompressError(str(exc)) from exc
    compression = dst_raw.get("compression") or {"quantization": dst_raw.get("quantization")}
    report = Report(
        source=str(src),
        output=str(dst),
        compression={k: v for k, v in compression.items() if k not in ("source", "nonzero_fraction")},
        before=before,
        after=after,
        top1_agreement=round(agree, 5) if agree is not None else None,
        nonzero_fraction=compression.get("nonzero_fraction"),
        eval_text=str(options.eval_text) if options.eval_text else None,
        machine=machine(),
    )
    report.write(dst)
    return report


def load_report(dst: Path) -> dict:
    return json.loads((Path(dst) / "compression_report.json").read_text())
