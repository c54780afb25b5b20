"""What to do to a checkpoint: the validated options of `stratus compress`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from stratus.engine.quant import INT4_GROUP_SIZES

from .checkpoint import CompressError

METHODS = ("int8", "int4", "prune")
PATTERNS = ("unstructured", "2:4")
PRUNE_METRICS = ("magnitude", "wanda")


@dataclass(frozen=True)
class CompressSpec:
    method: str  # int8 | int4 | prune
    group_size: int = 128  # int4: input columns sharing one scale and zero
    awq: bool = False  # int4: activation-aware scales (and clipping) from calibration text
    gptq: bool = False  # int4: round with error compensation on calibration inputs (gptq.py)
    quantize_head: bool = False  # also quantize the output head (kept in float by default)
    sparsity: float = 0.5  # prune, unstructured: fraction of each matrix set to zero
    pattern: str = "unstructured"  # prune: unstructured | 2:4
    prune_metric: str = "magnitude"  # prune: magnitude | wanda (|w| times input norm)
    then: str | None = None  # prune: quantize afterwards with int8 | int4
    calibration: Path | None = None  # text for AWQ / wanda; default: text the model generates
    calibration_tokens: int = 2048
    seed: int = 0

    @property
    def quant_method(self) -> str | None:
        """int8 | int4 | None: the quantization the output checkpoint carries."""
        return self.then if self.method == "prune" else self.method

    @property
    def needs_calibration(self) -> bool:
        return self.awq or self.gptq or (self.method == "prune" and self.prune_metric == "wanda")

    def validate(self) -> CompressSpec:
        if self.method not in METHODS:
            raise CompressError(f"unknown method {self.method!r}; expected one of {', '.join(METHODS)}")
        if self.group_size not in INT4_GROUP_SIZES:
            raise CompressError(
                f"group size {self.group_size} is not possible; int4 groups are one of "
                f"{', '.join(map(str, INT4_GROUP_SIZES))} input columns"
            )
        if self.then is not None and self.method != "prune":
            raise CompressError("--then applies only to --method prune (quantize after pruning)")
        if self.then not in (None, "int8", "int4"):
            raise CompressError(f"--then must be int8 or int4, got {self.then!r}")
        if self.awq and self.quant_method != "int4":
            raise CompressError("--awq applies to int4 quantization (--method int4, or prune --then int4)")
        if self.gptq and self.quant_method != "int4":
            raise CompressError("--gptq applies to int4 quantization (--method int4, or prune --then int4)")
        if self.quantize_head and self.quant_method is None:
            raise CompressError("--quantize-head needs a quantization method")
        if self.pattern not in PATTERNS:
            raise CompressError(f"unknown pruning pattern {self.pattern!r}; expected one of {PATTERNS}")
        if self.prune_metric not in PRUNE_METRICS:
            raise CompressError(
                f"unknown pruning metric {self.prune_metric!r}; expected one of {PRUNE_METRICS}"
            )
        if self.method == "prune" and self.pattern == "unstructured" and not 0.0 < self.sparsity < 1.0:
            raise CompressError(f"--sparsity must be between 0 and 1 (exclusive), got {self.sparsity}")
        if self.calibration is not None and not Path(self.calibration).is_file():
            raise CompressError(f"--calibration: no file at {self.calibration}")
        if self.calibration_tokens < 16:
            raise CompressError(f"--calibration-tokens must be at least 16, got {self.calibration_tokens}")
        return self

    def describe(self) -> dict:
        """The section recorded in config.json and the report."""
        out = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}
        if self.method != "prune":
            for key in ("sparsity", "pattern", "prune_metric", "then"):
                out.pop(key)
        elif self.pattern == "2:4":
            out["sparsity"] = 0.5
        if self.quant_method != "int4":
            out.pop("group_size")
            out.pop("awq")
            out.pop("gptq")
        if not self.needs_calibration:
            for key in ("calibration", "calibration_tokens", "seed"):
                out.pop(key)
        return out
