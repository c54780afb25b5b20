"""Every secret the suite issues or sends, every prompt it sends, every data directory it gives a
gateway, every log line: at the end of the session (tests/conftest.py: pytest_sessionfinish)
each secret and each prompt is searched for in the gateways' data directories (SQLite files,
access logs, checkpoints), in an audit export of each, in the captured logs and in the output of
every `stratus serve` child, and the run fails if one is found (content logging is off unless a
test turns it on, and then the text is redacted and encrypted: still never in plain text).

    secret = record(keys.generate().secret)      # or record(response.json()["secret"])
    record_prompt("a prompt the test sends")     # or let `watch_http` below see it go
    data_dir = data_dir_of(tmp_path)              # a gateway's --data-dir, searched at the end

`watch_http` wraps httpx's send (which the openai client uses too), so every request a test sends
to a loopback server is seen: its bearer credential and its prompts are recorded, and so is any
secret an /admin response returns (keys, the webhook's). Requests pass through unchanged.
"""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import orjson

SECRETS: list[str] = []
PROMPTS: set[str] = set()
DATA_DIRS: list[Path] = []
OUTPUTS: list[str] = []  # output of child processes, with the deliberate bootstrap print removed
MIN_PROMPT = 16  # shorter prompts ("hi", "Hello") are words that occur anywhere by chance
MIN_SECRET = 20  # a deliberately malformed short credential ("nope") is not a secret
LOOPBACK = ("127.", "localhost", "[::1]", "::1")
GENERATION_PATHS = ("/v1/chat/completions", "/v1/completions")


def record(secret: str) -> str:
    SECRETS.append(secret)
    return secret


def record_prompt(text: str) -> str:
    if len(text) >= MIN_PROMPT:
        PROMPTS.add(text)
    return text


def _prompts_of(body: dict) -> list[str]:
    found = []
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            found.append(content)
        elif isinstance(content, list):
            found += [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
    prompt = body.get("prompt")
    found += [prompt] if isinstance(prompt, str) else [p for p in prompt or [] if isinstance(p, str)]
    return found


def _seen_request(request: httpx.Request) -> None:
    if not str(request.url.host).startswith(LOOPBACK):
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and len(token.strip()) >= MIN_SECRET:
        record(token.strip())
    if request.method == "POST" and request.url.path.endswith(GENERATION_PATHS):
        try:
            body = orjson.loads(request.content)
        except (orjson.JSONDecodeError, httpx.RequestNotRead):
            return
        if isinstance(body, dict):
            for text in _prompts_of(body):
                record_prompt(text)


def _seen_response(response: httpx.Response) -> None:
    if not response.request.url.path.startswith("/admin/") or not response.is_success:
        return
    try:
        secret = orjson.loads(response.content).get("secret")
    except (orjson.JSONDecodeError, httpx.ResponseNotRead, AttributeError):
        return
    if isinstance(secret, str):
        record(secret)


def watch_http() -> None:
    """Wrap httpx.Client.send and AsyncClient.send once (pytest_configure calls this)."""
    if getattr(httpx.Client.send, "_watched", False):
        return
    sync_send, async_send = httpx.Client.send, httpx.AsyncClient.send

    def send(self, request, **kwargs):
        _seen_request(request)
        response = sync_send(self, request, **kwargs)
        if not kwargs.get("stream"):
            _seen_response(response)
        return response

    async def asend(self, request, **kwargs):
        _seen_request(request)
        response = await async_send(self, request, **kwargs)
        if not kwargs.get("stream"):
            _seen_response(response)
        return response

    send._watched = True  # type: ignore[attr-defined]
    httpx.Client.send, httpx.AsyncClient.send = send, asend  # type: ignore[method-assign]


def data_dir_of(path: Path) -> Path:
    DATA_DIRS.append(Path(path))
    return Path(path)


GATEWAY_DIRS: list[Path] = []  # every live server's --data-dir (tests/live_server.py registers them)
GATEWAY_FILES = ("stratus.db*", "access*.jsonl", "audit-checkpoints.jsonl")


def gateway_dir(path: str | Path) -> None:
    """A live server's data directory: its database and logs are searched at the end. Only those
    files, as a test may keep other files (checkpoints, prompt lists) in the same folder."""
    if Path(path).is_absolute():
        GATEWAY_DIRS.append(Path(path))


def record_output(text: str) -> None:
    """A child's output; the lines after 'shown this once' (the first admin's key) are left out."""
    lines = text.splitlines()
    kept, skip = [], False
    for line in lines:
        if skip:
            skip = False
            continue
        if "shown this once" in line:
            skip = True
        kept.append(line)
    OUTPUTS.append("\n".join(kept))


class LogCapture(logging.Handler):
    """Every record that reaches the root logger, formatted as a handler would write it."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # a record that cannot be formatted is not this test's concern
            pass


CAPTURE = LogCapture()


def audit_export(data_dir: Path) -> bytes:
    """`stratus audit export` of a gateway's data directory (empty if it never audited)."""
    from click.testing import CliRunner

    from stratus.cli.main import main

    if not (data_dir / "audit.key").exists() or not (data_dir / "stratus.db").exists():
        return b""
    out = data_dir.parent / f"{data_dir.name}-audit-export.jsonl"
    result = CliRunner().invoke(main, ["audit", "export", "--data-dir", str(data_dir), "--out", str(out)])
    return out.read_bytes() if result.exit_code == 0 and out.exists() else b""


def _needles(text: str) -> set[bytes]:
    """The text as it would be stored raw, or escaped inside JSON."""
    return {text.encode(), orjson.dumps(text)[1:-1], text.encode("unicode_escape")}


def leaks() -> list[str]:
    """Where each recorded secret (or its secret half) or prompt appears; empty when none does."""
    corpora: list[tuple[str, bytes]] = [("captured logs", "\n".join(CAPTURE.lines).encode())]
    corpora += [(f"child output {i}", text.encode()) for i, text in enumerate(OUTPUTS)]
    for d in dict.fromkeys(DATA_DIRS):
        for f in sorted(d.rglob("*")) if d.exists() else []:
            if f.is_file():
                corpora.append((str(f), f.read_bytes()))
        corpora.append((f"audit export of {d}", audit_export(d)))
    for d in dict.fromkeys(p for p in GATEWAY_DIRS if p not in DATA_DIRS):
        for pattern in GATEWAY_FILES:
            corpora += [(str(f), f.read_bytes()) for f in sorted(d.glob(pattern)) if f.is_file()]
        corpora.append((f"audit export of {d}", audit_export(d)))
    found = []
    for secret in set(SECRETS):
        needles = {secret.encode()}
        if secret.startswith("sk-stratus-") and len(half := secret.split("_", 1)[-1]) >= MIN_SECRET:
            needles.add(half.encode())  # a stratus key's secret half, alone
        for where, blob in corpora:
            if any(n in blob for n in needles):
                found.append(f"{secret[:22]}... found in {where}")
    for prompt in PROMPTS:
        needles = _needles(prompt)
        for where, blob in corpora:
            if any(n in blob for n in needles):
                found.append(f"prompt {prompt[:30]!r}... found in {where}")
    return found
