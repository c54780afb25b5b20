"""A GGUF file trains like the checkpoint it was made from, and a full fine-tune of one is
written as a Hugging Face checkpoint."""

import torch

from stratus.train.model import load_causal_lm
from stratus.train.output import save_checkpoint
from tests.checkpoints import load_hf_model
from tests.gguf_files import write_gguf


def test_gguf_source_and_hf_output(train_llama, tmp_path):
    gguf_file = write_gguf(train_llama, tmp_path / "m.gguf", "F32")
    ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(4))
    from_gguf = load_causal_lm(gguf_file)
    with torch.no_grad():
        torch.testing.assert_close(from_gguf(ids), load_causal_lm(train_llama)(ids), rtol=1e-5, atol=1e-5)
        save_checkpoint(from_gguf, gguf_file, tmp_path / "out")
        torch.testing.assert_close(
            load_hf_model(tmp_path / "out")(ids).logits, from_gguf(ids), rtol=1e-5, atol=1e-5
        )
    assert (tmp_path / "out" / "tokenizer.json").is_file()
