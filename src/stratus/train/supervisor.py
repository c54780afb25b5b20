"""The supervisor of a training job: starts the workers, watches them, and when one dies stops
the rest and starts the job again from its last checkpoint, with the workers that remain (or
as many as before), until it finishes or has restarted `max_restarts` times.

The workers are local processes (`python -m stratus.train.worker`); the one process group they
form rendezvous on a fresh loopback port per attempt. `workers.json` in the output directory
names the current attempt's processes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import latest, write_atomically
from .spec import EXIT_UNUSABLE, TrainSpec

log = logging.getLogger("stratus.train")

POLL_SECONDS = 0.05
STOP_GRACE_SECONDS = 10.0


class TrainingFailed(RuntimeError):
    pass


@dataclass
class Result:
    out_dir: Path
    attempts: int
    workers: int  # in the attempt that finished
    eval_loss: float | None
    eval_ppl: float | None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def workers_that_fit(spec: TrainSpec, available: int) -> int:
    """The most workers, at most `available`, that share the global batch evenly."""
    for count in range(max(1, available), 0, -1):
        if spec.batch_size % count == 0:
            return count
    return 1


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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
    def __init__(self, spec: TrainSpec):
        self.spec = spec
        self.spec_file = spec.out_dir / "train.json"

    def event(self, row: dict) -> None:
        with self.spec.metrics_file.open("a") as handle:
            handle.write(json.dumps({"time": round(time.time(), 3), **row}) + "\n")

    def launch(self, world: int, attempt: int) -> list[subprocess.Popen]:
        port = free_port()
        threads = self.spec.threads or max(1, (os.cpu_count() or 1) // world)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "stratus.train.worker",
                    str(self.spec_file),
                    str(rank),
                    str(world),
                    str(port),
                    str(attempt),
                ],
                env=env,
            )
            for rank in range(world)
        ]
        write_atomically(
            self.spec.out_dir / "workers.json",
            json.dumps(
                {"attempt": attempt, "workers": [{"rank": r, "pid": p.pid} for r, p in enumerate(procs)]}
            ),
        )
        return procs

    def watch(self, procs: list[subprocess.Popen]) -> list[int]:
        """Wait until every worker exits 0 (returns []) or one fails: then stop the others and
        return the ranks that failed on their own."""
        while True:
            codes = [p.poll() for p in procs]
            failed = [rank for rank, code in enumerate(codes) if code not in (None, 0)]
            if failed:
                _stop(procs)
                return failed
            if all(code == 0 for code in codes):
                return []
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
            procs = self.launch(world, attempt)
            try:
                with _terminate_raises():
                    failed = self.watch(procs)
            except BaseException:  # Ctrl-C, SIGTERM: take the workers down too
                _stop(procs)
                raise
            if not failed:
                break
            if any(procs[rank].returncode == EXIT_UNUSABLE for rank in failed):
                raise TrainingFailed("the job cannot run (the worker's message is above)")
            codes = stop_signal_names({rank: procs[rank].returncode for rank in failed})
            attempt += 1
            resume = latest(spec.checkpoint_dir)
            if attempt > spec.max_restarts:
                raise TrainingFailed(
                    f"worker(s) {failed} failed (exit codes {codes}); gave up after {spec.max_restarts} restarts"
                )
            if spec.shrink_on_failure:
                # Killed by a signal (SIGKILL, the OOM killer): lost. A rank that exited with an
                # error because a peer vanished from its collective is not, when one was killed.
                lost = [r for r in failed if procs[r].returncode < 0] or failed
                world = workers_that_fit(spec, world - len(lost))
            log.warning(
                "worker(s) %s failed (exit codes %s); restarting with %d worker(s) from %s",
                failed,
                codes,
                world,
                resume.name if resume else "the beginning",
            )
            self.event(
                {
                    "event": "restart",
                    "attempt": attempt,
                    "failed_ranks": failed,
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


def stop_signal_names(codes: dict[int, int]) -> dict[int, str]:
    return {r: (signal.Signals(-c).name if c < 0 else f"exit {c}") for r, c in codes.items()}
