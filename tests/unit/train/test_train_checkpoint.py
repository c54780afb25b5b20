"""Checkpoints: written whole or not at all, the newest two kept, resumable state."""

import torch

from stratus.train import checkpoint
from stratus.train.schedule import cosine_with_warmup, lr_factor


def _save(directory, step, model, optimizer, scheduler):
    return checkpoint.save(
        directory,
        step,
        0,
        lambda: None,
        lambda: {k: v.clone() for k, v in model.state_dict().items()},
        optimizer,
        scheduler,
        {"identity": "x"},
    )


def test_save_load_and_keep_two(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = cosine_with_warmup(optimizer, 2, 10)
    for step in (1, 2, 3):
        model(torch.ones(1, 3)).sum().backward()
        optimizer.step()
        scheduler.step()
        _save(tmp_path, step, model, optimizer, scheduler)
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-00000002", "step-00000003"]
    found = checkpoint.latest(tmp_path)
    assert found is not None and found.name == "step-00000003"
    expected_rng = torch.get_rng_state()
    torch.rand(5)  # move the generator on
    saved = checkpoint.load(found, 0)
    assert saved["state"] == {"identity": "x", "step": 3}
    torch.testing.assert_close(saved["weights"]["weight"], model.weight)
    fresh = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=0.1)
    fresh.load_state_dict(saved["optim"]["optimizer"])
    assert fresh.state_dict()["state"][0]["step"] == 3
    checkpoint.set_rng_state(saved["rng"])
    assert torch.equal(torch.get_rng_state(), expected_rng)
    assert checkpoint.load(found, 1)["rng"] is None  # a rank the job did not have


def test_a_partial_checkpoint_is_never_resumed_and_is_cleaned(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    _save(tmp_path, 4, model, optimizer, cosine_with_warmup(optimizer, 0, 10))
    (tmp_path / "step-00000008.tmp").mkdir()  # a rank died while writing step 8
    (tmp_path / "step-00000008.tmp" / "rng-rank0.pt").write_bytes(b"partial")
    assert checkpoint.latest(tmp_path).name == "step-00000004"
    checkpoint.clean_partial(tmp_path)
    assert not (tmp_path / "step-00000008.tmp").exists()


def test_schedule_warms_up_then_decays_to_the_floor():
    assert [lr_factor(s, 4, 20) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(12, 4, 20) == 0.5
    assert lr_factor(20, 4, 20, min_ratio=0.1) == 0.1


class _Planted:
    """A pickle that runs code when loaded: what a file planted in a checkpoint could hold."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_planted_pickle_in_a_checkpoint_runs_nothing_and_is_refused(tmp_path):
    import pytest

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    found = _save(tmp_path, 4, model, optimizer, cosine_with_warmup(optimizer, 0, 10))
    marker = tmp_path / "ran"
    for planted in ("optim.pt", "rng-rank0.pt"):
        saved = (found / planted).read_bytes()
        torch.save({"optimizer": _Planted(marker)}, found / planted)
        with pytest.raises(checkpoint.CheckpointUnreadable, match=planted.replace(".", r"\.")):
            checkpoint.load(found, 0)
        assert not marker.exists()
        (found / planted).write_bytes(saved)
    assert checkpoint.load(found, 0)["state"]["step"] == 4


def test_latest_names_only_a_checkpoint_beside_it(tmp_path):
    import pytest

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    _save(tmp_path / "job", 4, model, optimizer, cosine_with_warmup(optimizer, 0, 10))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "state.json").write_text("{}")
    (tmp_path / "job" / "latest").write_text("../elsewhere")
    with pytest.raises(checkpoint.CheckpointUnreadable, match="not a checkpoint"):
        checkpoint.latest(tmp_path / "job")
