"""`stratus train` end to end: real worker processes, a real gloo process group, a real SIGKILL.

- Two workers give the loss curve of one worker with the doubled micro-batch: the same global
  batch, the loss normalised over the whole batch. Tolerance: 1e-5 absolute per step (float32
  sums reduced in another order).
- A worker killed mid-run (rank 1, and rank 0, which also hosts the rendezvous and writes the
  checkpoints): the supervisor restarts the job from its last checkpoint on the one
  worker that remains and it finishes; its final held-out loss is that of the uninterrupted run
  with the same seed within 1e-4 (the steps after the checkpoint are recomputed on one worker).
- A LoRA fine-tune of the demo model on a small chat set lowers the held-out loss, and PEFT
  loads the adapter and computes the same logits as stratus's model with it.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from stratus.train.spec import TrainSpec
from stratus.train.supervisor import Supervisor, read_metrics
from tests.chat_data import write_chat_set
from tests.checkpoints import build_checkpoint, load_hf_model

pytestmark = pytest.mark.timeout(300)

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo"


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    base = build_checkpoint(root / "base", "llama", init_std=0.1)
    data = write_chat_set(root / "chat.jsonl", 40)

    def spec(name: str, **options) -> TrainSpec:
        settings = dict(
            model=str(base),
            data=[str(data)],
            out=str(root / name),
            workers=2,
            batch_size=4,
            micro_batch=2,
            seq_len=48,
            steps=16,
            lr=3e-3,
            warmup_steps=2,
            eval_every=4,
            checkpoint_every=4,
            threads=1,
            seed=7,
        )
        return TrainSpec(**(settings | options))

    return spec


@pytest.fixture(scope="module")
def two_workers(job):
    spec = job("two")
    result = Supervisor(spec).run()
    assert (result.attempts, result.workers) == (1, 2)
    return spec


def losses(spec: TrainSpec) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in read_metrics(spec.metrics_file) if "loss" in m}


def test_two_workers_train_as_one_with_the_doubled_batch(job, two_workers):
    one = job("one", workers=1, micro_batch=4)
    Supervisor(one).run()
    a, b = losses(one), losses(two_workers)
    assert sorted(a) == list(range(1, 17)) and sorted(b) == sorted(a)
    assert max(abs(a[s] - b[s]) for s in a) < 1e-5, (a, b)
    assert a[16] < a[1]  # and it learns


def test_full_output_is_a_checkpoint_transformers_loads(two_workers):
    from stratus.train.model import load_causal_lm

    out = two_workers.out_dir
    assert not (out / "checkpoints").exists()  # removed after a successful run
    ids = torch.randint(0, 512, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(
            load_causal_lm(out)(ids), load_hf_model(out)(ids).logits, rtol=1e-5, atol=1e-5
        )


@pytest.mark.parametrize("victim", [1, 0])  # rank 0 also hosts the rendezvous and writes checkpoints
def test_a_killed_worker_resumes_from_the_checkpoint_and_finishes(job, two_workers, victim):
    spec = job(f"killed-{victim}", max_steps_per_second=3.0)  # ~5 s of steps: room to kill one mid-run
    result, killed_at = run_and_kill(spec, victim)
    assert (result.attempts, result.workers) == (2, 1)
    rows = read_metrics(spec.metrics_file)
    restart = next(m for m in rows if m.get("event") == "restart")
    assert victim in restart["failed_ranks"] and restart["exit_codes"][str(victim)] == "SIGKILL"
    resumed = next(m for m in rows if m.get("event") == "resumed")
    assert 0 < resumed["step"] <= killed_at and resumed["step"] % spec.checkpoint_every == 0
    assert max(m["step"] for m in rows if "loss" in m) == spec.steps
    survived, uninterrupted = final_eval(spec), final_eval(two_workers)
    assert abs(survived - uninterrupted) < 1e-4, (survived, uninterrupted)


def run_and_kill(spec: TrainSpec, victim: int, launcher=None):
    """Run the job, SIGKILL rank `victim` once a checkpoint is behind it; (result, step killed at)."""
    outcome: dict = {}
    thread = threading.Thread(
        target=lambda: outcome.update(result=Supervisor(spec, launcher).run()), daemon=True
    )
    thread.start()
    killed_at = None
    deadline = time.monotonic() + 240
    while killed_at is None and time.monotonic() < deadline and thread.is_alive():
        steps = [m["step"] for m in _metrics(spec) if "loss" in m and m["attempt"] == 0]
        if steps and spec.checkpoint_every < steps[-1] < spec.steps:
            workers = json.loads((spec.out_dir / "workers.json").read_text())["workers"]
            os.kill(workers[victim]["pid"], signal.SIGKILL)
            killed_at = steps[-1]
        time.sleep(0.02)
    assert killed_at is not None, "the run ended before a worker could be killed after a checkpoint"
    thread.join(timeout=240)
    return outcome["result"], killed_at


def final_eval(spec: TrainSpec) -> float:
    return max((m["step"], m["eval_loss"]) for m in read_metrics(spec.metrics_file) if "eval_loss" in m)[1]


def test_ray_actors_survive_a_lost_actor(job, two_workers):
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[test]'")
    from stratus.train.ray_workers import RayLauncher

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="stratus-train-test")
    try:
        spec = job("ray", max_steps_per_second=3.0)
        result, _ = run_and_kill(spec, 1, RayLauncher())
    finally:
        ray.shutdown()
    assert (result.attempts, result.workers) == (2, 1)
    restart = next(m for m in read_metrics(spec.metrics_file) if m.get("event") == "restart")
    assert restart["exit_codes"]["1"] == "actor lost"
    assert abs(final_eval(spec) - final_eval(two_workers)) < 1e-4


def _metrics(spec: TrainSpec) -> list[dict]:
    try:
        return read_metrics(spec.metrics_file)
    except (FileNotFoundError, json.JSONDecodeError):  # not there yet, or a line half written
        return []


@pytest.mark.skipif(not (DEMO / "config.json").is_file(), reason="models/demo is absent")
def test_lora_fine_tune_of_the_demo_model_loads_in_peft(tmp_path):
    from click.testing import CliRunner
    from peft import PeftModel
    from safetensors.torch import load_file

    from stratus.cli import main
    from stratus.train.lora import LoraSpec, apply_lora, load_adapter_state
    from stratus.train.model import load_causal_lm

    data = write_chat_set(tmp_path / "chat.jsonl", 48)
    out = tmp_path / "adapter"
    lora = "r=8,alpha=16,targets=q,k,v,o,gate,up,down"
    args = ["train", "--model", str(DEMO), "--data", str(data), "--out", str(out), "--lora", lora]
    args += ["--steps", "20", "--batch-size", "8", "--micro-batch", "8", "--seq-len", "48"]
    args += ["--lr", "1e-2", "--warmup", "2", "--eval-every", "10", "--threads", "1", "--seed", "3"]
    run = CliRunner().invoke(main, args, catch_exceptions=False)
    assert run.exit_code == 0, run.output
    assert f"adapter written to {out}" in run.output
    evals = [m["eval_loss"] for m in read_metrics(out / "metrics.jsonl") if "eval_loss" in m]
    assert evals[-1] < evals[0] - 0.5, evals  # measurably lower held-out loss on the task

    ours = load_causal_lm(DEMO)
    apply_lora(ours, LoraSpec.parse(lora))
    load_adapter_state(ours, load_file(str(out / "adapter_model.safetensors")))
    peft = PeftModel.from_pretrained(load_hf_model(DEMO), str(out)).eval()
    ids = torch.randint(0, 4096, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mine, theirs = ours(ids), peft(ids).logits
        base = load_hf_model(DEMO)(ids).logits
    torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4)
    assert (mine - base).abs().max() > 1e-2  # the adapter does change the model


def test_a_job_that_cannot_run_is_not_restarted(job, tmp_path):
    from stratus.train.supervisor import TrainingFailed

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "a"}]}\n{"prompt": "b"}\n')
    spec = job("bad", data=[str(bad)], workers=1)
    with pytest.raises(TrainingFailed, match="cannot run"):
        Supervisor(spec).run()
    assert not any(m.get("event") == "restart" for m in _metrics(spec))


def _alive(pid: int) -> bool:
    """Running (a zombie, waiting for whoever adopted it to reap it, is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="Linux only (PR_SET_PDEATHSIG)")
def test_workers_die_with_their_supervisor(job):
    import subprocess
    import sys

    spec = job("orphaned", steps=400, max_steps_per_second=2.0)
    args = ["--model", spec.model, "--out", spec.out, "--full", "--workers", "2", "--batch-size", "4"]
    args += ["--micro-batch", "2", "--seq-len", "48", "--steps", "400", "--threads", "1"]
    args += ["--max-steps-per-second", "2", "--data", spec.data[0]]
    supervisor = subprocess.Popen([sys.executable, "-m", "stratus.cli", "train", *args])
    try:
        deadline = time.monotonic() + 120
        while not any("loss" in m for m in _metrics(spec)) and time.monotonic() < deadline:
            assert supervisor.poll() is None, "stratus train ended early"
            time.sleep(0.1)
        pids = [w["pid"] for w in json.loads((spec.out_dir / "workers.json").read_text())["workers"]]
        assert all(_alive(p) for p in pids)
    finally:
        supervisor.kill()
        supervisor.wait()
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids), "a worker outlived its supervisor"
