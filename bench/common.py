"""Helpers shared by the benchmarks under bench/: machine facts, memory bandwidth, checkpoints,
workloads. Standard library at import time, so a peer's venv (vLLM) can import this file too."""

from __future__ import annotations

import json
import os
import platform
import random
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
CHECKPOINT_DIR = REPO / "bench" / "results" / "checkpoints"


# -- the machine ---------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def total_ram_gib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    return 0.0


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_info() -> dict:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": round(total_ram_gib(), 1),
        "python": platform.python_version(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "git_commit": git_commit(),
        "load_average": [round(x, 2) for x in load_average()],
    }


def write_report(report: dict, path: Path) -> Path:
    """Write a run's JSON report (creating its folder) and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(f"\nresults: {path}")
    return path


def pct(values: list[float], q: float) -> float:
    """The q-quantile (q in [0, 1]) of `values`: the nearest rank at or above it."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- memory bandwidth ----------------------------------------------------------------------------


def copy_bandwidth(size_mib: int = 1024, repeats: int = 7, threads: int = 2) -> dict:
    """Best-of-N GB/s of `dst.copy_(src)` on two float32 tensors of `size_mib` MiB each, counted
    as STREAM does (bytes read + bytes written). Also the read-only rate of a sum over `src`,
    for reference. Both tensors are much larger than any CPU cache."""
    import torch

    torch.set_num_threads(threads)
    n = size_mib * 2**20 // 4
    src = torch.ones(n, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)  # touch every page before timing
    copy_s, read_s = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        dst.copy_(src)
        copy_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        src.sum()
        read_s.append(time.perf_counter() - t)
    size = n * 4
    return {
        "copy_gb_s": 2 * size / min(copy_s) / 1e9,
        "copy_gb_s_median": 2 * size / sorted(copy_s)[len(copy_s) // 2] / 1e9,
        "read_gb_s": size / min(read_s) / 1e9,
        "tensor_mib": size_mib,
        "threads": threads,
        "repeats": repeats,
    }


# -- checkpoints ---------------------------------------------------------------------------------

# A ~100M-parameter Llama: GPT-2-small width, 12 layers, grouped-query attention (12 query heads,
# 4 KV heads), SwiGLU 2048, vocab 16384. 100.7M parameters, untied, float32 (403 MB).
LLAMA_100M = dict(
    hidden_size=768,
    num_layers=12,
    num_heads=12,
    num_kv_heads=4,
    intermediate_size=2048,
    vocab_size=16384,
    max_position_embeddings=2048,
)


def random_llama(name: str, spec: dict, root: Path = CHECKPOINT_DIR) -> Path:
    """A random Llama checkpoint (tests/checkpoints.py) under `root/name`, built once and reused
    while its spec is unchanged."""
    out = root / name
    stamp = out / "bench_spec.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == spec and (out / "config.json").is_file():
        return out
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from tests.checkpoints import build_checkpoint

    out.mkdir(parents=True, exist_ok=True)
    build_checkpoint(out, "llama", **spec)
    stamp.write_text(json.dumps(spec, sort_keys=True))
    return out


def read_config(path: Path) -> dict:
    return json.loads((Path(path) / "config.json").read_text())


def parameter_counts(config: dict) -> dict:
    """Parameters of a Llama config.json, and the float32 bytes one decode step must read:
    every weight except the embedding table, of which a step reads only one row per token."""
    h = config["hidden_size"]
    i = config["intermediate_size"]
    v = config["vocab_size"]
    layers = config["num_hidden_layers"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or h // heads
    q, kv = heads * head_dim, kv_heads * head_dim
    per_layer = h * (q + 2 * kv) + q * h + 3 * h * i + 2 * h
    if config.get("attention_bias"):
        per_layer += q + 2 * kv
    tied = bool(config.get("tie_word_embeddings", False))
    embed = v * h
    head = 0 if tied else v * h
    total = embed + layers * per_layer + h + head
    # Tied: the embedding matrix is the LM head and is read in full. Untied: one row of it.
    read = total if tied else total - embed + h
    return {
        "parameters": total,
        "bytes_read_per_token_fp32": 4 * read,
        "kv_bytes_per_token_fp32": 4 * 2 * layers * kv,
    }


# -- workloads -----------------------------------------------------------------------------------


@dataclass
class Workload:
    prompts: list[list[int]]
    max_tokens: list[int]
    seed: int
    prompt_range: tuple[int, int]
    output_range: tuple[int, int]

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)

    @property
    def output_tokens(self) -> int:
        return sum(self.max_tokens)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict) -> Workload:
        return cls(
            raw["prompts"],
            raw["max_tokens"],
            raw["seed"],
            tuple(raw["prompt_range"]),
            tuple(raw["output_range"]),
        )


def make_workload(
    n: int,
    vocab_size: int,
    prompt_range: tuple[int, int],
    output_range: tuple[int, int],
    max_model_len: int,
    seed: int = 0,
    first_token_id: int = 8,
) -> Workload:
    """`n` requests of random token ids with uniformly mixed prompt and output lengths. Ids start
    at `first_token_id` so no prompt contains a special token (ids 0..6 in our tokenizers)."""
    rng = random.Random(seed)
    prompts, outs = [], []
    for _ in range(n):
        p = rng.randint(*prompt_range)
        o = rng.randint(*output_range)
        o = min(o, max_model_len - p)
        prompts.append([rng.randrange(first_token_id, vocab_size) for _ in range(p)])
        outs.append(o)
    return Workload(prompts, outs, seed, prompt_range, output_range)


def vllm_env(threads_bind: str = "0-1") -> dict:
    """Environment for vLLM's CPU build on this machine (docs/BENCHMARKS.md says how it is installed)."""
    env = dict(os.environ)
    env.update(
        VLLM_CPU_OMP_THREADS_BIND=threads_bind,  # both cores to the worker (default keeps one back)
        VLLM_CPU_KVCACHE_SPACE="2",  # GB
        VLLM_NO_USAGE_STATS="1",
        VLLM_HOST_IP="127.0.0.1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    return env


# -- contention ----------------------------------------------------------------------------------


def _clock_ticks() -> int:
    return os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (from /proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already inside user
    return (total - idle) / _clock_ticks()


def process_tree_cpu_seconds(root: int | None = None) -> float:
    """CPU seconds (user + system) of a process and its live descendants (vLLM runs its engine
    core and worker as child processes)."""
    root = root or os.getpid()
    parent, cpu = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        rest = raw[raw.rindex(")") + 2 :].split()  # fields after the command name
        parent[int(entry)] = int(rest[1])
        cpu[int(entry)] = (int(rest[11]) + int(rest[12])) / _clock_ticks()
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        for child, ppid in parent.items():
            if ppid == pid and child not in tree:
                tree.add(child)
                frontier.append(child)
    return sum(cpu.get(pid, 0.0) for pid in tree)


class CpuShare:
    """Cores this process tree and everything else on the machine used over an interval: a run
    during which others used a core or more of the two is not a clean measurement."""

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.busy = machine_busy_seconds()
        self.own = process_tree_cpu_seconds()

    def result(self) -> dict:
        wall = time.perf_counter() - self.wall
        busy = machine_busy_seconds() - self.busy
        own = process_tree_cpu_seconds() - self.own
        return {"own_cores": own / wall, "others_cores": max(0.0, busy - own) / wall}
