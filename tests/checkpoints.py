"""Small random Hugging Face checkpoints built by `transformers`, for tests and benchmarks.

Each builder writes a complete checkpoint directory (config, safetensors, tokenizer files,
chat template) the way `save_pretrained` does, so stratus loads exactly what users have.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

TOKENIZER_TEXT = (
    "The quick brown fox jumps over the lazy dog. Beautiful is better than ugly. "
    "Explicit is better than implicit. Simple is better than complex. Complex is better than "
    "complicated. Flat is better than nested. Sparse is better than dense. Readability counts. "
    "Special cases aren't special enough to break the rules. Although practicality beats purity. "
    "Errors should never pass silently. Unless explicitly silenced. In the face of ambiguity, "
    "refuse the temptation to guess. There should be one obvious way to do it. Now is better "
    "than never. If the implementation is hard to explain, it's a bad idea. Namespaces are one "
    "honking great idea. 0123456789 !?,.;:'\"()[]{} hello world stratus serves models. "
)

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

SPECIAL_TOKENS = ["<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]


def build_tokenizer(out_dir: Path, vocab_size: int = 512) -> None:
    """Train a byte-level BPE tokenizer and save it in Hugging Face layout."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([TOKENIZER_TEXT] * 4, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "pad_token": "<pad>",
                "model_max_length": 4096,
                "chat_template": CHAT_TEMPLATE,
            },
            indent=2,
        )
    )


def build_checkpoint(
    out_dir: Path | str,
    arch: str = "llama",
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    vocab_size: int = 512,
    max_position_embeddings: int = 2048,
    tie_word_embeddings: bool = False,
    rope_scaling: dict | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    max_shard_size: str | None = None,
    init_std: float = 0.02,
) -> Path:
    """Write a random `arch` checkpoint ('llama', 'llama3', 'mistral', 'qwen2', 'qwen3', 'phi3',
    'gemma2') to out_dir."""
    import transformers

    out_dir = Path(out_dir)
    build_tokenizer(out_dir, vocab_size)
    common = dict(
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        vocab_size=vocab_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
        initializer_range=init_std,
    )
    if arch == "llama":
        config = transformers.LlamaConfig(**common, rope_theta=10000.0, rope_scaling=rope_scaling)
        model_cls = transformers.LlamaForCausalLM
    elif arch == "llama3":
        scaling = rope_scaling or {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 256,
        }
        config = transformers.LlamaConfig(**common, rope_theta=500000.0, rope_scaling=scaling)
        model_cls = transformers.LlamaForCausalLM
    elif arch == "mistral":
        config = transformers.MistralConfig(**common, rope_theta=10000.0, sliding_window=None)
        model_cls = transformers.MistralForCausalLM
    elif arch == "qwen2":
        config = transformers.Qwen2Config(**common, rope_theta=1000000.0)
        model_cls = transformers.Qwen2ForCausalLM
    elif arch == "qwen3":  # head_dim set apart from hidden / heads, as Qwen3 does
        config = transformers.Qwen3Config(
            **common, rope_theta=1000000.0, head_dim=2 * hidden_size // num_heads
        )
        model_cls = transformers.Qwen3ForCausalLM
    elif arch == "gemma2":  # a small window, so that sliding layers differ from the others
        config = transformers.Gemma2Config(
            **common,
            head_dim=hidden_size // num_heads,
            query_pre_attn_scalar=hidden_size // num_heads,
            sliding_window=8,
            attn_logit_softcapping=50.0,
            final_logit_softcapping=30.0,
        )
        model_cls = transformers.Gemma2ForCausalLM
    elif arch == "phi3":
        config = transformers.Phi3Config(**common, rope_theta=10000.0, sliding_window=None)
        model_cls = transformers.Phi3ForCausalLM
    else:
        raise ValueError(f"unknown arch {arch!r}")
    torch.manual_seed(seed)
    model = model_cls(config).to(dtype).eval()
    if arch == "qwen2":
        # transformers initialises biases to zero; make them matter for the parity test.
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0.0, 0.1)
    if arch == "gemma2":  # transformers initialises Gemma's norms to zero (scale 1); make them matter
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "norm" in name:
                    param.uniform_(-0.5, 0.5)
    if arch == "qwen3":  # transformers initialises the q/k norms to ones; make them matter
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.q_norm.weight.uniform_(0.5, 1.5)
                layer.self_attn.k_norm.weight.uniform_(0.5, 1.5)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out_dir, **kwargs)
    return out_dir


def load_hf_model(path: Path | str, dtype: torch.dtype = torch.float32):
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).eval()


def add_sentence_transformers_pooling(
    path: Path | str, mode: str = "lasttoken", normalize: bool = True
) -> None:
    """Make a checkpoint an embedding model the sentence-transformers way: modules.json naming a
    Pooling module (1_Pooling/config.json with `pooling_mode_<mode>` set) and, if `normalize`,
    a Normalize module after it. `mode`: lasttoken, mean_tokens or cls_token."""
    path = Path(path)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append(
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
        )
        (path / "2_Normalize").mkdir(exist_ok=True)
    (path / "modules.json").write_text(json.dumps(modules, indent=2))
    (path / "1_Pooling").mkdir(exist_ok=True)
    config = {"word_embedding_dimension": json.loads((path / "config.json").read_text())["hidden_size"]}
    for key in (
        "cls_token",
        "mean_tokens",
        "max_tokens",
        "mean_sqrt_len_tokens",
        "weightedmean_tokens",
        "lasttoken",
    ):
        config[f"pooling_mode_{key}"] = key == mode
    (path / "1_Pooling" / "config.json").write_text(json.dumps(config, indent=2))


def hf_embeddings(path: Path | str, prompts: list[list[int]], mode: str = "last", normalize: bool = True):
    """transformers' own embeddings of `prompts`: AutoModel's last_hidden_state (after the final
    norm), pooled as sentence-transformers does (`mode`: last, mean or cls), one prompt at a time
    (no padding to get wrong). A [len(prompts), hidden] float32 tensor."""
    import transformers

    hf = transformers.AutoModel.from_pretrained(str(path), dtype=torch.float32).eval()
    rows = []
    for ids in prompts:
        with torch.no_grad():
            hidden = hf(torch.tensor([ids])).last_hidden_state[0]
        row = {"last": hidden[-1], "cls": hidden[0], "mean": hidden.mean(dim=0)}[mode]
        rows.append(torch.nn.functional.normalize(row, dim=-1) if normalize else row)
    return torch.stack(rows)


ALL_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def build_lora_adapter(
    base_dir: Path | str,
    out_dir: Path | str,
    *,
    r: int = 8,
    alpha: float = 16,
    targets: tuple[str, ...] = ALL_LORA_TARGETS,
    use_rslora: bool = False,
    seed: int = 0,
    std: float = 0.05,
) -> Path:
    """A PEFT LoRA adapter of the checkpoint at `base_dir`, saved by PEFT itself, with random
    A and (non-zero) B so that it changes what the model computes."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(
        r=r, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0, use_rslora=use_rslora
    )
    model = get_peft_model(load_hf_model(base_dir), config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.normal_(0.0, std)
    out = Path(out_dir)
    model.save_pretrained(str(out))
    return out
