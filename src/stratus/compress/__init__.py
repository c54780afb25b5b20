"""Model compression: int8/int4 weight-only quantization (with AWQ), pruning, and a measured report.

    from stratus.compress import CompressSpec, EvalOptions, compress
    compress(Path("models/demo"), Path("models/demo-int8"), CompressSpec("int8"), eval_options=EvalOptions())

The engine side (the quantized layers and their matmuls) lives in stratus/engine/quant.py.
"""

from .checkpoint import CompressError
from .evaluate import EvalOptions
from .pipeline import compress, evaluate_pair
from .report import Report
from .spec import CompressSpec

__all__ = ["CompressError", "CompressSpec", "EvalOptions", "Report", "compress", "evaluate_pair"]
