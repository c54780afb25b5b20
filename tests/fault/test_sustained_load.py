"""Sustained mixed load against a real deployment: nothing lost, nothing doubled, nothing leaking.

A `stratus serve` gateway (access control and metering on, the model also loaded in the gateway,
its engine in a child process) and one `stratus worker` replica (its engine in a child process)
take open-loop Poisson traffic for `fault_seconds(20, 120)` s from bench/load.py's own code: chat
and completions, streamed and not, short and long, some with n=2, and a share of requests that
must be refused (an unknown model: 404; a key nobody issued, sent from another address: 401, or
429 once that address is locked out). A short warm-up load runs first, so that what a process
allocates once (connection pools, database connections, allocator arenas, the engine's first
batches) is in place before the measured window. Then the gateway is stopped (SIGTERM: it
drains) and the test asserts:

- no 5xx and no transport error; every request got the status its kind expects, and every good
  request was delivered with the tokens it asked for (`ignore_eos`: max_tokens per choice);
- reconciliation (tests/fault/reconcile.py): every delivered response has exactly one ledger row
  with the tokens the client was told and its audit record(s) (a stream: one opening, one
  closing); every refusal is audited once and holds at most a refused row with no completion
  tokens; no request id is charged or audited twice; the audit chain verifies;
- every process of the deployment stays flat (resource assertions, not timing ones): from the
  idle moment after the warm-up to the idle moment after the load has drained,
    open fds grow by at most FD_SLACK (the keep-alive connections a pool may still hold, a lazily
      opened file; a descriptor leaked per request would add one per request: hundreds), and
    RSS grows by at most RSS_SLACK_MIB in the gateway and the worker (allocator noise and caches
      that fill once: under 2 MiB measured; every request's Python objects pass through these
      two, and a leak of 32 KiB per request would exceed the bound in the full run's ~500
      requests, 160 KiB in the short run's ~100), and by at most ENGINE_RSS_SLACK_MIB in an
      engine process: its native memory (outside Python's heap, held by PyTorch's libraries)
      grows while the batches take shapes it has not seen before (measured: +6 and +21 MiB
      over the full run of the tiny model; the same batches repeated stay flat), so the bound
      there catches a gross leak, not that growth. The figures are printed (`pytest -s`).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from bench.load import Deployment, Mix, Result, Sampler, plan, run_load, summarize, unexpected
from tests.conftest import TINY_MODEL
from tests.fault.conftest import fault_seconds
from tests.fault.reconcile import Outcome, reconcile

DURATION = fault_seconds(20, 120)
WARMUP = 4.0  # seconds of load before the measured window
SETTLE = 3.0  # idle seconds after the load, before the last sample
RATE = 4.0  # requests per second: modest, so two busy shared cores keep up (open loop)
MIX = Mix(chat=5, completion=3, bad_model=0.5, bad_key=0.5, stream=0.5, long=0.2, n=0.1, long_tokens=64)
FD_SLACK = 8
RSS_SLACK_MIB = 16.0  # the gateway and the worker: every request passes through their Python
ENGINE_RSS_SLACK_MIB = 64.0  # an engine's native memory grows with batch shapes it has not seen yet

pytestmark = [pytest.mark.timeout(int(DURATION) + 300), pytest.mark.slow]


def observed(results: list[Result]) -> dict[str, Outcome]:
    """The clients' view, as tests/fault/reconcile.py reads it."""
    return {
        r.request_id: Outcome(
            status=r.status,
            complete=r.complete,
            stream=r.stream,
            prompt_tokens=r.prompt_tokens,
            completion_tokens=r.completion_tokens,
            error=r.code,
        )
        for r in results
    }


def idle_growth(series: list[tuple[float, float, int]], load_from: float, load_to: float) -> dict:
    """RSS (MiB) and fds of one process at its last sample before the load and its last sample
    after it (idle both times), and the growth between them."""
    before = [s for s in series if s[0] <= load_from]
    after = [s for s in series if s[0] >= load_to]
    assert before and after, f"no idle sample on both sides of the load: {series[:3]} ... {series[-3:]}"
    (_, rss0, fd0), (_, rss1, fd1) = before[-1], after[-1]
    return {"rss_mib": (rss0, rss1), "fds": (fd0, fd1), "rss_growth": rss1 - rss0, "fd_growth": fd1 - fd0}


def test_sustained_mixed_load_loses_nothing_doubles_nothing_and_leaks_nothing(tiny_checkpoint, tmp_path):
    data_dir = tmp_path / "gateway"  # ServeProcess has it searched for secrets and prompts at the end
    warm_shots = plan(MIX, RATE, WARMUP, seed=1, prefix="warm")
    load_shots = plan(MIX, RATE, DURATION, seed=2, prefix="load")
    threads = ("--num-threads", "1")  # two engines on two shared cores
    with Deployment(tiny_checkpoint, data_dir, TINY_MODEL, 1, True, threads, threads) as d:
        warm = asyncio.run(run_load(d.url, d.key, TINY_MODEL, warm_shots))
        time.sleep(SETTLE)
        with Sampler(d.roots(), every=0.5) as sampler:
            time.sleep(1.0)  # idle samples before the load
            load_from = time.monotonic() - sampler.t0
            results = asyncio.run(run_load(d.url, d.key, TINY_MODEL, load_shots))
            load_to = time.monotonic() - sampler.t0
            time.sleep(SETTLE)
        processes = set(sampler.series)
    assert d.gateway_exit == 0  # drained and stopped cleanly

    everything = warm + results
    summary = summarize(results, load_to - load_from)
    growth = {name: idle_growth(series, load_from, load_to) for name, series in sampler.series.items()}
    figures = {
        k: summary[k] for k in ("requests", "requests_per_s", "output_tokens_per_s", "by_status", "by_code")
    }
    print(f"\nsustained load, {DURATION:.0f} s at {RATE} req/s: {figures}, e2e ms {summary['e2e_ms']}")
    for name, g in sorted(growth.items()):
        print(
            f"  {name:<28} RSS {g['rss_mib'][0]:.1f} -> {g['rss_mib'][1]:.1f} MiB, fds {g['fds'][0]} -> {g['fds'][1]}"
        )

    # Every process of the deployment was watched: the gateway and its engine, the worker and its.
    assert {"gateway", "gateway/engine", "worker-1", "worker-1/engine"} <= processes

    # Nothing failed on the server's side; every request got the answer its kind expects.
    failed = [(r.request_id, r.status, r.code) for r in everything if r.status is None or r.status >= 500]
    assert not failed
    assert unexpected(everything) == []
    good = [
        (s, r)
        for s, r in zip(warm_shots + load_shots, everything, strict=True)
        if s.kind in ("chat", "completion")
    ]
    assert good and all(r.delivered for _, r in good)
    assert all(r.completion_tokens == s.max_tokens * s.n for s, r in good)
    assert {r.kind for r in everything} == {"chat", "completion", "bad_model", "bad_key"}

    # The ledger and the audit trail hold exactly what the clients saw.
    result = reconcile(observed(everything), data_dir)  # raises, naming request ids
    refused_rows = [row for r in everything if not r.delivered for row in result.rows.get(r.request_id, [])]
    assert all(row["status"] != "ok" and row["completion_tokens"] == 0 for row in refused_rows)
    assert result.chain_records >= len(everything)

    # Flat: the growth from idle to idle is bounded for every process.
    for name, g in growth.items():
        assert g["fd_growth"] <= FD_SLACK, (name, g)
        bound = ENGINE_RSS_SLACK_MIB if name.endswith("/engine") else RSS_SLACK_MIB
        assert g["rss_growth"] <= bound, (name, g)
