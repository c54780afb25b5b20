"""The supervisor of a training job: starts the workers, watches them, and when one dies stops
the rest and starts the job again from its last checkpoint, with the workers that remain (or
as many as before), until it finishes or has restarted `max_restarts` times.

The workers are local processes (processes.py) or Ray actors (ray_workers.py); the process group
they form meets on a fresh port per attempt. `workers.json` in the output directory names the
current attempt's processes.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .checkpoint import latest, write_atomically
from .processes import ProcessLauncher
from .spec import EXIT_UNUSABLE, TrainSpec

log = logging.getLogger("stratus.train")

POLL_SECONDS = 0.05
STOP_GRACE_SECONDS = 10.0


class TrainingFailed(RuntimeError):
    pass


class WorkerGroup(Protocol):
    """One attempt's workers, however they run (processes.py, ray_workers.py)."""

    pids: list[int]

    def poll(self) -> list[int | None]:
        """Each rank's exit status, None while it runs; negative: lost (killed by a signal,
        its actor or node gone)."""
        ...

    def describe(self, code: int) -> str: ...

    def stop(self) -> None: ...


class Launcher(Protocol):
    def launch(self, spec: TrainSpec, spec_file: str, world: int, attempt: int) -> WorkerGroup: ...


@dataclass
class Result:
    out_dir: Path
    attempts: int
    workers: int  # in the attempt that finished
    eval_loss: float | None
    eval_ppl: float | None


def workers_that_fit(spec: TrainSpec, available: int) -> int:
    """The most workers, at most `available`, that share the global batch evenly."""
    for count in range(max(1, available), 0, -1):
        if spec.batch_size % count == 0:
            return count
    return 1


class _terminate_raises:
    """SIGTERM raises SystemExit while watching (main thread only), so the workers are stopped
    with the supervisor."""

    def __enter__(self) -> None:
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._raise)

    @staticmethod
    def _raise(signum, frame) -> None:
        raise SystemExit(128 + signum)

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


class Supervisor:
    def __init__(self, spec: TrainSpec, launcher: Launcher | None = None):
        self.spec = spec
        self.spec_file = spec.out_dir / "train.json"
        self.launcher: Launcher = launcher or ProcessLauncher()

    def event(self, row: dict) -> None:
        with self.spec.metrics_file.open("a") as handle:
            handle.write(json.dumps({"time": round(time.time(), 3), **row}) + "\n")

    def launch(self, world: int, attempt: int) -> WorkerGroup:
        group = self.launcher.launch(self.spec, str(self.spec_file), world, attempt)
        write_atomically(
            self.spec.out_dir / "workers.json",
            json.dumps(
                {"attempt": attempt, "workers": [{"rank": r, "pid": p} for r, p in enumerate(group.pids)]}
            ),
        )
        return group

    def watch(self, group: WorkerGroup) -> dict[int, int]:
        """Wait until every worker exits 0 (returns {}) or one fails: then stop the others and
        return the exit status of each rank that failed on its own."""
        while True:
            codes = group.poll()
            failed = {rank: code for rank, code in enumerate(codes) if code not in (None, 0)}
            if failed:
                group.stop()
                return failed
            if all(code == 0 for code in codes):
                return {}
            time.sleep(POLL_SECONDS)

    def run(self) -> Result:
        spec = self.spec
        spec.out_dir.mkdir(parents=True, exist_ok=True)
        self.spec_file.write_text(spec.to_json())
        if latest(spec.checkpoint_dir) is None:  # a fresh job (else: resumed, metrics continue)
            spec.metrics_file.unlink(missing_ok=True)
        world = workers_that_fit(spec, spec.workers)
        if world != spec.workers:
            raise TrainingFailed(
                f"--batch-size {spec.batch_size} is not a multiple of --workers {spec.workers}"
            )
        attempt = 0
        while True:
            group = self.launch(world, attempt)
            try:
                with _terminate_raises():
                    failed = self.watch(group)
            except BaseException:  # Ctrl-C, SIGTERM: take the workers down too
                group.stop()
                raise
            if not failed:
                break
            if EXIT_UNUSABLE in failed.values():
                raise TrainingFailed("the job cannot run (the worker's message is above)")
            codes = {rank: group.describe(code) for rank, code in failed.items()}
            attempt += 1
            resume = latest(spec.checkpoint_dir)
            if attempt > spec.max_restarts:
                raise TrainingFailed(
                    f"worker(s) {sorted(failed)} failed (exit codes {codes}); gave up after {spec.max_restarts} restarts"
                )
            if spec.shrink_on_failure:
                # Killed by a signal (SIGKILL, the OOM killer): lost. A rank that exited with an
                # error because a peer vanished from its collective is not, when one was killed.
                lost = [r for r, code in failed.items() if code < 0] or list(failed)
                world = workers_that_fit(spec, world - len(lost))
            log.warning(
                "worker(s) %s failed (exit codes %s); restarting with %d worker(s) from %s",
                sorted(failed),
                codes,
                world,
                resume.name if resume else "the beginning",
            )
            self.event(
                {
                    "event": "restart",
                    "attempt": attempt,
                    "failed_ranks": sorted(failed),
                    "exit_codes": codes,
                    "workers": world,
                    "from": resume.name if resume else None,
                }
            )
        if not spec.keep_checkpoints:
            shutil.rmtree(spec.checkpoint_dir, ignore_errors=True)
        return Result(spec.out_dir, attempt + 1, world, *last_eval(spec.metrics_file))


def last_eval(metrics_file: Path) -> tuple[float | None, float | None]:
    loss = ppl = None
    for line in metrics_file.read_text().splitlines():
        row = json.loads(line)
        if "eval_loss" in row:
            loss, ppl = row["eval_loss"], row["eval_ppl"]
    return loss, ppl


def read_metrics(metrics_file: Path) -> list[dict]:
    return [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
