"""The Ray part of the settings: which models run as Ray actors, how many, with what resources.

    specs = build_specs({"demo": Path("models/demo")}, replicas="demo=2",
                        resources='demo={"CPU": 1, "node_type_a": 1}')

Plain parsing with no Ray import, so `stratus serve` checks its flags before connecting.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

MAX_REPLICAS = 256  # per model; a typo such as demo=1000 is refused rather than queued in Ray


@dataclass
class RayModelSpec:
    name: str
    path: Path
    replicas: int = 1
    resources: dict[str, float] = field(default_factory=lambda: {"CPU": 1.0})
    min_replicas: int | None = None  # autoscaling when both are set and max > min
    max_replicas: int | None = None

    @property
    def autoscaled(self) -> bool:
        return (
            self.min_replicas is not None
            and self.max_replicas is not None
            and self.max_replicas > self.min_replicas
        )


def parse_counts(text: str, models: list[str], what: str) -> dict[str, int]:
    """'demo=2,other=1' -> per-model counts; a bare '2' applies to every model."""
    text = text.strip()
    if text.isdigit():
        return dict.fromkeys(models, int(text))
    counts: dict[str, int] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not value.strip().isdigit():
            raise ValueError(f"{what}: expected MODEL=N (or one N for every model), got {item!r}")
        if name not in models:
            raise ValueError(f"{what}: no model named {name!r} is served (models: {', '.join(models)})")
        counts[name] = int(value)
    return counts


def parse_resources(text: str, models: list[str]) -> dict[str, dict[str, float]]:
    """'demo={"CPU": 1, "node_type_a": 1}; other={"GPU": 1}' -> per-model Ray resources."""
    found: dict[str, dict[str, float]] = {}
    for item in filter(None, (s.strip() for s in text.split(";"))):
        name, sep, raw = item.partition("=")
        name = name.strip()
        if not sep:
            raise ValueError(f"replica_resources: expected MODEL={{...}}, got {item!r}")
        if name not in models:
            raise ValueError(
                f"replica_resources: no model named {name!r} is served (models: {', '.join(models)})"
            )
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            raise ValueError(f"replica_resources: {name}: not a JSON object: {raw.strip()!r}") from None
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
            for k, v in value.items()
        ):
            raise ValueError(
                f'replica_resources: {name}: expected {{"RESOURCE": amount >= 0, ...}}, got {raw.strip()!r}'
            )
        found[name] = {k: float(v) for k, v in value.items()}
    return found


def build_specs(
    paths: dict[str, Path],
    replicas: str | None = None,
    resources: str | None = None,
    min_replicas: str | None = None,
    max_replicas: str | None = None,
) -> dict[str, RayModelSpec]:
    """Every served model as a Ray model, from the settings' strings; raises ValueError."""
    models = list(paths)
    counts = parse_counts(replicas, models, "replicas") if replicas else {}
    shapes = parse_resources(resources, models) if resources else {}
    lows = parse_counts(min_replicas, models, "min_replicas") if min_replicas else {}
    highs = parse_counts(max_replicas, models, "max_replicas") if max_replicas else {}
    specs: dict[str, RayModelSpec] = {}
    for name, path in paths.items():
        low, high = lows.get(name), highs.get(name)
        if (low is None) != (high is None):
            raise ValueError(f"model {name!r}: autoscaling needs both min_replicas and max_replicas")
        if low is not None and high is not None and not 0 <= low <= high <= MAX_REPLICAS:
            raise ValueError(f"model {name!r}: need 0 <= min_replicas <= max_replicas <= {MAX_REPLICAS}")
        count = counts.get(name, low if low is not None else 1)
        if low is not None and high is not None and not low <= count <= high:
            raise ValueError(f"model {name!r}: replicas={count} is outside min_replicas..max_replicas")
        if not 0 <= count <= MAX_REPLICAS:
            raise ValueError(f"model {name!r}: replicas must be between 0 and {MAX_REPLICAS}")
        spec = RayModelSpec(name, path, count, min_replicas=low, max_replicas=high)
        if name in shapes:
            spec.resources = shapes[name]
        specs[name] = spec
    return specs
