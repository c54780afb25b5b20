"""`stratus train --lora ... --deploy URL --deploy-as BASE:NAME` against a real gateway: the
adapter it trains is loaded at run time and served as BASE:NAME through the API, answering what
the training model with that adapter answers (greedy)."""

import openai
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from stratus.cli import main
from stratus.engine.tokenizer import Tokenizer
from stratus.train.lora import LoraSpec, apply_lora, load_adapter_state
from stratus.train.model import load_causal_lm
from tests.chat_data import write_chat_set
from tests.conftest import TINY_MODEL

pytestmark = pytest.mark.timeout(300)

PROMPT = "Beautiful is better than"
LORA = "r=8,alpha=16,targets=q,v,down"


def greedy(model, tokenizer: Tokenizer, tokens: int) -> str:
    ids = tokenizer.encode(PROMPT)
    prompt_len = len(ids)
    with torch.no_grad():
        for _ in range(tokens):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return tokenizer.decode(ids[prompt_len:])


def test_a_trained_adapter_is_deployed_and_served(api_server, tiny_checkpoint, admin_key, tmp_path, http):
    data = write_chat_set(tmp_path / "chat.jsonl", 24)
    out = tmp_path / "adapter"
    args = ["train", "--model", str(tiny_checkpoint), "--data", str(data), "--out", str(out)]
    args += ["--lora", LORA, "--steps", "6", "--batch-size", "8", "--micro-batch", "8", "--seq-len", "48"]
    args += [
        "--lr",
        "2e-2",
        "--threads",
        "1",
        "--deploy",
        api_server.url,
        "--deploy-as",
        f"{TINY_MODEL}:trained",
    ]
    run = CliRunner().invoke(main, args, env={"STRATUS_API_KEY": admin_key}, catch_exceptions=False)
    assert run.exit_code == 0, run.output
    assert f"serves it as model {TINY_MODEL}:trained" in run.output
    try:
        model = load_causal_lm(tiny_checkpoint)
        apply_lora(model, LoraSpec.parse(LORA))
        load_adapter_state(model, load_file(str(out / "adapter_model.safetensors")))
        client = openai.OpenAI(base_url=api_server.url + "/v1", api_key=admin_key)
        answer = client.completions.create(
            model=f"{TINY_MODEL}:trained",
            prompt=PROMPT,
            max_tokens=8,
            temperature=0,
            extra_body={"ignore_eos": True},
        )
        tokenizer = Tokenizer(tiny_checkpoint)
        trained = greedy(model, tokenizer, 8)
        assert answer.choices[0].text == trained
        assert trained != greedy(load_causal_lm(tiny_checkpoint), tokenizer, 8)  # the adapter matters
    finally:
        http.delete(f"/admin/models/{TINY_MODEL}/adapters/trained")
