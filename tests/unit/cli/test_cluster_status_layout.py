"""`stratus cluster status` shows each replica's layout (TPxPP) and a split one's ranks."""

from stratus.cli.cluster import RANK_COLUMNS, rank_rows, replica_rows


def replica(model, layout):
    return {
        "id": f"{model}/local",
        "kind": "local",
        "state": "up",
        "breaker": {"state": "closed"},
        "inflight": 0,
        "running": 0,
        "waiting": 0,
        "layout": layout,
    }


def rank(n, stage, tp):
    return {
        "rank": n,
        "stage": stage,
        "tp_rank": tp,
        "layers": [0, 12] if stage == 0 else [12, 24],
        "node": "node-a",
        "pid": 100 + n,
        "weight_mib": 190.5,
        "kv_cache_mib": 64.0,
        "max_rss_mib": 700.0,
    }


def test_a_split_replica_shows_its_layout_and_a_row_per_rank():
    split = {"tensor_parallel_size": 2, "pipeline_parallel_size": 2, "ranks": [rank(0, 0, 0), rank(3, 1, 1)]}
    whole = {"tensor_parallel_size": 1, "pipeline_parallel_size": 1, "ranks": [rank(0, 0, 0)]}
    data = {
        "models": [
            {
                "model": m,
                "state": "ready",
                "policy": "capacity",
                "retries": 0,
                "migrations": 0,
                "replicas": [replica(m, lay)],
            }
            for m, lay in (("big", split), ("small", whole))
        ]
    }
    assert [row["layout"] for row in replica_rows(data)] == ["2x2", "1x1"]
    ranks = rank_rows(data)  # the whole replica has no rank rows
    assert [(r["replica"], r["rank"], r["stage"], r["tp_rank"]) for r in ranks] == [
        ("big/local", 0, 0, 0),
        ("big/local", 3, 1, 1),
    ]
    assert [c.cell(ranks[1]) for c in RANK_COLUMNS][:5] == ["big/local", "3", "1", "1", "12-23"]
