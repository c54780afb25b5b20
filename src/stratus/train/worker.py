"""One rank of a training job: `python -m stratus.train.worker SPEC RANK WORLD PORT ATTEMPT`.

The supervisor starts WORLD of these. Each loads the model and the data, joins the process
group (gloo on CPU, NCCL on CUDA) when there is more than one, resumes from the last checkpoint
if there is one, and trains with DistributedDataParallel:

- global step s trains on the examples data.Order gives for s; rank r takes its share and runs
  it in micro-batches, gradients accumulating locally (no_sync) and averaged once per step;
- the loss is the sum of the target tokens' negative log-likelihoods over the whole global batch
  divided by the batch's target count, whatever the number of ranks, so one worker with the
  doubled batch computes the same step as two;
- rank 0 writes metrics.jsonl, the progress bar, and the output; checkpoints are collective.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from stratus.engine.config import CheckpointError
from stratus.engine.tokenizer import Tokenizer

from . import checkpoint
from .data import DataError, Example, ExampleReader, Order, collate, split_heldout
from .lora import adapter_state_dict, apply_lora, load_adapter_state
from .model import CausalLM, load_causal_lm
from .output import save_output
from .progress import Progress
from .schedule import cosine_with_warmup
from .spec import EXIT_UNUSABLE, TrainSpec


class JobMismatch(ValueError):
    """The output directory holds a checkpoint of another job."""


def nll_sum(model: torch.nn.Module, examples: list[Example], pad_id: int, device, autocast) -> torch.Tensor:
    """Sum of the target tokens' negative log-likelihoods (a graph when gradients are on)."""
    ids, learn = collate(examples, pad_id)
    ids, learn = ids.to(device), learn.to(device)
    with autocast():
        logits = model(ids)
    nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="none")
    return (nll * learn.flatten()).sum()


class Trainer:
    def __init__(self, spec: TrainSpec, rank: int, world: int, init_method: str, attempt: int):
        self.spec, self.rank, self.world, self.attempt = spec, rank, world, attempt
        self.device = self._device()
        cores = os.cpu_count() or 1
        torch.set_num_threads(spec.threads or max(1, cores // world))
        if world > 1:
            dist.init_process_group(
                "nccl" if self.device.type == "cuda" else "gloo",
                init_method=init_method,
                rank=rank,
                world_size=world,
                timeout=datetime.timedelta(seconds=300),
            )
        self.autocast = self._autocast()
        source = Path(spec.model)
        tokenizer = Tokenizer(source)
        reader = ExampleReader(tokenizer, spec.seq_len)
        data = reader.read([Path(f) for f in spec.data])
        if spec.eval_data:
            self.train_set, self.eval_set = (
                data.examples,
                reader.read([Path(f) for f in spec.eval_data]).examples,
            )
        else:
            self.train_set, self.eval_set = split_heldout(data.examples, spec.eval_fraction, spec.seed)
        self.truncated = data.truncated
        self.pad_id = tokenizer.eos_token_id or 0  # padding is never attended to nor learned
        self.total_steps = spec.steps or max(
            1, math.ceil(spec.epochs * len(self.train_set) / spec.batch_size)
        )
        self.order = Order(len(self.train_set), spec.batch_size, spec.seed)

        torch.manual_seed(spec.seed)  # the same adapter initialisation on every rank
        self.model: CausalLM = load_causal_lm(source)
        if spec.seq_len > self.model.config.max_position_embeddings:
            raise ValueError(
                f"--seq-len {spec.seq_len} is longer than the model's context "
                f"({self.model.config.max_position_embeddings} positions)"
            )
        if spec.lora is not None:
            apply_lora(self.model, spec.lora)
        self.model.to(self.device)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.trainable = trainable
        self.optimizer = torch.optim.AdamW(trainable, lr=spec.lr, weight_decay=spec.weight_decay)
        self.scheduler = cosine_with_warmup(
            self.optimizer, spec.warmup_steps, self.total_steps, spec.min_lr_ratio
        )
        self.ddp: torch.nn.Module = self.model
        if world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)
        self.step = 0
        self.tokens_seen = 0

    def _device(self) -> torch.device:
        wanted = self.spec.device
        if wanted == "auto":
            wanted = "cuda" if torch.cuda.is_available() else "cpu"
        if wanted == "cuda":
            device = torch.device("cuda", self.rank % torch.cuda.device_count())
            torch.cuda.set_device(device)
            return device
        return torch.device("cpu")

    def _autocast(self):
        bf16 = self.spec.precision == "bf16" or (
            self.spec.precision == "auto" and self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        )
        if bf16:
            return lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def all_sum(self, values: list[float]) -> list[float]:
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world > 1:
            dist.all_reduce(tensor)
        return tensor.tolist()

    # -- checkpoints ---------------------------------------------------------------------

    def weights(self) -> dict[str, torch.Tensor]:
        if self.spec.lora is not None:
            return adapter_state_dict(self.model)
        return {k: v.to("cpu") for k, v in self.model.hf_state_dict().items()}

    def resume(self) -> None:
        directory = self.spec.checkpoint_dir
        if self.rank == 0:
            checkpoint.clean_partial(directory)
        self.barrier()
        found = checkpoint.latest(directory)
        if found is None:
            return
        saved = checkpoint.load(found, self.rank)
        if saved["state"].get("identity") != self.spec.identity():
            raise JobMismatch(
                f"{found}: a checkpoint of a different job (model, data or hyperparameters differ); "
                "use another --out or remove it"
            )
        weights = {k: v.to(self.device) for k, v in saved["weights"].items()}
        if self.spec.lora is not None:
            load_adapter_state(self.model, weights)
        else:
            self.model.load_state_dict(weights, strict=False)
        self.optimizer.load_state_dict(saved["optim"]["optimizer"])
        self.scheduler.load_state_dict(saved["optim"]["scheduler"])
        self.step = saved["state"]["step"]
        self.tokens_seen = saved["state"].get("tokens_seen", 0)
        if saved["rng"] is not None:
            checkpoint.set_rng_state(saved["rng"])
        else:  # a rank the job did not have then
            torch.manual_seed(self.spec.seed * 1_000_003 + self.step * 101 + self.rank)
        if self.rank == 0:
            self.log({"event": "resumed", "step": self.step, "checkpoint": found.name})

    def save_checkpoint(self) -> None:
        checkpoint.save(
            self.spec.checkpoint_dir,
            self.step,
            self.rank,
            self.barrier,
            self.weights,
            self.optimizer,
            self.scheduler,
            {"identity": self.spec.identity(), "world": self.world, "tokens_seen": self.tokens_seen},
        )

    # -- the loop ------------------------------------------------------------------------

    def log(self, row: dict) -> None:
        row = {"time": round(time.time(), 3), "attempt": self.attempt, "workers": self.world, **row}
        with self.spec.metrics_file.open("a") as handle:
            handle.write(json.dumps(row) + "\n")

    def my_share(self, batch: list[int]) -> list[Example]:
        per_rank = len(batch) // self.world
        return [self.train_set[i] for i in batch[self.rank * per_rank : (self.rank + 1) * per_rank]]

    def train_step(self) -> tuple[float, int, int]:
        """One optimizer step: (mean loss over the global batch, its target tokens, its tokens)."""
        indices = self.order.batch(self.step)
        batch = [self.train_set[i] for i in indices]
        targets = sum(e.targets for e in batch)
        tokens = sum(len(e.ids) for e in batch)
        mine = self.my_share(indices)
        micro = [mine[i : i + self.spec.micro_batch] for i in range(0, len(mine), self.spec.micro_batch)]
        self.ddp.train()
        total = 0.0
        for n, chunk in enumerate(micro):
            last = n == len(micro) - 1
            sync = contextlib.nullcontext() if last or self.world == 1 else self.ddp.no_sync()  # type: ignore[operator]
            with sync:
                nll = nll_sum(self.ddp, chunk, self.pad_id, self.device, self.autocast)
                (nll * self.world / max(targets, 1)).backward()
            total += nll.item()
        if self.spec.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.spec.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        (total,) = self.all_sum([total])
        return total / max(targets, 1), targets, tokens

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float] | None:
        if not self.eval_set:
            return None
        self.model.eval()
        mine = self.eval_set[self.rank :: self.world]
        total, count = 0.0, 0
        for i in range(0, len(mine), self.spec.micro_batch):
            chunk = mine[i : i + self.spec.micro_batch]
            total += nll_sum(self.model, chunk, self.pad_id, self.device, self.autocast).item()
            count += sum(e.targets for e in chunk)
        total, targets = self.all_sum([total, float(count)])
        loss = total / max(targets, 1.0)
        return loss, math.exp(min(loss, 50.0))

    def log_eval(self) -> None:
        result = self.evaluate()
        if result is not None and self.rank == 0:
            self.log({"step": self.step, "eval_loss": result[0], "eval_ppl": result[1]})
            self.progress.note(f"step {self.step}: held-out loss {result[0]:.4f}, perplexity {result[1]:.2f}")

    def run(self) -> None:
        spec = self.spec
        self.progress = Progress(self.total_steps, self.step, enabled=self.rank == 0)
        if self.rank == 0 and self.step == 0:
            self.log(
                {
                    "event": "start",
                    "train_examples": len(self.train_set),
                    "eval_examples": len(self.eval_set),
                    "truncated": self.truncated,
                    "steps": self.total_steps,
                    "trainable_parameters": sum(p.numel() for p in self.trainable),
                }
            )
        if self.step == 0:
            self.log_eval()  # collective: every rank
        pace = 1.0 / spec.max_steps_per_second if spec.max_steps_per_second else 0.0
        while self.step < self.total_steps:
            started = time.perf_counter()
            loss, targets, tokens = self.train_step()
            self.step += 1
            self.tokens_seen += tokens
            if pace:
                time.sleep(max(0.0, pace - (time.perf_counter() - started)))
            elapsed = time.perf_counter() - started
            if self.rank == 0:
                lr = self.scheduler.get_last_lr()[0]
                self.log(
                    {
                        "step": self.step,
                        "loss": loss,
                        "lr": lr,
                        "tokens": tokens,
                        "target_tokens": targets,
                        "tokens_per_s": tokens / elapsed,
                        "step_seconds": elapsed,
                    }
                )
                self.progress.update(loss, tokens, elapsed)
            if self.step % spec.eval_every == 0 and self.step < self.total_steps:
                self.log_eval()
            if self.step % spec.checkpoint_every == 0 and self.step < self.total_steps:
                self.save_checkpoint()
        self.log_eval()
        if self.rank == 0:
            self.progress.close()
            save_output(self.model, spec.lora, Path(spec.model), spec.out_dir)
            self.log({"event": "done", "step": self.step, "tokens_seen": self.tokens_seen})
        self.barrier()
        if self.world > 1:
            dist.destroy_process_group()


def die_with_parent() -> None:
    """Linux: the kernel kills this worker if its supervisor dies (even by SIGKILL), so no
    worker outlives its job."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() == 1:  # the supervisor was gone before the call
        os._exit(1)


def run_rank(spec: TrainSpec, rank: int, world: int, init_method: str, attempt: int) -> int:
    """Train as `rank` of `world` (the process group meets at `init_method`): 0 when done,
    EXIT_UNUSABLE when the job cannot run; a failure while training raises."""
    try:
        trainer = Trainer(spec, rank, world, init_method, attempt)
        spec.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        trainer.resume()
    except (DataError, CheckpointError, ValueError) as exc:  # JobMismatch, a LoRA target not found
        print(f"stratus train: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    trainer.run()
    return 0


def main(argv: list[str]) -> None:
    die_with_parent()
    spec_file, rank, world, port, attempt = argv
    spec = TrainSpec.from_json(Path(spec_file).read_text())
    sys.exit(run_rank(spec, int(rank), int(world), f"tcp://127.0.0.1:{port}", int(attempt)))


if __name__ == "__main__":
    main(sys.argv[1:])
