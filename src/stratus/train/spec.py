"""One training job, as the supervisor hands it to every worker (JSON in the output directory)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from .lora import LoraSpec

# A worker's exit status when the job cannot run at all (unreadable data or checkpoint, a
# checkpoint of another job): restarting cannot help, so the supervisor stops.
EXIT_UNUSABLE = 3


@dataclass
class TrainSpec:
    model: str  # checkpoint directory or GGUF file
    data: list[str]
    out: str
    lora: LoraSpec | None = None  # None: full fine-tuning
    eval_data: list[str] = field(default_factory=list)
    eval_fraction: float = 0.1  # held out of `data` when no eval_data is given
    workers: int = 1
    batch_size: int = 8  # examples per optimizer step, over all workers
    micro_batch: int = 4  # examples per forward pass on one worker
    seq_len: int = 512
    steps: int | None = None  # None: `epochs` over the training set
    epochs: float = 1.0
    lr: float = 2e-4
    min_lr_ratio: float = 0.0  # the cosine ends at lr * min_lr_ratio
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    seed: int = 0
    eval_every: int = 50  # steps; also before the first and after the last
    checkpoint_every: int = 50  # steps
    keep_checkpoints: bool = False  # after a successful run (the last one stays only if set)
    precision: str = "auto"  # auto | fp32 | bf16 (bf16: autocast on CUDA)
    device: str = "auto"  # auto | cpu | cuda
    threads: int | None = None  # torch threads per worker; default: the cores shared out
    max_restarts: int = 3
    shrink_on_failure: bool = True  # restart with the workers that remain (else as many as before)
    max_steps_per_second: float | None = None  # pace the job (a shared machine; tests)

    @property
    def out_dir(self) -> Path:
        return Path(self.out)

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    @property
    def metrics_file(self) -> Path:
        return self.out_dir / "metrics.jsonl"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> TrainSpec:
        raw = json.loads(text)
        if raw.get("lora") is not None:
            raw["lora"] = LoraSpec(**{**raw["lora"], "targets": tuple(raw["lora"]["targets"])})
        return cls(**raw)

    def identity(self) -> str:
        """What a checkpoint must agree with to be resumed: everything that shapes the result
        (not the number of workers, pacing, threads or restart policy)."""
        keep = {
            k: v
            for k, v in dataclasses.asdict(self).items()
            if k
            not in (
                "workers",
                "micro_batch",
                "threads",
                "max_restarts",
                "shrink_on_failure",
                "max_steps_per_second",
                "keep_checkpoints",
                "eval_every",
                "checkpoint_every",
            )
        }
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]
