"""Clients that open streams and then hardly read them, beside clients that read normally.

`stratus serve` (access control and metering on, the engine in its own process) gets streams
from slow readers: raw sockets with a tiny receive buffer that read a few bytes a second, so
the gateway's writes to them stall almost at once. While they are stalled, normal clients (each
with its own key) send completions and streams. It asserts:

- the normal clients complete their requests while every slow reader is still stalled (none has
  read its stream to the end): a gateway whose event loop or engine batch waited on a slow
  reader would never get them there, and the test would hit its timeout;
- the gateway process's RSS stays within RSS_BOUND of what it was before the slow readers came;
- when the slow readers finally disconnect, their requests end (each gets its closing audit
  record while the gateway runs on), the engine runs nothing, the gateway holds no more open
  sockets than before they came (their connections are closed); each has one ledger row and
  the closing record agrees with it: `client_disconnect` if its generation was still running
  (aborted), charged what was generated and handed to the connection, or `ok` if it had ended
  and the whole stream was already handed over (it sits in the kernel's socket buffers, which
  grow to tcp_wmem's maximum, MiBs: the committed-but-cut gap of reconcile.py); never more
  than `max_tokens`. Which one depends on the engine's speed: both are printed;
- reconciliation (tests/fault/reconcile.py) over every request, slow ones included.

Printed: the RSS before, the peak and the bound; what each slow reader read and was charged.
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import threading
import time

import httpx
import pytest

from stratus.security.keys import generate
from tests import issued
from tests.conftest import TINY_MODEL
from tests.fault.conftest import fault_seconds
from tests.fault.reconcile import Outcome, read_audit, reconcile
from tests.fault.traffic import Traffic, member_keys
from tests.live_server import ServeProcess

pytestmark = pytest.mark.timeout(300)

SLOW = int(fault_seconds(4, 16))  # slow readers
NORMAL = 3  # normal clients
SLOW_MAX_TOKENS = 400  # the tiny model's context is 512: the most a stream can hold
RCVBUF = 2048  # bytes: the slow reader's receive window (the kernel may round it up a little)
READ_BYTES, READ_EVERY = 16, 0.5  # the slow reader's pace: 32 bytes a second
RSS_BOUND = 64 * 2**20  # the gateway's RSS may grow by at most this much while readers stall


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1)) * 1024


def open_sockets(pid: int) -> list[str]:
    """The process's open sockets (a connection each, the listening one, the engine's pipes)."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:  # closed meanwhile
            continue
        if target.startswith("socket:"):
            found.append(target)
    return found


class SlowReader(threading.Thread):
    """One stream over a raw socket, read `READ_BYTES` every `READ_EVERY` s until `stop`."""

    def __init__(self, url: str, key: str, request_id: str):
        super().__init__(name=f"slow-{request_id}", daemon=True)
        self.address = httpx.URL(url)
        self.key, self.request_id = key, request_id
        self.received = b""
        self.stop = threading.Event()

    def run(self) -> None:
        payload = json.dumps(
            {
                "model": TINY_MODEL,
                "prompt": [5, 6, 7, 8],
                "max_tokens": SLOW_MAX_TOKENS,
                "ignore_eos": True,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
        ).encode()
        head = (
            f"POST /v1/completions HTTP/1.1\r\nHost: {self.address.host}\r\n"
            f"Authorization: Bearer {self.key}\r\nX-Request-Id: {self.request_id}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        ).encode()
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)  # before connect: the window
            sock.connect((self.address.host, self.address.port))
            sock.sendall(head + payload)
            sock.settimeout(READ_EVERY)
            while not self.stop.is_set():
                try:  # at the slow pace once the stream has started
                    data = sock.recv(READ_BYTES if self.started else 256)
                except TimeoutError:
                    continue
                if not data:
                    break
                self.received += data
                if self.started:
                    self.stop.wait(READ_EVERY)
            # gone without reading the rest: the gateway sees the connection reset
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    @property
    def started(self) -> bool:
        """The 200 and the first event arrived: admitted, generating, streaming."""
        return self.received.startswith(b"HTTP/1.1 200") and b"data: {" in self.received

    @property
    def done(self) -> bool:
        return b"data: [DONE]" in self.received

    def outcome(self) -> Outcome:
        return Outcome(status=200, complete=False, stream=True, error="disconnected by the test")


def metric(text: str, name: str) -> float:
    return sum(float(m) for m in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def test_slow_readers_do_not_hold_up_others_and_are_charged_what_they_got(tiny_checkpoint, tmp_path):
    data_dir = issued.data_dir_of(tmp_path / "data")
    admin = issued.record(generate().secret)
    server = ServeProcess(
        "--model", f"tiny={tiny_checkpoint}", "--data-dir", str(data_dir), env={"STRATUS_ADMIN_KEY": admin}
    )
    readers: list[SlowReader] = []
    admin_headers = {"Authorization": f"Bearer {admin}"}
    try:
        server.wait_ready()
        keys = member_keys(server.url, admin, SLOW + NORMAL)
        with Traffic(
            server.url, keys[SLOW:], prefix="warmup"
        ) as warmup:  # the gateway's steady size, before the fault
            warmup.wait_for(lambda s: s.outcome.delivered, count=2 * NORMAL)
        before, sockets = rss(server.proc.pid), len(open_sockets(server.proc.pid))

        readers = [SlowReader(server.url, keys[i], f"slow-{i}") for i in range(SLOW)]
        for r in readers:
            r.start()
        deadline = time.monotonic() + 60
        while not all(r.started for r in readers):
            assert time.monotonic() < deadline, "the slow readers' streams did not start"
            time.sleep(0.05)

        peak = rss(server.proc.pid)
        with Traffic(server.url, keys[SLOW:]) as traffic:
            want = int(fault_seconds(6, 60)) * NORMAL
            for count in range(1, want + 1):  # completes only if slow readers hold nothing up
                traffic.wait_for(lambda s: s.outcome.delivered, count=count)
                peak = max(peak, rss(server.proc.pid))
            time.sleep(fault_seconds(0, 30))  # the full form: a long stall under load
        stalled = [r.request_id for r in readers if not r.done and r.is_alive()]
        with httpx.Client(base_url=server.url, headers=admin_headers, timeout=30) as c:
            during = c.get("/metrics").text
        peak = max(peak, rss(server.proc.pid))

        for r in readers:  # the slow readers give up
            r.stop.set()
        for r in readers:
            r.join(30)
        # Each request has ended once its closing audit record is written (after its last byte,
        # or after its generation was aborted): read from the running gateway's database.
        deadline = time.monotonic() + 60
        while True:
            records, _ = read_audit(data_dir)
            closed = {
                r.request_id
                for r in readers
                if any(x.outcome != "streaming" for x in records.get(r.request_id, []))
            }
            if len(closed) == SLOW:
                break
            assert time.monotonic() < deadline, (
                f"the requests of slow readers never ended: {sorted({r.request_id for r in readers} - closed)}"
            )
            time.sleep(0.2)
        with httpx.Client(base_url=server.url, headers=admin_headers, timeout=30) as c:
            while metric(after := c.get("/metrics").text, "stratus_requests_running") != 0:
                assert time.monotonic() < deadline, "the engine still runs the slow readers' generations"
                time.sleep(0.2)
        deadline = time.monotonic() + 30
        while len(left := open_sockets(server.proc.pid)) > sockets:  # their connections are closed
            assert time.monotonic() < deadline, f"{len(left)} open sockets, {sockets} before: {left}"
            time.sleep(0.2)
    finally:
        for r in readers:
            r.stop.set()
        server.terminate()
        code = server.wait(60) if server.proc.poll() is None else server.proc.returncode
        server.kill()

    assert stalled == [r.request_id for r in readers], "a slow reader read its stream to the end"
    assert all(s.outcome.delivered for s in traffic.sent), [s.outcome for s in traffic.sent]
    assert peak - before <= RSS_BOUND, (before, peak)
    assert code == 0 and "Traceback" not in server.output, server.output[-4000:]

    observed = warmup.observed() | traffic.observed() | {r.request_id: r.outcome() for r in readers}
    result = reconcile(observed, data_dir)
    charged = {}
    for r in readers:
        # Aborted mid-generation (client_disconnect), or, when the whole stream fit in the
        # connection's buffers before the reader left, "ok": the committed-but-cut gap.
        (row,) = result.rows[r.request_id]
        assert row["status"] in ("client_disconnect", "ok"), row
        assert 0 < row["completion_tokens"] <= SLOW_MAX_TOKENS  # never more than was generated
        assert row["status"] == "client_disconnect" or r.request_id in result.committed_not_received
        closing = [rec for rec in result.records[r.request_id] if rec.outcome != "streaming"]
        assert [(rec.outcome, rec.completion_tokens) for rec in closing] == [
            (row["status"], row["completion_tokens"])
        ]
        events = r.received.count(b"data: {")
        charged[r.request_id] = (len(r.received), events, row["status"], row["completion_tokens"])
    aborted = metric(after, "stratus_aborted_requests_total")

    print(
        f"\nslow readers: {SLOW} stalled while {NORMAL} clients completed {len(traffic.sent)} requests; "
        f"gateway RSS {before / 2**20:.0f} MiB before, peak {peak / 2**20:.0f} MiB "
        f"(+{(peak - before) / 2**20:.1f} MiB, bound +{RSS_BOUND / 2**20:.0f} MiB); running during the "
        f"stall: {metric(during, 'stratus_requests_running'):.0f}, running after: "
        f"{metric(after, 'stratus_requests_running'):.0f}, aborted: {aborted:.0f}; per slow reader (bytes "
        f"read, events read, ledger status, completion tokens charged): {charged}"
    )
