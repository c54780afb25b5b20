"""The training model computes transformers' logits, and its gradients flow."""

import json

import pytest
import torch

from stratus.engine.config import CheckpointError
from stratus.train.model import load_causal_lm
from tests.checkpoints import build_checkpoint, load_hf_model


@pytest.mark.parametrize(
    ("arch", "options"),
    [
        ("llama", {}),
        ("llama3", {}),
        ("qwen2", {"tie_word_embeddings": True}),  # q/k/v biases, one tensor for embedding and head
        ("mistral", {}),
    ],
)
def test_logits_match_transformers(tmp_path, arch, options):
    path = build_checkpoint(tmp_path, arch, init_std=0.1, **options)
    ids = torch.randint(0, 512, (3, 37), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = load_causal_lm(path)(ids)
        theirs = load_hf_model(path)(ids).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_sliding_window_matches_transformers(tmp_path):
    path = build_checkpoint(tmp_path, "mistral", init_std=0.1)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "sliding_window": 8}))
    ids = torch.randint(0, 512, (2, 30), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = load_causal_lm(path)(ids)
        theirs = load_hf_model(path)(ids).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_gradients_reach_every_weight(train_llama):
    model = load_causal_lm(train_llama)
    ids = torch.randint(0, 512, (2, 16))
    logits = model(ids)
    torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert missing == []


def test_a_missing_tensor_is_named(tmp_path):
    from safetensors.torch import load_file, save_file

    path = build_checkpoint(tmp_path, "llama")
    tensors = load_file(str(path / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.mlp\.up_proj\.weight missing"):
        load_causal_lm(path)
