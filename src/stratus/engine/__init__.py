"""One model replica: load a Hugging Face checkpoint and generate with continuous batching."""

from .config import CheckpointError, EngineConfig, ModelConfig
from .core import EngineCore
from .engine import Engine, EngineError
from .types import (
    Delta,
    EngineStats,
    GenerateRequest,
    RequestFailed,
    SamplingParams,
    TokenLogprob,
    ValidationError,
)

__all__ = [
    "CheckpointError",
    "Delta",
    "Engine",
    "EngineConfig",
    "EngineCore",
    "EngineError",
    "EngineStats",
    "GenerateRequest",
    "ModelConfig",
    "RequestFailed",
    "SamplingParams",
    "TokenLogprob",
    "ValidationError",
]
