"""A small random checkpoint (tokenizer and chat template included) for the training tests."""

import pytest

from tests.checkpoints import build_checkpoint


@pytest.fixture(scope="session")
def train_llama(tmp_path_factory):
    return build_checkpoint(tmp_path_factory.mktemp("train-llama"), "llama", init_std=0.1)
