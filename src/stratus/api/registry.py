"""The models this gateway serves: load and warm each engine, report readiness, look them up.

Models load one after another in a worker thread (loading is synchronous and memory-heavy),
while the server already answers /health; /ready turns 200 once every model is warm.
Engines handed in ready-made (tests, benchmarks) are started but owned by the caller.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from stratus.api.errors import APIError, unavailable

if TYPE_CHECKING:
    from stratus.engine import Engine, EngineConfig, EngineStats

log = logging.getLogger("stratus.api")

State = Literal["loading", "ready", "failed"]


@dataclass
class ServedModel:
    name: str
    path: Path | None
    engine: Engine | None = None
    state: State = "loading"
    error: str | None = None
    owned: bool = True  # shut the engine down with the app
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def max_model_len(self) -> int | None:
        return self.engine.max_model_len if self.engine is not None else None


def model_not_found(name: str, available: list[str]) -> APIError:
    """The 404 for a model; `available` is what the caller may use (never other models' names)."""
    listed = ", ".join(sorted(available)) or "none"
    return APIError(
        404,
        f"The model '{name}' does not exist. Models served here: {listed}.",
        param="model",
        code="model_not_found",
    )


class ModelRegistry:
    def __init__(
        self,
        paths: dict[str, Path] | None = None,
        engines: dict[str, Engine] | None = None,
        engine_config: EngineConfig | None = None,
        isolation: str = "process",
    ):
        self.engine_config = engine_config
        self.isolation = isolation
        self.models: dict[str, ServedModel] = {}
        for name, path in (paths or {}).items():
            self.models[name] = ServedModel(name, Path(path))
        for name, engine in (engines or {}).items():
            self.models[name] = ServedModel(name, None, engine=engine, owned=False)

    @property
    def names(self) -> list[str]:
        return list(self.models)

    def check_health(self) -> None:
        """A ready model whose engine died (its process exited) becomes failed."""
        for m in self.models.values():
            if m.state == "ready" and m.engine is not None and not getattr(m.engine, "healthy", True):
                m.state, m.error = "failed", "the engine stopped (see the server log)"

    @property
    def ready(self) -> bool:
        self.check_health()
        return all(m.state == "ready" for m in self.models.values())

    @property
    def status(self) -> State:
        self.check_health()
        states = {m.state for m in self.models.values()}
        if "failed" in states:
            return "failed"
        return "ready" if states <= {"ready"} else "loading"

    async def load_all(self) -> None:
        for model in self.models.values():
            await self._load(model)
        if self.ready:
            log.info("ready: serving %s", ", ".join(self.models))

    async def _load(self, model: ServedModel) -> None:
        started = time.perf_counter()
        try:
            if model.engine is None:
                from stratus.engine import Engine

                log.info("loading model %s from %s", model.name, model.path)
                model.engine = await asyncio.to_thread(
                    Engine.from_pretrained, model.path, self.engine_config, self.isolation
                )
            await model.engine.start()  # includes warm-up
        except Exception as exc:  # reported by /ready; the server keeps answering
            model.state, model.error = "failed", f"{type(exc).__name__}: {exc}"
            log.error("model %s failed to load: %s", model.name, model.error)
            return
        model.state = "ready"
        log.info(
            "model %s ready (context window %d tokens, %.1f s)",
            model.name,
            model.engine.max_model_len,
            time.perf_counter() - started,
        )

    def get(self, name: str, visible: Callable[[str], bool] | None = None) -> ServedModel:
        """The model called `name`, or 404. `visible`: which models the caller may know of; a
        model it may not use is answered exactly as one that does not exist."""
        model = self.models.get(name)
        if model is None or (visible is not None and not visible(name)):
            raise model_not_found(name, [n for n in self.models if visible is None or visible(n)])
        return model

    def engine(self, name: str, retry_after: int = 2, visible: Callable[[str], bool] | None = None) -> Engine:
        """The engine for `name`, or 404 (unknown) / 503 (still loading, failed)."""
        model = self.get(name, visible)
        self.check_health()
        if model.state == "loading":
            raise unavailable(
                f"The model '{name}' is still loading; retry shortly.", retry_after, "model_loading"
            )
        if model.state == "failed":
            raise unavailable(
                f"The model '{name}' is unavailable: it failed to load or its engine stopped.",
                30,
                "model_failed",
            )
        assert model.engine is not None
        return model.engine

    def stats(self) -> dict[str, EngineStats | None]:
        return {
            m.name: m.engine.stats() if m.state == "ready" and m.engine is not None else None
            for m in self.models.values()
        }

    async def shutdown(self) -> None:
        for model in self.models.values():
            if model.owned and model.engine is not None:
                try:
                    await model.engine.shutdown()
                except Exception:
                    log.exception("shutting down model %s failed", model.name)
