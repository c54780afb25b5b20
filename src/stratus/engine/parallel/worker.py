"""A rank other than 0 of a parallel replica: `python -m stratus.engine.parallel.worker`, started
by rank 0 (runner.py) with its `WorkerSpec` pickled on stdin.

It loads its share of the weights, then runs the steps rank 0 broadcasts until told to stop. It
exits on its own when rank 0 goes away: a collective fails at once when rank 0's process is
gone (its sockets close), and a watcher notices a new parent process within a second, so no
rank outlives its replica.
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
import threading
import time

log = logging.getLogger("stratus.engine")

EXIT_PARENT_GONE = 3
EXIT_GROUP_FAILED = 4


def _watch_parent(parent_pid: int) -> None:
    while True:
        if os.getppid() != parent_pid:
            os._exit(EXIT_PARENT_GONE)
        time.sleep(0.5)


def main() -> int:
    spec = pickle.loads(sys.stdin.buffer.read())  # noqa: S301 (written by rank 0, our parent)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank {spec.rank} %(levelname)s %(message)s")
    threading.Thread(target=_watch_parent, args=(spec.parent_pid,), name="parent-watch", daemon=True).start()

    from pathlib import Path

    from ..config import ModelConfig
    from .group import ParallelFailure
    from .runner import ParallelRunner

    path = Path(spec.path)
    try:
        runner = ParallelRunner(
            path, ModelConfig.from_dir(path), spec.config, spec.max_model_len, spec.rank, spec.port
        )
    except ParallelFailure as exc:
        log.error("%s", exc)
        return EXIT_GROUP_FAILED
    except Exception as exc:  # rank 0 has read the reason from the store
        log.error("could not load: %s: %s", type(exc).__name__, exc)
        return 1
    try:
        runner.follow()
    except ParallelFailure as exc:
        log.error("leaving the replica: %s", exc)
        return EXIT_GROUP_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
