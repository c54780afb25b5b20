"""One model replica: load a Hugging Face checkpoint and generate with continuous batching."""

from .config import CheckpointError, EngineConfig, ModelConfig
from .engine import Engine, EngineError
from .llm_engine import LLMEngine
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
    "EngineError",
    "EngineStats",
    "GenerateRequest",
    "LLMEngine",
    "ModelConfig",
    "RequestFailed",
    "SamplingParams",
    "TokenLogprob",
    "ValidationError",
]
