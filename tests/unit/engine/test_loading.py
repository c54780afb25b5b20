"""Bad checkpoints fail at load with a message naming the file and what was expected;
chat templates are untrusted and render in a sandbox."""

import fcntl
import json
import os
import pty
import shutil
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from stratus.engine import CheckpointError, EngineConfig, EngineCore, ValidationError
from stratus.engine.tokenizer import Tokenizer
from stratus.engine.types import GenerateRequest, SamplingParams


@pytest.fixture
def ckpt(llama_dir, tmp_path):
    target = tmp_path / "ckpt"
    shutil.copytree(llama_dir, target)
    return target


def load(path):
    return EngineCore(path, EngineConfig(kv_cache_memory_mb=8))


def edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


def test_unsupported_architecture(ckpt):
    edit_config(ckpt, architectures=["GPT2LMHeadModel"])
    with pytest.raises(CheckpointError, match=r"config.json.*GPT2LMHeadModel.*LlamaForCausalLM"):
        load(ckpt)


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "model.safetensors"])
def test_missing_file(ckpt, name):
    (ckpt / name).unlink()
    with pytest.raises(CheckpointError, match=name.split(".")[0]):
        load(ckpt)


def test_shape_mismatch_names_tensor_file_and_shapes(ckpt):
    edit_config(ckpt, intermediate_size=96)
    with pytest.raises(
        CheckpointError,
        match=r"model.safetensors: tensor .*mlp.* has shape \[128, 128\], expected \[96, 128\]",
    ):
        load(ckpt)


def test_missing_tensor(ckpt):
    tensors = load_file(ckpt / "model.safetensors")
    del tensors["model.layers.1.self_attn.k_proj.weight"]
    save_file(tensors, ckpt / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="model.layers.1.self_attn.k_proj.weight missing"):
        load(ckpt)


def test_corrupt_safetensors(ckpt):
    (ckpt / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="model.safetensors: not a readable safetensors file"):
        load(ckpt)


def test_a_pool_smaller_than_the_models_context_caps_the_context_served(llama_dir, caplog):
    """The model's own window does not fit: serve what fits and say so (it used to refuse to
    start, which a new user met with the defaults and a real 8,192-token model)."""
    with caplog.at_level("INFO", logger="stratus.engine"):
        core = EngineCore(llama_dir, EngineConfig(num_kv_blocks=2))
    assert core.max_model_len == 32
    assert "serving a context of 32 tokens" in caplog.text
    assert "context 32 tokens, 1 full-length sequences at once" in caplog.text
    with pytest.raises(ValidationError, match="context"):  # a longer prompt is refused as usual
        core.prepare(GenerateRequest(prompt_token_ids=list(range(40)), params=SamplingParams(max_tokens=1)))


def test_a_context_asked_for_that_does_not_fit_is_refused(llama_dir):
    with pytest.raises(
        ValueError, match="KV cache pool holds 32 tokens, less than the context window 64 asked"
    ):
        EngineCore(llama_dir, EngineConfig(num_kv_blocks=2, max_model_len=64))


def test_chat_template_renders_and_reads_chat_template_jinja(ckpt):
    messages = [{"role": "user", "content": "hi"}]
    tok = Tokenizer(ckpt)
    assert tok.apply_chat_template(messages) == "<s><|user|>\nhi<|end|>\n<|assistant|>\n"
    (ckpt / "chat_template.jinja").write_text("{% for m in messages %}[{{ m['content'] }}]{% endfor %}")
    assert Tokenizer(ckpt).apply_chat_template(messages) == "[hi]"


def test_chat_template_is_sandboxed(ckpt):
    (ckpt / "chat_template.jinja").write_text("{{ messages.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(ValidationError, match="chat template"):
        Tokenizer(ckpt).apply_chat_template([{"role": "user", "content": "x"}])
    (ckpt / "chat_template.jinja").write_text("{{ raise_exception('only user and assistant roles') }}")
    with pytest.raises(ValidationError, match="only user and assistant roles"):
        Tokenizer(ckpt).apply_chat_template([{"role": "user", "content": "x"}])


def test_plain_prompts_get_bos_chat_prompts_do_not(ckpt):
    tok = Tokenizer(ckpt)
    assert tok.encode("hello")[0] == tok.bos_token_id
    assert tok.encode("hello", add_special_tokens=False)[0] != tok.bos_token_id


LOAD_AND_EXIT = (
    "import sys; from stratus.engine import EngineConfig, EngineCore; "
    "EngineCore(sys.argv[1], EngineConfig(kv_cache_memory_mb=16)); print('loaded')"
)


def test_a_process_that_exits_right_after_loading_exits_cleanly():
    """The vocabulary for guided decoding is built in a thread at start-up; exiting during it
    aborted the process (exit 134, "terminate called without an active exception"). The demo
    model's vocabulary takes long enough to build for the exit to land during it."""
    demo = Path(__file__).resolve().parents[3] / "models" / "demo"
    # It aborted about one run in three: four at once (on two cores) all exit cleanly now.
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", LOAD_AND_EXIT, str(demo)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(4)
    ]
    for run in runs:
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, err.decode()[-2000:]
        assert out.strip() == b"loaded"


def test_loading_shows_a_progress_bar_at_a_terminal_only(llama_dir):
    pid, fd = pty.fork()
    if pid == 0:  # the child: a 100-column terminal, as a person's shell gives
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
        os.execv(sys.executable, [sys.executable, "-c", LOAD_AND_EXIT, str(llama_dir)])
    seen = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    assert os.waitpid(pid, 0)[1] == 0
    assert f"loading {llama_dir.name}".encode() in seen and b"layer" in seen
    piped = subprocess.run(
        [sys.executable, "-c", LOAD_AND_EXIT, str(llama_dir)], capture_output=True, timeout=120
    )
    assert b"layer" not in piped.stderr  # logs and services get no bar
