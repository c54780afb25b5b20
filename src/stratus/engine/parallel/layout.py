"""How one replica is split: which rank holds which heads, which slice of the MLP and of the
vocabulary (tensor parallel), and which layers (pipeline parallel).

Rank r is tensor-parallel rank r % tp of pipeline stage r // tp; rank 0 (stage 0, TP rank 0)
owns the scheduler and the KV block tables. A split that cannot be exact is refused here,
before any process starts, with what to change.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..config import ModelConfig
from ..types import CheckpointError

# Families whose checkpoints the rank loader (stage.py) slices and whose forward a stage runs.
SPLITTABLE_FAMILIES = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2"})


class LayoutError(CheckpointError):
    """This model cannot be split this way; the message says why and what would work."""


@dataclass(frozen=True, slots=True)
class Shard:
    """What one tensor-parallel rank holds of every layer of its stage."""

    tp_rank: int
    tp_size: int
    heads: tuple[int, int]  # query heads [start, end)
    kv_heads: tuple[int, int]  # KV heads [start, end); one head shared by several ranks when
    # there are fewer KV heads than ranks (replicated)
    intermediate: tuple[int, int]  # MLP columns [start, end)
    vocab: tuple[int, int]  # vocabulary rows [start, end), end may pass vocab_size (padding)


@dataclass(frozen=True, slots=True)
class Layout:
    tp: int
    pp: int
    stages: tuple[tuple[int, int], ...]  # layers [start, end) of each pipeline stage

    @property
    def world_size(self) -> int:
        return self.tp * self.pp

    def coords(self, rank: int) -> tuple[int, int]:
        """(pipeline stage, tensor-parallel rank) of `rank`."""
        return divmod(rank, self.tp)

    def rank(self, stage: int, tp_rank: int) -> int:
        return stage * self.tp + tp_rank

    def describe(self) -> str:
        return f"TP={self.tp} x PP={self.pp}"


@dataclass(frozen=True, slots=True)
class RankReport:
    """What one rank holds, for /admin/cluster and the benchmark."""

    rank: int
    stage: int
    tp_rank: int
    layers: tuple[int, int]  # [start, end)
    node: str  # host name
    pid: int
    weight_bytes: int
    kv_cache_bytes: int
    max_rss_bytes: int  # the process's peak resident memory so far

    def as_dict(self) -> dict:
        mib = 2**20
        return {
            "rank": self.rank,
            "stage": self.stage,
            "tp_rank": self.tp_rank,
            "layers": list(self.layers),
            "node": self.node,
            "pid": self.pid,
            "weight_mib": round(self.weight_bytes / mib, 2),
            "kv_cache_mib": round(self.kv_cache_bytes / mib, 2),
            "max_rss_mib": round(self.max_rss_bytes / mib, 1),
        }


def peak_rss_bytes() -> int:
    """This process's peak resident memory (VmHWM). Not getrusage's ru_maxrss: Linux carries
    that over fork and exec, so a rank started by rank 0 would report rank 0's peak."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def describe(tp: int, pp: int, ranks: list[RankReport]) -> dict:
    """A replica's layout as /admin/cluster shows it."""
    return {
        "tensor_parallel_size": tp,
        "pipeline_parallel_size": pp,
        "ranks": [r.as_dict() for r in ranks],
    }


def plan(config: ModelConfig, tp: int, pp: int) -> Layout:
    """The layout of `config` over tp x pp ranks, or LayoutError."""
    if tp * pp > 1 and config.family not in SPLITTABLE_FAMILIES:
        raise LayoutError(
            f"a {config.architecture} model cannot be split across ranks yet (tensor and pipeline "
            f"parallelism cover {', '.join(sorted(SPLITTABLE_FAMILIES))}): serve it with "
            "tensor_parallel_size=1 and pipeline_parallel_size=1"
        )
    check_tensor_parallel(config, tp)
    if config.quantization and tp * pp > 1:
        raise LayoutError(
            f"a {config.quantization.get('method')} checkpoint cannot be split across ranks yet: "
            "serve it with tensor_parallel_size=1 and pipeline_parallel_size=1, or split the "
            "float checkpoint"
        )
    if pp > config.num_layers:
        raise LayoutError(
            f"pipeline_parallel_size={pp} is more than the model's {config.num_layers} layers: "
            f"use at most {config.num_layers} stages"
        )
    return Layout(tp, pp, split_layers(config, pp))


def check_tensor_parallel(config: ModelConfig, tp: int) -> None:
    """Heads, KV heads and the MLP must divide evenly over `tp` ranks."""
    if tp == 1:
        return
    heads, kv, inter = config.num_heads, config.num_kv_heads, config.intermediate_size
    problems = []
    if heads % tp:
        problems.append(f"its {heads} attention heads")
    if kv >= tp and kv % tp:
        problems.append(f"its {kv} KV heads")
    if kv < tp and tp % kv:
        problems.append(f"its {kv} KV heads (fewer than the ranks: the ranks must be a multiple)")
    if inter % tp:
        problems.append(f"its MLP width {inter}")
    if problems:
        sizes = [n for n in range(2, 65) if _divides(config, n)]
        hint = (
            f"sizes that divide this model: {sizes[:6]}" if sizes else "this model cannot be split by heads"
        )
        raise LayoutError(f"tensor_parallel_size={tp} does not divide {' and '.join(problems)}; {hint}, or 1")


def _divides(config: ModelConfig, tp: int) -> bool:
    kv = config.num_kv_heads
    kv_ok = kv % tp == 0 if kv >= tp else tp % kv == 0
    return config.num_heads % tp == 0 and config.intermediate_size % tp == 0 and kv_ok


def shard(config: ModelConfig, tp: int, tp_rank: int) -> Shard:
    heads = config.num_heads // tp
    if config.num_kv_heads >= tp:
        kv_per = config.num_kv_heads // tp
        kv = (tp_rank * kv_per, (tp_rank + 1) * kv_per)
    else:  # fewer KV heads than ranks: each rank keeps the one its query heads read
        ranks_per_kv = tp // config.num_kv_heads
        head = tp_rank // ranks_per_kv
        kv = (head, head + 1)
    inter = config.intermediate_size // tp
    vocab = -(-config.vocab_size // tp)
    return Shard(
        tp_rank,
        tp,
        (tp_rank * heads, (tp_rank + 1) * heads),
        kv,
        (tp_rank * inter, (tp_rank + 1) * inter),
        (tp_rank * vocab, (tp_rank + 1) * vocab),
    )


def local_config(config: ModelConfig, part: Shard, layers: tuple[int, int]) -> ModelConfig:
    """The config of what one rank computes: its heads, MLP slice, vocabulary slice, layers."""
    return dataclasses.replace(
        config,
        num_heads=part.heads[1] - part.heads[0],
        num_kv_heads=part.kv_heads[1] - part.kv_heads[0],
        intermediate_size=part.intermediate[1] - part.intermediate[0],
        vocab_size=part.vocab[1] - part.vocab[0],
        num_layers=layers[1] - layers[0],
    )


def split_layers(config: ModelConfig, pp: int) -> tuple[tuple[int, int], ...]:
    """Consecutive runs of layers, one per stage, balanced by parameter count: the first stage
    also holds the embedding, the last the final norm and the output head, so the split that
    makes the largest stage smallest is chosen (exact, by dynamic programming)."""
    n = config.num_layers
    if pp == 1:
        return ((0, n),)
    h, v = config.hidden_size, config.vocab_size
    per_layer = (config.num_parameters() - v * h * (1 if config.tie_word_embeddings else 2) - h) / max(n, 1)
    first_extra, last_extra = v * h, v * h + h  # a tied head is a second copy on the last stage

    def cost(start: int, end: int, stage: int) -> float:
        c = (end - start) * per_layer
        if stage == 0:
            c += first_extra
        if stage == pp - 1:
            c += last_extra
        return c

    # best[s][i]: the smallest largest-stage cost of layers [0, i) over stages [0, s]
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(pp)]
    cut = [[0] * (n + 1) for _ in range(pp)]
    for i in range(1, n + 1):
        best[0][i] = cost(0, i, 0)
    for s in range(1, pp):
        for i in range(s + 1, n + 1):
            for j in range(s, i):
                c = max(best[s - 1][j], cost(j, i, s))
                if c < best[s][i]:
                    best[s][i], cut[s][i] = c, j
    bounds, end = [], n
    for s in range(pp - 1, 0, -1):
        start = cut[s][end]
        bounds.append((start, end))
        end = start
    bounds.append((0, end))
    return tuple(reversed(bounds))


def rank_parameters(config: ModelConfig, layout: Layout, rank: int) -> int:
    """Parameters `rank` holds: its shard of its stage's layers, its vocabulary rows (embedding
    on the first stage, head on the last; one copy when tied and both are here), the norms."""
    stage, tp_rank = layout.coords(rank)
    local = local_config(config, shard(config, layout.tp, tp_rank), layout.stages[stage])
    h, d = local.hidden_size, local.head_dim
    q, kv = local.num_heads * d, local.num_kv_heads * d
    per_layer = h * (q + 2 * kv) + q * h + 3 * h * local.intermediate_size
    per_layer += (4 if local.sandwich_norms else 2) * h  # norms, whole on every rank
    per_layer += 2 * d if local.qk_norm else 0  # Qwen3's per-head q/k norms, whole on every rank
    if local.attention_bias:
        per_layer += q + 2 * kv
    total = local.num_layers * per_layer
    first, last = stage == 0, stage == layout.pp - 1
    vocab_rows = local.vocab_size * h
    if first:
        total += vocab_rows
    if last:
        total += h + (0 if config.tie_word_embeddings and first else vocab_rows)
    return total


def check_weight_memory(config: ModelConfig, layout: Layout, dtype_bytes: int, limit_mb: int) -> None:
    """Refuse a layout whose largest rank would hold more than `limit_mb` MiB of weights, and
    say which tensor-parallel size would fit."""
    mib = 2**20

    def largest(lay: Layout) -> float:
        return max(rank_parameters(config, lay, r) for r in range(lay.world_size)) * dtype_bytes / mib

    need = largest(layout)
    if need <= limit_mb:
        return
    fits = None
    for tp in range(layout.tp + 1, 65):
        if _divides(config, tp) and largest(Layout(tp, layout.pp, layout.stages)) <= limit_mb:
            fits = tp
            break
    where = "in one process" if layout.world_size == 1 else f"on one rank of {layout.describe()}"
    hint = (
        f"split it further: tensor_parallel_size={fits} holds "
        f"{largest(Layout(fits, layout.pp, layout.stages)):.0f} MiB per rank"
        if fits
        else "no tensor-parallel size of this model fits; add pipeline stages or raise the limit"
    )
    raise LayoutError(
        f"the weights need {need:.0f} MiB {where}, over max_weight_memory_mb={limit_mb}: {hint}"
    )
