"""Small random checkpoints for the compression tests (built once per session)."""

import pytest

from tests.checkpoints import build_checkpoint


@pytest.fixture(scope="session")
def rand_dir(tmp_path_factory):
    # intermediate 200: down_proj's inputs are padded to the int4 group, gate_up's 400 rows to
    # the CPU kernel's row block; init_std 0.1 gives peaked logits, so greedy choices are stable.
    return build_checkpoint(
        tmp_path_factory.mktemp("rand"), "llama", hidden_size=128, intermediate_size=200, init_std=0.1
    )


@pytest.fixture(scope="session")
def qwen_dir(tmp_path_factory):
    """Biases on q/k/v and tied embeddings."""
    return build_checkpoint(
        tmp_path_factory.mktemp("qwen"), "qwen2", hidden_size=128, init_std=0.1, tie_word_embeddings=True
    )
