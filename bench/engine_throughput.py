#!/usr/bin/env python3
"""Engine throughput: stratus against `transformers` generate and vLLM's CPU build, same
checkpoint, same requests, same machine, one run.

    .venv/bin/python bench/engine_throughput.py                      # demo + 100m, all engines
    .venv/bin/python bench/engine_throughput.py --models 100m --skip-vllm
    .venv/bin/python bench/engine_throughput.py --quick              # small, for a smoke test
    .venv/bin/python bench/engine_throughput.py --models 100m --only stratus --profile

What it measures, per model:

(a) offline throughput: N requests (64) of random token ids with mixed prompt and output
    lengths, greedy, ignore_eos, every engine on 2 threads; output tokens/s, excluding load:
    - stratus: `EngineCore`, all requests added, then `step()` until idle (run twice);
    - transformers: `generate` as a user would batch it: left padding, one batch (or
      --hf-batch-size), max_new_tokens = the batch's largest max_tokens; only the tokens each
      request asked for count as output (the padded tail is reported as well);
    - vLLM CPU (`bench/setup_vllm.sh` makes its venv): offline `LLM.generate` on token-id prompts
      in a subprocess of that venv, both cores (VLLM_CPU_OMP_THREADS_BIND=0-1).
(b) single-stream decode tokens/s of stratus against the memory-bandwidth limit: bandwidth from a
    large tensor copy in the same run; limit = bandwidth / float32 bytes of weights one token reads.
(c) seconds from spawning `stratus serve` to `/ready` answering 200.

Each engine runs in a fresh process. Results print as a table and go to
bench/results/engine_throughput-<time>.json. This file imports only the standard library at the
top, because vLLM's venv runs it too (as a worker).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (bench/common.py)

VLLM_PYTHON = common.REPO / "bench" / ".venv-vllm" / "bin" / "python"
THREADS = 2


# ================================================================================================
# Workers: each runs in its own process and writes one JSON result.
# ================================================================================================


def remap(prompts: list[list[int]], shift: int, vocab: int, first: int = 8) -> list[list[int]]:
    """Same lengths, different ids: a repeat or warm-up must not hit the prefix cache."""
    span = vocab - first
    return [[first + (t - first + shift * 7919) % span for t in p] for p in prompts]


def run_offline(engine, prompts, max_tokens, tag) -> tuple[float, int, int]:
    """Add every request (greedy, ignore_eos), step until idle: (seconds, output tokens, steps)."""
    from stratus.engine.types import GenerateRequest, SamplingParams

    t = time.perf_counter()
    for i, (ids, m) in enumerate(zip(prompts, max_tokens)):
        params = SamplingParams(max_tokens=m, temperature=0.0, ignore_eos=True)
        engine.add_request(GenerateRequest(prompt_token_ids=ids, params=params, request_id=f"{tag}-{i}"))
    steps = tokens = 0
    while engine.has_work():
        deltas = engine.step()
        steps += 1
        tokens += sum(len(d.token_ids) for d in deltas)
    return time.perf_counter() - t, tokens, steps


def warm_up(engine, work, vocab: int) -> None:
    """Allocator, kernels, the prefill and decode paths: eight short requests."""
    run_offline(engine, remap(work.prompts[:8], 99, vocab), [8] * min(8, len(work.prompts)), "warm")


def parse_settings(pairs) -> dict:
    """KEY=JSON strings as EngineConfig overrides: ["native_kernels=false"] -> {"native_kernels": False}."""
    settings = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        settings[key] = json.loads(value)
    return settings


def stratus_engine_config(max_num_batched_tokens: int, max_len: int) -> dict:
    """The EngineConfig fields every stratus run of these benchmarks uses."""
    return {
        "dtype": "float32",
        "max_num_seqs": 64,
        "max_num_batched_tokens": max_num_batched_tokens,
        "kv_cache_memory_mb": 2048,  # vLLM gets VLLM_CPU_KVCACHE_SPACE=2 (GB)
        "num_threads": THREADS,
        "max_model_len": max_len,
    }


def worker_stratus(spec: dict) -> dict:
    import torch

    torch.set_num_threads(THREADS)
    from stratus.engine.config import EngineConfig
    from stratus.engine.core import EngineCore
    from stratus.engine.types import GenerateRequest, SamplingParams

    work = common.Workload.from_json(spec["workload"])
    vocab = spec["vocab_size"]
    t0 = time.perf_counter()
    engine = EngineCore(spec["model"], EngineConfig(**spec["engine_config"]))
    load_s = time.perf_counter() - t0

    def run(prompts, max_tokens, tag):
        return run_offline(engine, prompts, max_tokens, tag)

    warm_up(engine, work, vocab)

    if spec.get("profile"):
        return {"load_s": load_s, "profile": profile_stratus(engine, run, work, vocab)}

    runs = []
    for r in range(spec["repeats"]):
        hits_before = engine.blocks.prefix_hits
        share = common.CpuShare()
        elapsed, tokens, steps = run(remap(work.prompts, r, vocab), work.max_tokens, f"run{r}")
        cpu = share.result()
        runs.append(
            {
                "seconds": elapsed,
                "output_tokens": tokens,
                "steps": steps,
                "output_tok_s": tokens / elapsed,
                "ms_per_step": 1000 * elapsed / steps,
                "prefix_cache_hit_tokens": engine.blocks.prefix_hits - hits_before,
                "preemptions": engine.scheduler.num_preemptions,
                **cpu,
            }
        )
        print(f"  stratus run {r + 1}: {tokens / elapsed:,.0f} output tok/s ({elapsed:.1f} s)", flush=True)

    single = []
    ss = spec["single_stream"]
    for r in range(ss["repeats"]):
        prompt = remap([work.prompts[0][: ss["prompt_tokens"]]], 1000 + r, vocab)[0]
        params = SamplingParams(max_tokens=ss["max_tokens"], temperature=0.0, ignore_eos=True)
        engine.add_request(GenerateRequest(prompt_token_ids=prompt, params=params, request_id=f"single{r}"))
        share = common.CpuShare()
        t_start = time.perf_counter()
        t_first = None
        tokens = 0
        while engine.has_work():
            got = sum(len(d.token_ids) for d in engine.step())
            if got and t_first is None:
                t_first = time.perf_counter()
            tokens += got
        t_end = time.perf_counter()
        single.append(
            {
                "prompt_tokens": len(prompt),
                "output_tokens": tokens,
                "first_token_s": t_first - t_start,
                "decode_tok_s": (tokens - 1) / (t_end - t_first),
                **share.result(),
            }
        )
        print(f"  stratus single stream {r + 1}: {single[-1]['decode_tok_s']:,.1f} decode tok/s", flush=True)
    return {"load_s": load_s, "runs": runs, "single_stream": single}


def profile_stratus(engine, run, work, vocab) -> dict:
    """Time each part of `EngineCore.step` by wrapping the engine's functions from outside (the
    engine is untouched), on the offline workload and on one stream. Seconds per part."""
    import torch.nn.functional as F

    import stratus.engine.core as core_mod
    import stratus.engine.model as model_mod
    import stratus.engine.tokenizer as tok_mod

    spent: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    clock = time.perf_counter
    where = ["other"]  # "decode" or "prefill" while inside Attention._decode / _prefill

    def timed(key, fn, sets=None):
        def wrapper(*args, **kwargs):
            name = key.format(where=where[-1])
            if sets:
                where.append(sets)
            t = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += clock() - t
                calls[name] += 1
                if sets:
                    where.pop()

        return wrapper

    def wrap(obj, attr, key, sets=None):
        if hasattr(obj, attr):
            setattr(obj, attr, timed(key, getattr(obj, attr), sets))

    runner, model = engine.runner, engine.runner.model
    wrap(engine, "step", "step (total)")
    wrap(engine.scheduler, "schedule", "scheduler.schedule")
    wrap(runner, "run", "runner.run (inputs + forward + logits)")
    wrap(model, "forward", "model forward (all layers)")
    wrap(model, "logits", "lm_head + .float()")
    wrap(model.rope, "forward", "rope")  # the cos/sin lookup, once per forward
    wrap(model_mod, "apply_rope_", "rope")  # the rotation of q and k, once per layer
    wrap(core_mod, "sample", "sample (argmax, .tolist)")
    wrap(core_mod, "apply_penalties", "apply_penalties")
    wrap(engine, "_append_token", "_append_token (incl. detokenize)")
    wrap(tok_mod.IncrementalDetokenizer, "push", "detokenizer.push")
    wrap(engine.blocks, "commit_full_blocks", "blocks.commit_full_blocks")
    wrap(engine.blocks, "allocate_slots", "blocks.allocate_slots")
    wrap(model_mod, "gather_blocks", "attention {where}: KV gather (gather_blocks)")
    wrap(F, "scaled_dot_product_attention", "attention {where}: sdpa")
    wrap(model_mod.native, "decode_attention", "attention decode (all)", sets="decode")  # the C kernel
    for layer in model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        wrap(attn, "forward", "attention module (all)")
        wrap(attn.qkv_proj, "forward", "linear qkv_proj")
        wrap(attn.o_proj, "forward", "linear o_proj")
        wrap(mlp, "forward", "mlp module (all)")
        wrap(mlp.gate_up_proj, "forward", "linear gate_up_proj")
        wrap(mlp.down_proj, "forward", "linear down_proj")
        wrap(layer.input_layernorm, "forward", "rmsnorm")
        wrap(layer.post_attention_layernorm, "forward", "rmsnorm")
        wrap(attn, "_decode", "attention decode (all)", sets="decode")
        wrap(attn, "_prefill", "attention prefill (all)", sets="prefill")

    def phase(prompts, max_tokens, tag):
        spent.clear()
        calls.clear()
        elapsed, tokens, steps = run(prompts, max_tokens, tag)
        return summarize_profile(spent, calls, elapsed, tokens, steps)

    offline = phase(remap(work.prompts, 7, vocab), work.max_tokens, "prof")
    single = phase(remap([work.prompts[0][:16]], 8, vocab), [128], "prof1")
    return {"offline": offline, "single_stream": single}


def summarize_profile(spent: dict, calls: dict, elapsed: float, tokens: int, steps: int) -> dict:
    total = spent["step (total)"]
    derived = {
        "step - run - schedule - sample - append - commit (python glue in step)": total
        - spent["runner.run (inputs + forward + logits)"]
        - spent["scheduler.schedule"]
        - spent["sample (argmax, .tolist)"]
        - spent["apply_penalties"]
        - spent["_append_token (incl. detokenize)"]
        - spent["blocks.commit_full_blocks"],
        "runner.run - forward - logits (input tensors, slot tables, masks)": spent[
            "runner.run (inputs + forward + logits)"
        ]
        - spent["model forward (all layers)"]
        - spent["lm_head + .float()"],
        "attention module - qkv - o - rope - decode - prefill (index_copy_, views)": spent[
            "attention module (all)"
        ]
        - spent["linear qkv_proj"]
        - spent["linear o_proj"]
        - spent["rope"]
        - spent["attention decode (all)"]
        - spent["attention prefill (all)"],
        "attention decode - gather (score and value matmuls, softmax, mask, copies)": spent[
            "attention decode (all)"
        ]
        - spent["attention decode: KV gather (gather_blocks)"],
    }
    return {
        "seconds": elapsed,
        "output_tokens": tokens,
        "steps": steps,
        "output_tok_s": tokens / elapsed,
        "spent_s": dict(spent),
        "calls": dict(calls),
        "derived_s": derived,
        "note": "wall time inside each wrapped function; nested entries are included in their parents",
    }


def worker_transformers(spec: dict) -> dict:
    import torch

    torch.set_num_threads(THREADS)
    import transformers

    work = common.Workload.from_json(spec["workload"])
    vocab = spec["vocab_size"]
    t0 = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32).eval()
    load_s = time.perf_counter() - t0
    config = model.config
    pad = config.pad_token_id if config.pad_token_id is not None else 0
    # ignore_eos: no end-of-sequence token, so every row runs to max_new_tokens.
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = pad
    for name in ("temperature", "top_p", "top_k"):
        setattr(model.generation_config, name, None)

    def generate(prompts, max_new):
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, p in enumerate(prompts):  # left padding, as tokenizer(padding_side="left") does
            ids[row, width - len(p) :] = torch.tensor(p)
            mask[row, width - len(p) :] = 1
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False)
        return out.shape[1] - width

    generate(remap(work.prompts[:8], 99, vocab), 8)  # warm-up

    batch = spec["hf_batch_size"]
    order = sorted(range(len(work.prompts)), key=lambda i: work.max_tokens[i])  # similar lengths together
    if batch >= len(order):
        order = list(range(len(order)))
    useful = generated = 0
    batches = []
    share = common.CpuShare()
    t = time.perf_counter()
    for start in range(0, len(order), batch):
        idx = order[start : start + batch]
        max_new = max(work.max_tokens[i] for i in idx)
        new = generate([work.prompts[i] for i in idx], max_new)
        assert new == max_new, f"generate stopped at {new} of {max_new} new tokens"
        useful += sum(work.max_tokens[i] for i in idx)
        generated += new * len(idx)
        batches.append({"size": len(idx), "max_new_tokens": max_new})
    elapsed = time.perf_counter() - t
    cpu = share.result()
    print(f"  transformers: {useful / elapsed:,.0f} output tok/s ({elapsed:.1f} s)", flush=True)
    return {
        "load_s": load_s,
        "transformers": transformers.__version__,
        "attn_implementation": getattr(config, "_attn_implementation", None),
        "runs": [
            {
                "seconds": elapsed,
                "output_tokens": useful,
                "generated_tokens_incl_padding": generated,
                "output_tok_s": useful / elapsed,
                "generated_tok_s": generated / elapsed,
                "batches": batches,
                **cpu,
            }
        ],
    }


def worker_vllm(spec: dict) -> dict:
    from vllm import LLM, SamplingParams

    try:
        from vllm.inputs import TokensPrompt
    except ImportError:  # older layouts: a plain dict is the same thing
        TokensPrompt = dict  # noqa: N806

    work = common.Workload.from_json(spec["workload"])
    vocab = spec["vocab_size"]
    kwargs = dict(
        model=spec["model"],
        dtype="float32",
        max_num_seqs=spec["max_num_seqs"],
        seed=0,
        max_model_len=spec["max_model_len"],
    )
    if spec.get("max_num_batched_tokens"):
        kwargs["max_num_batched_tokens"] = spec["max_num_batched_tokens"]
    t0 = time.perf_counter()
    llm = LLM(**kwargs)
    load_s = time.perf_counter() - t0

    def prompts_of(ids_list):
        return [TokensPrompt(prompt_token_ids=ids) for ids in ids_list]

    warm = remap(work.prompts[:8], 99, vocab)
    llm.generate(
        prompts_of(warm), SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True), use_tqdm=False
    )
    params = [SamplingParams(max_tokens=m, temperature=0.0, ignore_eos=True) for m in work.max_tokens]
    share = common.CpuShare()
    t = time.perf_counter()
    outs = llm.generate(prompts_of(work.prompts), params, use_tqdm=False)
    elapsed = time.perf_counter() - t
    cpu = share.result()
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    print(f"  vLLM: {tokens / elapsed:,.0f} output tok/s ({elapsed:.1f} s)", flush=True)
    sched = {}
    try:
        sc = llm.llm_engine.vllm_config.scheduler_config
        sched = {"max_num_batched_tokens": sc.max_num_batched_tokens, "max_num_seqs": sc.max_num_seqs}
    except AttributeError:
        pass
    import vllm

    return {
        "load_s": load_s,
        "vllm": vllm.__version__,
        "scheduler": sched,
        "runs": [{"seconds": elapsed, "output_tokens": tokens, "output_tok_s": tokens / elapsed, **cpu}],
    }


WORKERS = {"stratus": worker_stratus, "transformers": worker_transformers, "vllm": worker_vllm}


# ================================================================================================
# The orchestrator.
# ================================================================================================


def run_worker(
    kind: str, spec: dict, python: Path | str, env: dict | None, log: Path, timeout: float
) -> dict:
    """Run one worker in a fresh process; its output goes to `log` (and the tail to the screen on
    failure, or lines starting with two spaces as progress)."""
    with tempfile.TemporaryDirectory() as tmp:
        spec_file, result_file = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_file.write_text(json.dumps(spec))
        cmd = [
            str(python),
            __file__,
            "--worker",
            kind,
            "--spec",
            str(spec_file),
            "--result",
            str(result_file),
        ]
        t = time.perf_counter()
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
            try:
                for line in proc.stdout:
                    out.write(line)
                    if line.startswith("  ") and "tok/s" in line:
                        print(line, end="", flush=True)
                    if time.perf_counter() - t > timeout:
                        raise subprocess.TimeoutExpired(cmd, timeout)
                proc.wait(timeout=max(1.0, timeout - (time.perf_counter() - t)))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                return {"error": f"timed out after {timeout:.0f} s; log: {log}"}
        if proc.returncode != 0 or not result_file.is_file():
            tail = log.read_text().splitlines()[-25:]
            print("\n".join("    | " + s for s in tail), file=sys.stderr)
            return {"error": f"exit status {proc.returncode}; log: {log}"}
        result = json.loads(result_file.read_text())
        result["process_s"] = time.perf_counter() - t
        return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_ready(name: str, model: Path, log: Path, repeats: int, timeout: float = 120.0) -> dict:
    """Seconds from spawning `stratus serve` to GET /ready answering 200, `repeats` times."""
    stratus = common.REPO / ".venv" / "bin" / "stratus"
    if not stratus.exists():
        stratus_cmd = [sys.executable, "-m", "stratus.cli"]
    else:
        stratus_cmd = [str(stratus)]
    times, first_http = [], []
    for _ in range(repeats):
        port = free_port()
        data = Path(tempfile.mkdtemp(prefix="stratus-bench-"))
        cmd = [
            *stratus_cmd,
            "serve",
            "--model",
            f"{name}={model}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--data-dir",
            str(data),
        ]
        url = f"http://127.0.0.1:{port}/ready"
        with open(log, "a") as out:
            out.write(f"$ {' '.join(cmd)}\n")
            out.flush()
            t = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=data)
            ready = listening = None
            try:
                while time.perf_counter() - t < timeout and proc.poll() is None:
                    try:
                        with urllib.request.urlopen(url, timeout=1) as resp:
                            if resp.status == 200:
                                ready = time.perf_counter() - t
                                listening = listening or ready
                                break
                    except urllib.error.HTTPError:  # 503: listening, model not ready yet
                        listening = listening or time.perf_counter() - t
                    except (urllib.error.URLError, ConnectionError, OSError):
                        pass
                    time.sleep(0.02)
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                shutil.rmtree(data, ignore_errors=True)
        if ready is None:
            return {
                "error": f"not ready within {timeout:.0f} s (exit status {proc.returncode}); log: {log}",
                "command": " ".join(cmd),
            }
        times.append(ready)
        first_http.append(listening)
        print(
            f"  stratus serve -> /ready: {ready:.2f} s (first HTTP answer after {listening:.2f} s)",
            flush=True,
        )
    return {
        "seconds": times,
        "first_http_answer_s": first_http,
        "command": "stratus serve --model NAME=PATH --host 127.0.0.1 --port P --data-dir D",
    }


def resolve_model(name: str) -> Path | None:
    if name == "demo":
        path = common.REPO / "models" / "demo"
        return path if (path / "config.json").is_file() else None
    if name == "100m":
        return common.random_llama("llama-100m", common.LLAMA_100M)
    path = Path(name)
    return path if (path / "config.json").is_file() else None


def fmt(x: float | None, spec: str = ",.0f") -> str:
    return "—" if x is None else format(x, spec)


def best_runs(result: dict) -> list[float]:
    return [r["output_tok_s"] for r in result.get("runs", [])]


def bench_model(name: str, args, bandwidth: dict, stamp: str) -> dict:
    path = resolve_model(name)
    tag = Path(name).name or "model"  # for log file names
    if path is None:
        print(f"\n== {name}: no checkpoint (models/demo/ is made by scripts/train_demo_model.py); skipped")
        return {"model": name, "skipped": "no checkpoint"}
    config = common.read_config(path)
    counts = common.parameter_counts(config)
    max_len = min(config.get("max_position_embeddings", 2048), 2048)
    if args.quick:
        work = common.make_workload(16, config["vocab_size"], (16, 128), (16, 64), max_len, seed=args.seed)
    else:
        work = common.make_workload(
            args.requests, config["vocab_size"], (16, 256), (32, 256), max_len, seed=args.seed
        )
    print(
        f"\n== {name}: {path}  ({counts['parameters'] / 1e6:.1f}M parameters, vocab {config['vocab_size']}, "
        f"{len(work.prompts)} requests, {work.prompt_tokens} prompt + {work.output_tokens} output tokens)",
        flush=True,
    )
    engine_config = stratus_engine_config(args.max_num_batched_tokens, max_len)
    engine_config |= parse_settings(args.set)  # --set native_kernels=false: an A/B of one engine knob
    base = {"model": str(path), "workload": work.to_json(), "vocab_size": config["vocab_size"]}
    logs = common.RESULTS_DIR / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    out: dict = {
        "model": name,
        "path": str(path),
        "parameters": counts["parameters"],
        "bytes_read_per_token_fp32": counts["bytes_read_per_token_fp32"],
        "requests": len(work.prompts),
        "prompt_tokens": work.prompt_tokens,
        "output_tokens": work.output_tokens,
        "prompt_range": work.prompt_range,
        "output_range": work.output_range,
        "stratus_config": engine_config,
        "load_average_at_start": [round(x, 2) for x in common.load_average()],
    }
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=str(THREADS))
    only = set(args.only.split(",")) if args.only else {"stratus", "transformers", "vllm", "serve"}
    single = {
        "prompt_tokens": 16,
        "max_tokens": min(64 if args.quick else 256, max_len - 16),
        "repeats": 3,
    }
    if "stratus" in only:
        spec = {
            **base,
            "engine_config": engine_config,
            "repeats": args.repeats,
            "single_stream": single,
            "profile": args.profile,
        }
        out["stratus"] = run_worker(
            "stratus", spec, sys.executable, env, logs / f"{stamp}-{tag}-stratus.log", 3600
        )
        if args.profile:
            print_profile(out["stratus"])
    if "transformers" in only and not args.profile:
        spec = {**base, "hf_batch_size": args.hf_batch_size}
        out["transformers"] = run_worker(
            "transformers", spec, sys.executable, env, logs / f"{stamp}-{tag}-transformers.log", 3600
        )
    if "vllm" in only and not args.skip_vllm and not args.profile:
        if not VLLM_PYTHON.exists():
            out["vllm"] = {"error": "no bench/.venv-vllm; run bash bench/setup_vllm.sh"}
            print(f"  vLLM: skipped ({out['vllm']['error']})")
        else:
            spec = {
                **base,
                "max_num_seqs": 64,
                "max_model_len": max_len,
                "max_num_batched_tokens": args.vllm_max_num_batched_tokens,
            }
            out["vllm"] = run_worker(
                "vllm", spec, VLLM_PYTHON, common.vllm_env(), logs / f"{stamp}-{tag}-vllm.log", 1800
            )
    if "serve" in only and not args.profile and args.serve_repeats:
        out["serve_ready"] = serve_ready(
            tag, path.resolve(), logs / f"{stamp}-{tag}-serve.log", args.serve_repeats
        )
    out["load_average_at_end"] = [round(x, 2) for x in common.load_average()]
    summarize(out, bandwidth)
    return out


def summarize(out: dict, bandwidth: dict) -> None:
    """Derive ratios and the bandwidth fraction into `out`."""
    s = out.get("stratus", {})
    st = best_runs(s)
    out["summary"] = summary = {}
    if st:
        summary["stratus_tok_s_mean"] = statistics.mean(st)
        summary["stratus_tok_s_runs"] = st
    for peer in ("transformers", "vllm"):
        runs = best_runs(out.get(peer, {}))
        if runs:
            summary[f"{peer}_tok_s"] = runs[0]
            if st:
                summary[f"stratus_over_{peer}"] = statistics.mean(st) / runs[0]
    if s.get("single_stream"):
        decode = max(x["decode_tok_s"] for x in s["single_stream"])
        limit = bandwidth["copy_gb_s"] * 1e9 / out["bytes_read_per_token_fp32"]
        summary.update(
            single_stream_decode_tok_s=decode,
            single_stream_runs=[x["decode_tok_s"] for x in s["single_stream"]],
            bandwidth_limit_tok_s=limit,
            bandwidth_fraction=decode / limit,
            bandwidth_limit_read_tok_s=bandwidth["read_gb_s"] * 1e9 / out["bytes_read_per_token_fp32"],
        )


def cores(run: dict) -> str:
    """CPU cores the engine and everything else used during the timed part (2 cores here)."""
    if "own_cores" not in run:
        return "—"
    return f"{run['own_cores']:.1f} / {run['others_cores']:.1f}"


def print_model(out: dict, bandwidth: dict) -> None:
    if out.get("skipped"):
        return
    name = out["model"]
    s = out.get("summary", {})
    print(
        f"\n{name}: {out['parameters'] / 1e6:.1f}M parameters, {out['requests']} requests, "
        f"prompts {out['prompt_range'][0]}-{out['prompt_range'][1]} tokens ({out['prompt_tokens']} total), "
        f"outputs {out['output_range'][0]}-{out['output_range'][1]} tokens ({out['output_tokens']} total)"
    )
    print(f"  {'engine':<28}{'output tok/s':>14}{'seconds':>10}{'load s':>9}{'cores: own / others':>22}")
    for i, r in enumerate(out.get("stratus", {}).get("runs", [])):
        print(
            f"  {f'stratus (run {i + 1})':<28}{fmt(r['output_tok_s']):>14}{r['seconds']:>10.1f}"
            f"{out['stratus']['load_s']:>9.1f}{cores(r):>22}"
        )
    for peer, label in (("transformers", "transformers generate"), ("vllm", "vLLM CPU")):
        res = out.get(peer)
        if res is None:
            continue
        if "error" in res:
            print(f"  {label:<28}{'error':>14}  {res['error']}")
            continue
        r = res["runs"][0]
        print(
            f"  {label:<28}{fmt(r['output_tok_s']):>14}{r['seconds']:>10.1f}{res['load_s']:>9.1f}{cores(r):>22}"
        )
    if "error" in out.get("stratus", {}):
        print(f"  stratus: error {out['stratus']['error']}")
    for peer in ("vllm", "transformers"):
        key = f"stratus_over_{peer}"
        if key in s:
            target = 1.0 if peer == "vllm" else 3.0
            verdict = "meets" if s[key] >= target else "MISSES"
            print(f"  stratus / {peer}: {s[key]:.2f}x  (target >= {target:g}x: {verdict})")
    if "bandwidth_fraction" in s:
        verdict = "meets" if s["bandwidth_fraction"] >= 0.5 else "MISSES"
        print(
            f"  single stream: {s['single_stream_decode_tok_s']:.1f} decode tok/s (runs: "
            f"{', '.join(f'{x:.1f}' for x in s['single_stream_runs'])}; others used "
            f"{', '.join(cores(x).split(' / ')[1] for x in out['stratus']['single_stream'])} cores); limit {bandwidth['copy_gb_s']:.1f} GB/s / "
            f"{out['bytes_read_per_token_fp32'] / 1e6:.0f} MB per token = {s['bandwidth_limit_tok_s']:.1f} tok/s; "
            f"fraction {s['bandwidth_fraction']:.0%} (target >= 50%: {verdict})"
        )
    ready = out.get("serve_ready")
    if ready:
        if "error" in ready:
            print(f"  stratus serve -> /ready: error {ready['error']}")
        else:
            verdict = "meets" if max(ready["seconds"]) < 10 else "MISSES"
            print(
                f"  stratus serve -> /ready: {', '.join(f'{x:.2f}' for x in ready['seconds'])} s "
                f"(target < 10 s: {verdict}); HTTP up after "
                f"{', '.join(f'{x:.2f}' for x in ready['first_http_answer_s'])} s"
            )
    notes = []
    t = out.get("transformers", {})
    if t.get("runs"):
        r = t["runs"][0]
        notes.append(
            f"transformers {t['transformers']}: batches {[(b['size'], b['max_new_tokens']) for b in r['batches']]} "
            f"(size, max_new_tokens), left padding; counted {r['output_tokens']} requested tokens of "
            f"{r['generated_tokens_incl_padding']} generated ({fmt(r['generated_tok_s'])} tok/s incl. the padded tail)"
        )
    v = out.get("vllm", {})
    if v.get("runs"):
        notes.append(
            f"vLLM {v['vllm']}: scheduler {v.get('scheduler')}, load + engine init {v['load_s']:.0f} s"
        )
    sc = out["stratus_config"]
    notes.append(
        f"stratus EngineConfig: max_num_seqs={sc['max_num_seqs']}, max_num_batched_tokens="
        f"{sc['max_num_batched_tokens']}, kv_cache_memory_mb={sc['kv_cache_memory_mb']}, float32, 2 threads"
    )
    for note in notes:
        print(f"  - {note}")
    print(f"  load average: start {out['load_average_at_start']}, end {out['load_average_at_end']}")


def print_profile(result: dict) -> None:
    for name, prof in (result.get("profile") or {}).items():
        steps = prof["steps"]
        print(
            f"\n  profile, {name}: {prof['output_tokens']} tokens in {steps} steps, {prof['seconds']:.1f} s "
            f"({prof['output_tok_s']:,.1f} tok/s with timers)"
        )
        rows = sorted({**prof["spent_s"], **prof["derived_s"]}.items(), key=lambda kv: -kv[1])
        for key, sec in rows:
            print(f"    {key:<78}{sec:>8.2f} s{1000 * sec / steps:>9.2f} ms/step")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--models", default="demo,100m", help="comma-separated: demo, 100m, or checkpoint dirs")
    p.add_argument("--skip-vllm", action="store_true", help="leave vLLM out (it takes ~2 min to load)")
    p.add_argument("--quick", action="store_true", help="16 short requests: a smoke test, not a measurement")
    p.add_argument("--only", help="comma-separated subset of stratus,transformers,vllm,serve")
    p.add_argument("--profile", action="store_true", help="time each part of a stratus step instead")
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2, help="stratus offline runs (default 2)")
    p.add_argument("--serve-repeats", type=int, default=2, help="times to start `stratus serve` (0: skip)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="override a stratus EngineConfig field, e.g. --set native_kernels=false (repeatable)",
    )
    p.add_argument("--max-num-batched-tokens", type=int, default=2048, help="stratus token budget per step")
    p.add_argument("--vllm-max-num-batched-tokens", type=int, default=None, help="default: vLLM's own")
    p.add_argument(
        "--hf-batch-size", type=int, default=64, help="transformers batch size (default: one batch)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out", type=Path, help="result JSON (default bench/results/engine_throughput-<time>.json)"
    )
    args = p.parse_args()

    if args.worker:
        result = WORKERS[args.worker](json.loads(Path(args.spec).read_text()))
        Path(args.result).write_text(json.dumps(result))
        return 0

    stamp = time.strftime("%Y%m%d-%H%M%S")
    machine = common.machine_info()
    print(
        f"machine: {machine['cpu']}, {machine['cores']} cores, {machine['ram_gib']} GiB; "
        f"{machine['date']}; load average {machine['load_average']}"
    )
    bandwidth = common.copy_bandwidth(threads=THREADS)
    print(
        f"memory bandwidth (1 GiB float32 copy, best of {bandwidth['repeats']}, read + write): "
        f"{bandwidth['copy_gb_s']:.1f} GB/s (median {bandwidth['copy_gb_s_median']:.1f}); "
        f"read-only sum: {bandwidth['read_gb_s']:.1f} GB/s"
    )
    results = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        results.append(bench_model(name, args, bandwidth, stamp))
    bandwidth_end = common.copy_bandwidth(threads=THREADS)
    print(f"\nmemory bandwidth at the end: {bandwidth_end['copy_gb_s']:.1f} GB/s copy")
    print("\n================ engine throughput ================")
    print(f"{machine['cpu']}, {machine['cores']} cores, {machine['ram_gib']} GiB, {machine['date']}")
    for out in results:
        print_model(out, bandwidth)
    report = {
        "machine": machine,
        "bandwidth": bandwidth,
        "bandwidth_end": bandwidth_end,
        "load_average_end": [round(x, 2) for x in common.load_average()],
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "models": results,
    }
    common.write_report(report, args.out or common.RESULTS_DIR / f"engine_throughput-{stamp}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
