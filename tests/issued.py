"""Every secret the suite issues, every data directory it gives a gateway, every log line: at the
end of the session (tests/conftest.py: pytest_sessionfinish) each secret is searched for in the
SQLite files and in the captured logs, and the run fails if one is found.

    secret = record(keys.generate().secret)      # or record(response.json()["secret"])
    data_dir = data_dir_of(tmp_path)              # a gateway's --data-dir, searched at the end
"""

from __future__ import annotations

import logging
from pathlib import Path

SECRETS: list[str] = []
DATA_DIRS: list[Path] = []
OUTPUTS: list[str] = []  # output of child processes, with the deliberate bootstrap print removed


def record(secret: str) -> str:
    SECRETS.append(secret)
    return secret


def data_dir_of(path: Path) -> Path:
    DATA_DIRS.append(Path(path))
    return Path(path)


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


def leaks() -> list[str]:
    """Where each recorded secret (or its secret half) appears; empty when none does."""
    corpora: list[tuple[str, bytes]] = [("captured logs", "\n".join(CAPTURE.lines).encode())]
    corpora += [(f"child output {i}", text.encode()) for i, text in enumerate(OUTPUTS)]
    for d in DATA_DIRS:
        for f in sorted(d.rglob("*")) if d.exists() else []:
            if f.is_file():
                corpora.append((str(f), f.read_bytes()))
    found = []
    for secret in set(SECRETS):
        needles = {secret.encode(), secret.split("_", 1)[-1].encode()}
        for where, blob in corpora:
            if any(n in blob for n in needles):
                found.append(f"{secret[:22]}... found in {where}")
    return found
