"""Small random checkpoints shared by the engine tests (built once per session)."""

import pytest

from tests.checkpoints import build_checkpoint


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory):
    # init_std 0.1 gives peaked logits, so greedy choices are not decided by rounding noise.
    return build_checkpoint(tmp_path_factory.mktemp("llama"), "llama", hidden_size=128, init_std=0.1)


@pytest.fixture(scope="session")
def arch_dirs(tmp_path_factory):
    """One checkpoint per supported architecture, exercising tied embeddings and shards."""
    dirs = {}
    for arch in ("llama", "llama3", "mistral", "qwen2", "qwen3", "phi3", "gemma2"):
        dirs[arch] = build_checkpoint(
            tmp_path_factory.mktemp(arch),
            arch,
            hidden_size=128,
            init_std=0.1,
            tie_word_embeddings=arch in ("qwen2", "qwen3", "gemma2"),
            max_shard_size="200KB" if arch == "mistral" else None,
        )
    return dirs
