"""The messages between `Engine` (engine.py) and the step loop that owns its `EngineCore`.

Commands go to the step loop (step_loop.py); results come back from it. With process isolation
(process.py) both cross multiprocessing queues, so every message pickles: a frozen dataclass of
plain fields. The engine process adds its own lifecycle messages (`Ready`, `LoadFailed`,
`Stopped`), which its transport consumes; of those only `Died` reaches `Engine`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .pooling import Pooling
from .types import Delta, EngineStats, GenerateRequest

# -- commands: Engine -> step loop ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AddRequest:
    """Admit a request whose prompt the caller has already validated and tokenized."""

    request: GenerateRequest
    prompt_ids: list[int]


@dataclass(frozen=True, slots=True)
class AbortRequest:
    """Stop a request now; its closing deltas are published."""

    request_id: str


@dataclass(frozen=True, slots=True)
class Embed:
    """Embed whole prompts (validated and tokenized by the caller) now, between two steps."""

    request_id: str
    prompts: list[list[int]]
    pooling: Pooling


@dataclass(frozen=True, slots=True)
class LoadAdapter:
    """Serve the PEFT LoRA adapter in directory `path` as `name` (engine/lora.py), replacing one
    of that name; answered by `AdapterChanged`, or a validation `RequestError` naming the problem."""

    request_id: str
    name: str
    path: str


@dataclass(frozen=True, slots=True)
class UnloadAdapter:
    """Stop serving the adapter `name`; running sequences finish with it. `AdapterChanged` answers."""

    request_id: str
    name: str


@dataclass(frozen=True, slots=True)
class Stop:
    """End the step loop."""


Command = AddRequest | AbortRequest | Embed | LoadAdapter | UnloadAdapter | Stop

# -- results: step loop -> Engine ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Deltas:
    """New output of one step (or the closing deltas of an abort), in the core's order."""

    deltas: list[Delta]


# "validation": the request was refused (ValidationError); "request": this request failed while
# being computed, the others go on (RequestFailed); "engine": the step failed (EngineError).
ErrorKind = Literal["validation", "request", "engine"]


@dataclass(frozen=True, slots=True)
class RequestError:
    """One request ended in an error."""

    request_id: str
    kind: ErrorKind
    message: str
    param: str | None = None  # the offending field of a validation error


@dataclass(frozen=True, slots=True)
class Embeddings:
    """The vectors of an `Embed`: float32, native byte order, `count` rows of `dim` values."""

    request_id: str
    data: bytes
    count: int
    dim: int


@dataclass(frozen=True, slots=True)
class AdapterChanged:
    """A `LoadAdapter` or `UnloadAdapter` is done; `found`: whether the adapter was there before."""

    request_id: str
    name: str
    found: bool


@dataclass(frozen=True, slots=True)
class Stats:
    stats: EngineStats


Result = Deltas | RequestError | Embeddings | AdapterChanged | Stats

# -- the engine process's lifecycle (process.py) -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ready:
    """The child loaded the model; its KV pool has `num_blocks` blocks, it serves a context of
    `max_model_len` tokens (capped to what the pool holds), and `layout` is how the replica is
    split over processes and what each holds (EngineCore.layout)."""

    num_blocks: int
    max_model_len: int
    layout: dict | None = None


@dataclass(frozen=True, slots=True)
class LogLine:
    """A log record of the child's, re-emitted by the parent under the same logger name, so the
    engine's lines (start-up memory, failed steps) appear in the gateway's log and format."""

    level: int
    logger: str
    message: str


@dataclass(frozen=True, slots=True)
class LoadFailed:
    """The child could not load the model."""

    message: str


@dataclass(frozen=True, slots=True)
class Stopped:
    """The child's step loop ended after a `Stop`."""


@dataclass(frozen=True, slots=True)
class Died:
    """The engine process is gone (its transport noticed); every request in flight is lost."""

    message: str


ProcessMessage = Result | Ready | LoadFailed | Stopped | LogLine
