"""A job's workers as Ray actors (`stratus train --ray-address`): spread over the cluster's
nodes, one actor per rank, the process group meeting on rank 0's node.

Every node reads the model and the data at the paths given and writes the checkpoints under
--out: they must be on storage every node sees at the same path (NFS, a shared volume). An actor
that dies, or whose node does, counts as a lost worker. Ray is imported only here (the `ray`
extra); the connection to the cluster is made before (cli/train.py, cluster/ray_connect.py).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from .spec import EXIT_UNUSABLE, TrainSpec

LOST = -9  # an actor (or its node) that died: lost, as a worker killed by a signal


class TrainActor:
    """One rank, in a Ray worker process."""

    def where(self) -> tuple[str, int, int]:
        """(this node's address, a free port on it, this process's id)."""
        import socket

        import ray

        with socket.socket() as sock:
            sock.bind(("", 0))
            port = sock.getsockname()[1]
        return ray.util.get_node_ip_address(), port, os.getpid()

    def run(self, spec_json: str, rank: int, world: int, init_method: str, attempt: int) -> int:
        from .worker import run_rank

        return run_rank(TrainSpec.from_json(spec_json), rank, world, init_method, attempt)


class RayGroup:
    def __init__(self, actors: list, refs: list, pids: list[int]):
        self.actors, self.refs, self.pids = actors, refs, pids
        self.codes: list[int | None] = [None] * len(refs)

    def poll(self) -> list[int | None]:
        import ray

        for rank, ref in enumerate(self.refs):
            if self.codes[rank] is not None or not ray.wait([ref], timeout=0)[0]:
                continue
            try:
                self.codes[rank] = int(ray.get(ref))
            except ray.exceptions.RayActorError:  # the actor's process or node is gone
                self.codes[rank] = LOST
            except ray.exceptions.RayTaskError:  # it raised while training
                self.codes[rank] = 1
        return list(self.codes)

    def describe(self, code: int) -> str:
        return "actor lost" if code == LOST else "unusable" if code == EXIT_UNUSABLE else f"error {code}"

    def stop(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)


class RayLauncher:
    def launch(self, spec: TrainSpec, spec_file: str, world: int, attempt: int) -> RayGroup:
        import ray

        threads = spec.threads or 1
        actor_class = ray.remote(num_cpus=threads, max_restarts=0)(TrainActor)
        env = {"env_vars": {"OMP_NUM_THREADS": str(threads)}}
        actors: list[Any] = [
            actor_class.options(scheduling_strategy="SPREAD", runtime_env=env).remote()  # type: ignore[attr-defined]
            for _ in range(world)
        ]
        places = ray.get([a.where.remote() for a in actors], timeout=300)
        host, port, _ = places[0]
        init_method = f"tcp://{host}:{port}"
        text = dataclasses.replace(spec, threads=threads).to_json()
        refs = [a.run.remote(text, rank, world, init_method, attempt) for rank, a in enumerate(actors)]
        return RayGroup(actors, refs, [pid for _, _, pid in places])
