#!/usr/bin/env python3
"""The gateway's own cost: an instant upstream directly, through stratus, through LiteLLM's proxy.

    bash bench/peers/litellm.sh                      # once: LiteLLM's proxy in bench/.venv-litellm
    .venv/bin/python bench/gateway.py                # ~3 minutes
    .venv/bin/python bench/gateway.py --quick        # short rounds, a smoke test (not a measurement)
    .venv/bin/python bench/gateway.py --baseline-src ../before/src --repeats 3   # A/B against a checkout

In one run, on loopback, with `wrk` (Debian's package) as the load generator, POSTing one small
chat completion request (non-streamed) per request:

- upstream:  bench/instant_upstream.py, an OpenAI-compatible server that answers at once (a raw
             asyncio protocol on uvloop: it is never the bottleneck);
- direct:    wrk against the upstream;
- stratus:   `stratus serve --no-local-models` as an operator runs it (default settings: access
             control, limits and usage metering, the audit trail, fail closed), the upstream
             registered as the upstream model `instant`, wrk holding a member's API key whose
             team is granted the model and has (generous) rpm/tpm limits;
- litellm:   LiteLLM's proxy (bench/.venv-litellm, from bench/peers/litellm.sh) with its master key
             and no database, `--num_workers` = the cores (its recommended production setting);

each at 1 and at 32 connections (`--connections`), printing requests/s, p50 and p99, and the ratios
(stratus / LiteLLM requests/s; stratus's p50/p99 added over direct at 1 connection).

Nothing is bought by weakening a guarantee, and the run checks it: while wrk loads stratus at the
highest connection count, a second key whose rpm limit is 2 sends 6 requests and must be refused
(429) at least twice; afterwards stratus is stopped (it drains its audit writer and ledger),
`stratus audit verify` must pass, and every request wrk completed must be in the audit trail with
status 200 and in the usage ledger (the trail holds at most one more record per connection: the
requests wrk cut off at its deadline).

Results print and go to bench/results/gateway-<time>.json with the machine facts, and CPU
milliseconds per request of each server's process tree (from /proc: robust to a busy machine where
requests/s are not). Where the CPU goes: bench/gateway_profile.py.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (bench/common.py)

REPO = common.REPO
sys.path.insert(0, str(REPO))
from tests.live_server import ServeProcess  # noqa: E402

MODEL = "instant"
TEAM = "bench"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "What is the capital of France?"}]}
LITELLM_VENV = REPO / "bench" / ".venv-litellm"


# -- processes -----------------------------------------------------------------------------------


class Listening:
    """A child process that prints 'listening on http://HOST:PORT' (or is polled on a known port)."""

    def __init__(self, cmd: list[str], env: dict[str, str] | None = None, url: str | None = None):
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            start_new_session=True,  # its workers are stopped with it
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.url = url or self._banner()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def _banner(self, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if m := re.search(r"listening on (http://[\d.]+:\d+)", line):
                    return m.group(1)
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        tail = "\n".join(self.lines[-20:])
        raise RuntimeError(f"no banner from {self.proc.args}: {tail}")

    def wait_http(self, path: str, headers: dict | None = None, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("exited: " + "\n".join(self.lines[-30:]))
            try:
                if httpx.get(self.url + path, headers=headers, timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{self.url}{path} did not answer 200: " + "\n".join(self.lines[-30:]))

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_cpu_s(root: int) -> float:
    """CPU seconds (user + system) used so far by `root` and its descendants (/proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += cpu.get(pid, 0.0)
        todo.extend(p for p, parent in parents.items() if parent == pid)
    return total


# -- wrk -----------------------------------------------------------------------------------------

_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    assert m, text
    return float(m.group(1)) * _UNIT[m.group(2)]


def wrk(url: str, key: str, connections: int, duration: float, server: int | None = None) -> dict:
    """wrk -t1 -cN --latency with a Lua script that POSTs BODY; its figures, parsed. With
    `server` (a pid), also the CPU milliseconds that process tree spent per completed request."""
    body = json.dumps(BODY).replace("\\", "\\\\").replace("'", "\\'")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            f"wrk.method = 'POST'\nwrk.body = '{body}'\n"
            "wrk.headers['Content-Type'] = 'application/json'\n"
            + (f"wrk.headers['Authorization'] = 'Bearer {key}'\n" if key else "")
        )
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        "--timeout",
        "10s",
        f"-d{duration:g}s",
        "--latency",
        "-s",
        script.name,
        url,
    ]
    cpu_before = tree_cpu_s(server) if server else 0.0
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    cpu = tree_cpu_s(server) - cpu_before if server else None
    os.unlink(script.name)
    pct = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)\s*$", out, re.M))
    if "99" not in pct:
        raise RuntimeError(f"wrk gave no latency distribution:\n{out}")
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)$", out, re.M)
    return {
        "cpu_ms_per_request": round(cpu * 1000 / max(requests, 1), 3) if cpu is not None else None,
        "connections": connections,
        "duration_s": duration,
        "requests": requests,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": _ms(pct["50"]),
        "p99_ms": _ms(pct["99"]),
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": errors.group(1).strip() if errors else "",
    }


# -- stratus -------------------------------------------------------------------------------------


def setup_steps(upstream: str) -> list[tuple[str, str, dict | None]]:
    """An admin's calls: the upstream as the model, a team granted it with (generous) limits, the
    member whose key wrk holds, and the user whose key is limited to 2 requests a minute."""
    return [
        (
            "POST",
            "/admin/upstreams",
            {"name": "instant", "model": MODEL, "base_url": upstream + "/v1", "upstream_model": MODEL},
        ),
        ("POST", "/admin/teams", {"name": TEAM}),
        ("PUT", f"/admin/teams/{TEAM}/models/{MODEL}", None),
        ("POST", "/admin/users", {"name": "member", "team": TEAM}),
        ("POST", "/admin/users", {"name": "limited", "team": TEAM}),
        ("PUT", "/admin/limits", {"scope": "team", "subject": TEAM, "rpm": 10**9, "tpm": 10**11}),
    ]


class Stratus:
    """`stratus serve --no-local-models` on a fresh data dir, the upstream registered, a member's key."""

    def __init__(self, upstream: str, data_dir: Path, extra: list[str], src: str | None = None):
        self.data_dir = data_dir
        self.admin_key = _fake_key()
        env = {"STRATUS_ADMIN_KEY": self.admin_key}
        if src:  # another checkout's code (--baseline-src)
            env["PYTHONPATH"] = src
        args = ["--no-local-models", "--data-dir", str(data_dir), "--log-level", "warning", *extra]
        self.server = ServeProcess(*args, env=env)
        self.url = self.server.url
        with self._admin() as c:
            for method, path, body in setup_steps(upstream):
                c.request(method, path, json=body).raise_for_status()
            member = c.post("/admin/keys", json={"name": "load", "user": "member", "team": TEAM}).json()
            limited = c.post("/admin/keys", json={"name": "over", "user": "limited", "team": TEAM}).json()
            c.put(
                "/admin/limits", json={"scope": "key", "subject": limited["key"]["id"], "rpm": 2}
            ).raise_for_status()
        self.key, self.key_id, self.prefix = member["secret"], member["key"]["id"], member["key"]["prefix"]
        self.limited_key = limited["secret"]

    def _admin(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, timeout=30, headers={"Authorization": f"Bearer {self.admin_key}"}
        )

    def pid(self) -> int:
        return self.server.proc.pid

    def stop(self) -> int | None:
        self.server.terminate()
        try:
            return self.server.wait(120)
        except Exception:
            self.server.kill()
            return None

    def counts(self) -> dict:
        """The member key's audit records and ledger rows, read from the SQLite store."""
        db = sqlite3.connect(self.data_dir / "stratus.db")
        try:
            by_status = dict(
                db.execute(
                    "SELECT status, count(*) FROM audit_events WHERE key_prefix = ? GROUP BY status",
                    (self.prefix,),
                ).fetchall()
            )
            ledger = dict(
                db.execute(
                    "SELECT status, count(*) FROM usage_ledger WHERE key_id = ? GROUP BY status",
                    (self.key_id,),
                ).fetchall()
            )
        finally:
            db.close()
        return {"audit_by_status": by_status, "ledger_by_status": ledger}

    def verify(self) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "stratus.cli", "audit", "verify", "--data-dir", str(self.data_dir)]
        return subprocess.run(cmd, capture_output=True, text=True)


def _fake_key() -> str:
    from stratus.security import keys

    return keys.generate().secret


def over_limit_probe(url: str, key: str, out: dict, stop: threading.Event) -> None:
    """Six requests with the rpm=2 key, spread over the round: at least two must be 429."""
    statuses = []
    with httpx.Client(timeout=30) as c:
        for _ in range(6):
            if stop.wait(0.3):
                break
            r = c.post(url + "/v1/chat/completions", json=BODY, headers={"Authorization": f"Bearer {key}"})
            statuses.append(r.status_code)
    out["statuses"] = statuses


# -- LiteLLM -------------------------------------------------------------------------------------


def start_litellm(upstream: str, workers: int, work: Path) -> tuple[Listening, str]:
    master = "sk-bench-" + secrets.token_hex(16)
    config = work / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: {upstream}/v1\n"
        "      api_key: none\n"
        "general_settings:\n"
        f"  master_key: {master}\n"
    )
    port = free_port()
    cmd = [str(LITELLM_VENV / "bin" / "litellm"), "--config", str(config), "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--num_workers", str(workers)]
    if workers > 1:  # its uvicorn workers die at start-up in this version; gunicorn's work
        cmd.append("--run_gunicorn")
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False"}
    proc = Listening(cmd, env=env, url=f"http://127.0.0.1:{port}")
    proc.wait_http("/health/liveliness")
    r = httpx.post(
        proc.url + "/v1/chat/completions",
        json=BODY,
        headers={"Authorization": f"Bearer {master}"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return proc, master


# -- the run -------------------------------------------------------------------------------------


def run_rounds(
    name: str, url: str, key: str, conns: list[int], duration: float, results: dict, server: int | None
) -> None:
    wrk(url, key, max(conns), min(duration, 3.0))  # warm-up: connections, pools, caches
    for c in conns:
        r = wrk(url, key, c, duration, server)
        results.setdefault(name, {})[str(c)] = r
        _print_round(name, r)


def measure_servers(
    servers: list[tuple[str, Stratus, dict]], conns: list[int], duration: float, repeats: int, results: dict
) -> None:
    """The stratus rounds, the servers' rounds interleaved (A B, then B A, ...) so that a machine
    busy with other work weighs on each alike; each server's figure at a connection count is its
    median round by requests/s. Into each server's checks goes what was sent with the member's
    key: completed requests and the connections wrk may have cut off at its deadlines (each may
    have left one more record), and what the rpm=2 key got during the first highest-count round."""
    for _name, stratus, into in servers:
        url = stratus.url + "/v1/chat/completions"
        r = httpx.post(url, json=BODY, headers={"Authorization": f"Bearer {stratus.key}"}, timeout=30)
        assert r.status_code == 200, r.text
        warm = wrk(url, stratus.key, max(conns), min(duration, 3.0))
        into["sent"] = {
            "completed": 1 + warm["requests"],
            "cut_off_at_most": warm["connections"],
            "non_2xx": warm["non_2xx"],
        }
    for c in conns:
        rounds: dict[str, list[dict]] = {name: [] for name, _, _ in servers}
        for rep in range(repeats):
            for name, stratus, into in servers if rep % 2 == 0 else servers[::-1]:
                probe: dict = {}
                stop = threading.Event()
                prober = None
                if c == max(conns) and rep == 0:
                    prober = threading.Thread(
                        target=over_limit_probe, args=(stratus.url, stratus.limited_key, probe, stop)
                    )
                    prober.start()
                res = wrk(stratus.url + "/v1/chat/completions", stratus.key, c, duration, stratus.pid())
                stop.set()
                if prober is not None:
                    prober.join()
                    into["over_limit_statuses"] = probe.get("statuses", [])
                rounds[name].append(res)
                _print_round(name, res)
                sent = into["sent"]
                sent["completed"] += res["requests"]
                sent["cut_off_at_most"] += c
                sent["non_2xx"] += res["non_2xx"]
        for name, got in rounds.items():
            median = sorted(got, key=lambda r: r["rps"])[len(got) // 2]
            results.setdefault(name, {})[str(c)] = {**median, "rounds_rps": [r["rps"] for r in got]}


def _print_round(name: str, r: dict) -> None:
    errors = f", socket errors {r['socket_errors']}" if r["socket_errors"] else ""
    cpu = f"   cpu {r['cpu_ms_per_request']:.3f} ms/req" if r.get("cpu_ms_per_request") is not None else ""
    print(
        f"  {name:8s} c={r['connections']:<3d} {r['rps']:10.0f} req/s   p50 {r['p50_ms']:7.3f} ms"
        f"   p99 {r['p99_ms']:7.3f} ms{cpu}   ({r['requests']} requests, non-2xx {r['non_2xx']}{errors})",
        flush=True,
    )


def ratios(results: dict, conns: list[int]) -> dict:
    out: dict = {}
    for c in conns:
        k = str(c)
        s, d, lite = (results.get(n, {}).get(k) for n in ("stratus", "direct", "litellm"))
        if s and lite:
            out[f"stratus_over_litellm_rps_c{c}"] = round(s["rps"] / lite["rps"], 2)
        if s and d:
            out[f"stratus_added_p50_ms_c{c}"] = round(s["p50_ms"] - d["p50_ms"], 3)
            out[f"stratus_added_p99_ms_c{c}"] = round(s["p99_ms"] - d["p99_ms"], 3)
            out[f"stratus_over_direct_rps_c{c}"] = round(s["rps"] / d["rps"], 4)
        base = results.get("baseline", {}).get(k)
        if s and base:
            out[f"stratus_over_baseline_rps_c{c}"] = round(s["rps"] / base["rps"], 2)
            if s.get("cpu_ms_per_request") and base.get("cpu_ms_per_request"):
                out[f"cpu_ms_per_request_c{c}_baseline_to_stratus"] = (
                    f"{base['cpu_ms_per_request']} -> {s['cpu_ms_per_request']}"
                )
        if lite and d:
            out[f"litellm_added_p50_ms_c{c}"] = round(lite["p50_ms"] - d["p50_ms"], 3)
    return out


def check(checks: dict) -> list[str]:
    """What the run must show of the guarantees; an empty list when all hold."""
    failures = []
    sent = checks.get("sent")
    if sent is None:
        return ["stratus was not measured"]
    if sent["non_2xx"]:
        failures.append(f"{sent['non_2xx']} of the member key's requests were not 2xx")
    refused = [s for s in checks.get("over_limit_statuses", []) if s == 429]
    if len(refused) < 2:
        failures.append(
            f"the rpm=2 key was refused {len(refused)} times of 6 (statuses {checks.get('over_limit_statuses')})"
        )
    if checks.get("audit_verify_rc") != 0:
        failures.append(f"audit verify failed: {checks.get('audit_verify')}")
    audit = {int(k): v for k, v in checks.get("audit_by_status", {}).items()}
    ledger = checks.get("ledger_by_status", {})
    total, ok = sum(audit.values()), audit.get(200, 0)
    if ok < sent["completed"]:
        failures.append(f"{sent['completed']} requests completed but only {ok} audit records with status 200")
    if total > sent["completed"] + sent["cut_off_at_most"]:
        failures.append(
            f"{total} audit records for {sent['completed']} completed requests (+ at most {sent['cut_off_at_most']} cut off)"
        )
    if sum(ledger.values()) < sent["completed"]:
        failures.append(f"{sent['completed']} requests completed but only {sum(ledger.values())} ledger rows")
    if checks.get("stratus_exit") not in (0, None) and checks.get("stratus_exit") != 0:
        failures.append(f"stratus exited with {checks.get('stratus_exit')} after SIGTERM")
    return failures


def print_summary(report: dict) -> None:
    print("\nratios:")
    for k, v in report["ratios"].items():
        print(f"  {k:32s} {v}")
    print("checks:", json.dumps(report["checks"], default=str))
    if report["failures"]:
        print("FAILED:")
        for f in report["failures"]:
            print("  -", f)
    else:
        print(
            "all guarantees held: every completed request audited (verify passed) and metered; the over-limit key was refused"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per wrk round")
    parser.add_argument("--connections", default="1,32")
    parser.add_argument("--quick", action="store_true", help="3 s rounds; a smoke test")
    parser.add_argument("--no-litellm", action="store_true")
    parser.add_argument(
        "--baseline-src",
        help="also measure stratus from another checkout's src/ (e.g. a git worktree of the commit before "
        "a change), right after this one, same checks: the A/B of an optimisation in one run",
    )
    parser.add_argument("--litellm-workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument(
        "--stratus-arg", action="append", default=[], help="an extra `stratus serve` argument"
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="rounds per connection count for stratus (median shown)"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install -y wrk")
    duration = 3.0 if args.quick else args.duration
    conns = [int(c) for c in args.connections.split(",")]
    machine = common.machine_info()
    print(
        f"machine: {machine['cpu']}, {machine['cores']} cores, load {machine['load_average']}, commit {machine['git_commit']}"
    )
    results: dict = {}
    checks: dict = {}
    work = Path(tempfile.mkdtemp(prefix="stratus-gateway-bench-"))
    upstream = Listening([sys.executable, str(REPO / "bench" / "instant_upstream.py")])
    servers: list = []
    litellm = None
    try:
        run_rounds(
            "direct", upstream.url + "/v1/chat/completions", "", conns, duration, results, upstream.proc.pid
        )

        runs = [("stratus", None, checks)]
        if args.baseline_src:
            checks["baseline"] = {}
            runs.append(("baseline", args.baseline_src, checks["baseline"]))
        for name, src, into in runs:
            servers.append((name, Stratus(upstream.url, work / f"{name}-data", args.stratus_arg, src), into))
        measure_servers(servers, conns, duration, args.repeats, results)
        for _name, stratus, into in servers:
            into["stratus_exit"] = stratus.stop()  # drains: the audit writer and the ledger flush
            into.update(stratus.counts())
            verified = stratus.verify()
            into["audit_verify_rc"] = verified.returncode
            into["audit_verify"] = (verified.stdout + verified.stderr).strip().splitlines()[-1:]
        servers = []

        if not args.no_litellm:
            if not (LITELLM_VENV / "bin" / "litellm").exists():
                print("  litellm: not installed (bash bench/peers/litellm.sh); skipped")
            else:
                litellm, master = start_litellm(upstream.url, args.litellm_workers, work)
                run_rounds(
                    "litellm",
                    litellm.url + "/v1/chat/completions",
                    master,
                    conns,
                    duration,
                    results,
                    litellm.proc.pid,
                )
                litellm.stop()
                litellm = None
    finally:
        for _, server, _ in servers:
            server.stop()
        if litellm is not None:
            litellm.stop()
        upstream.stop()
    report = {"machine": machine, "results": results, "checks": checks, "duration_s": duration}
    report["ratios"] = ratios(results, conns)
    failures = check(checks)
    if "baseline" in checks:
        failures += [f"baseline: {f}" for f in check(checks["baseline"])]
    report["failures"] = failures
    print_summary(report)
    common.write_report(report, common.RESULTS_DIR / f"gateway-{datetime.now():%Y%m%d-%H%M%S}.json")
    shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
