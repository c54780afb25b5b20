#!/usr/bin/env python3
"""Train stratus's bundled demo model: a ~5M-parameter Llama on Jane Austen's novels.

The steps, top to bottom:

1. corpus     Jane Austen's six novels (public domain) as committed under corpus/austen/.
              `--extract-from-deb` rebuilds those files from the Debian package
              r-cran-janeaustenr (`apt-get download r-cran-janeaustenr`).
2. split      Persuasion from "Chapter 23" to the end is held out (corpus/heldout.txt);
              neither the tokenizer nor the model ever sees it.
3. tokenizer  byte-level BPE (`tokenizers`), 4096 entries, with <s> </s> <pad> and the chat
              tokens <|system|> <|user|> <|assistant|> <|end|>; plain text gets a leading <s>.
4. model      transformers' LlamaForCausalLM, grouped-query attention (8 query, 4 KV heads),
              trained on 512-token windows of the novels plus chat-formatted excerpts
              (user: a sentence; assistant: the sentences that follow it).
5. output     a Hugging Face checkpoint in models/demo/ with a model card that records the
              held-out perplexity, timings and sample outputs.

Run it with the project's venv (`make demo-model`); it takes about 10 minutes on 2 idle CPU
cores. Same seed, same machine: same checkpoint.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import math
import random
import re
import struct
import tarfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import jinja2
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from tqdm import tqdm
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

REPO = Path(__file__).resolve().parent.parent

# The Debian package the corpus comes from, pinned by its checksum.
DEB_NAME = "r-cran-janeaustenr_1.0.0-1_all.deb"
DEB_SHA256 = "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95"
DEB_DATA_DIR = "usr/lib/R/site-library/janeaustenr/data/"
NOVELS = {  # R object name -> file name under corpus/austen/
    "sensesensibility": "sense_and_sensibility",
    "prideprejudice": "pride_and_prejudice",
    "mansfieldpark": "mansfield_park",
    "emma": "emma",
    "northangerabbey": "northanger_abbey",
    "persuasion": "persuasion",
}
HELDOUT_NOVEL = "persuasion"
HELDOUT_FROM = "Chapter 23"  # the held-out slice starts at this paragraph and runs to the end

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
CHAT_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
SPECIAL_TOKENS = [PAD, BOS, EOS, *CHAT_TOKENS]  # ids 0..6, in this order

# Tools (when a request offers them) are listed in a system turn, and calls are written in the
# Hermes format that Qwen2.5 uses (<tool_call>{...}</tool_call>); without tools the rendering is
# the one the model was trained on.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if tools %}{{ '<|system|>\\nYou can call these functions: <tools>' }}"
    "{% for t in tools %}{{ t | tojson }}{% endfor %}"
    '{{ \'</tools> To call one, answer <tool_call>{"name": ..., "arguments": {...}}</tool_call><|end|>\\n\' }}'
    "{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'tool' %}"
    "{{ '<|user|>\\n<tool_response>' + message['content'] + '</tool_response><|end|>\\n' }}"
    "{% elif message['tool_calls'] %}{{ '<|assistant|>\\n' }}"
    "{% for c in message['tool_calls'] %}{{ '<tool_call>' }}"
    "{{ {'name': c['function']['name'], 'arguments': c['function']['arguments']} | tojson }}"
    "{{ '</tool_call>' }}{% endfor %}{{ '<|end|>\\n' }}"
    "{% else %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are a storyteller who writes in the manner of an English novel of the 1810s.",
    "Continue the passage.",
]
SAMPLE_CHATS = [
    [{"role": "user", "content": "It was a fine morning, and Elizabeth walked out to meet her sister."}],
    [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Tell me about the new neighbours at the Hall."},
    ],
]
SAMPLE_TEXT = "It is a truth universally acknowledged, that"


# --------------------------------------------------------------------------- 1. corpus


def read_deb_member(deb: Path, wanted: list[str]) -> dict[str, bytes]:
    """Read files from a .deb (an ar archive holding data.tar.*) without dpkg."""
    blob = deb.read_bytes()
    if hashlib.sha256(blob).hexdigest() != DEB_SHA256:
        raise SystemExit(f"{deb}: sha256 differs from the pinned {DEB_NAME}")
    if not blob.startswith(b"!<arch>\n"):
        raise SystemExit(f"{deb}: not a Debian package (ar archive)")
    pos = 8
    while pos < len(blob):
        header = blob[pos : pos + 60]
        name, size = header[:16].decode().strip().rstrip("/"), int(header[48:58])
        body = blob[pos + 60 : pos + 60 + size]
        if name.startswith("data.tar"):
            with tarfile.open(fileobj=io.BytesIO(body)) as tar:
                members = {m.name.removeprefix("./"): m for m in tar.getmembers()}
                return {w: tar.extractfile(members[w]).read() for w in wanted}
        pos += 60 + size + (size & 1)
    raise SystemExit(f"{deb}: no data.tar member")


def r_unserialize(data: bytes):
    """Decode R's XDR serialization format, just the types the janeaustenr data uses.

    Character and integer vectors become lists; a vector with a names attribute becomes
    a dict; pairlists become lists of (tag, value).
    """
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        pos += n
        return data[pos - n : pos]

    def i32() -> int:
        return struct.unpack(">i", take(4))[0]

    if take(2) != b"X\n":
        raise ValueError("not R XDR serialization")
    version = i32()
    take(8)  # R version that wrote it, oldest R version that reads it
    if version == 3:
        take(i32())  # native encoding name
    refs: list = []

    def item():
        flags = i32()
        kind, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
        if kind == 254:  # NULL
            return None
        if kind == 255:  # reference to an earlier symbol
            return refs[(flags >> 8) - 1]
        if kind == 9:  # CHARSXP: one string
            n = i32()
            return None if n == -1 else take(n).decode("utf-8")
        if kind == 1:  # symbol
            name = item()
            refs.append(name)
            return name
        if kind == 2:  # pairlist node: attributes, tag, value, rest of the list
            if has_attr:
                item()
            tag = item() if has_tag else None
            value = item()
            rest = item()
            return [(tag, value), *(rest or [])]
        n = i32()
        if kind in (10, 13):  # logical, integer vectors
            values = list(struct.unpack(f">{n}i", take(4 * n)))
        elif kind in (16, 19):  # character vector, list
            values = [item() for _ in range(n)]
        else:
            raise ValueError(f"R type {kind} not supported")
        if has_attr:
            attrs = dict(item())
            if "names" in attrs:
                return dict(zip(attrs["names"], values))
        return values

    return item()


def extract_corpus(deb: Path, out_dir: Path) -> None:
    """Write corpus/austen/*.txt from the Debian package's R data files."""
    files = read_deb_member(deb, [DEB_DATA_DIR + "Rdata.rdb", DEB_DATA_DIR + "Rdata.rdx"])
    # Rdata.rdx (gzip) maps each object name to (offset, length) in Rdata.rdb, where each
    # object is a 4-byte length followed by a zlib stream of one serialized R object.
    index = r_unserialize(gzip.decompress(files[DEB_DATA_DIR + "Rdata.rdx"]))
    variables = index["variables"]
    rdb = files[DEB_DATA_DIR + "Rdata.rdb"]
    out_dir.mkdir(parents=True, exist_ok=True)
    for r_name, file_name in NOVELS.items():
        offset, length = variables[r_name]
        lines = r_unserialize(zlib.decompress(rdb[offset + 4 : offset + length]))
        text = normalize(lines)
        (out_dir / f"{file_name}.txt").write_text(text, encoding="utf-8")
        print(f"wrote {out_dir / file_name}.txt ({len(text):,} characters)")


def normalize(lines: list[str | None]) -> str:
    """Project Gutenberg line-wrapped text -> one paragraph per line, blank line between.

    Underscores (Gutenberg's italics) are dropped, runs of spaces collapse to one, and the
    modern editor's "A NOTE ON THE TEXT" after Northanger Abbey is cut.
    """
    paragraphs, current = [], []
    for line in [*lines, ""]:
        line = (line or "").strip()
        if line:
            current.append(line)
        elif current:
            paragraphs.append(re.sub(r"\s+", " ", " ".join(current)).replace("_", ""))
            current = []
    if "A NOTE ON THE TEXT" in paragraphs:
        paragraphs = paragraphs[: paragraphs.index("A NOTE ON THE TEXT")]
    return "\n\n".join(paragraphs) + "\n"


def load_corpus(corpus_dir: Path) -> tuple[dict[str, str], str]:
    """The training novels and the held-out text (Persuasion, Chapter 23 to the end)."""
    novels = {}
    for file_name in NOVELS.values():
        path = corpus_dir / "austen" / f"{file_name}.txt"
        if not path.is_file():
            raise SystemExit(
                f"{path} missing: run `apt-get download r-cran-janeaustenr` and pass "
                f"--extract-from-deb {DEB_NAME}"
            )
        novels[file_name] = path.read_text(encoding="utf-8")
    whole = novels[HELDOUT_NOVEL]
    cut = whole.index(f"\n\n{HELDOUT_FROM}\n\n") + 2
    novels[HELDOUT_NOVEL] = whole[:cut]
    return novels, whole[cut:]


# --------------------------------------------------------------------------- 2. tokenizer


def train_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
            ),
        ]
    )
    return tok


# --------------------------------------------------------------------------- 3. training data

SENTENCE_END = re.compile(r"[.!?][\"']?\s+(?=[\"'A-Z])")
ABBREVIATIONS = ("Mr.", "Mrs.", "Dr.", "St.", "Esq.", "Col.", "Capt.", "Rev.")


def sentences(paragraph: str) -> list[str]:
    parts, start = [], 0
    for match in SENTENCE_END.finditer(paragraph):
        head = paragraph[start : match.end()].rstrip()
        if not head.endswith(ABBREVIATIONS):
            parts.append(head)
            start = match.end()
    parts.append(paragraph[start:])
    return [p for p in parts if p]


def chat_conversations(paragraphs: list[str], rng: random.Random, fraction: float) -> list[list]:
    """Turn some paragraphs into conversations: user says a sentence, assistant continues."""
    conversations = []
    for paragraph in paragraphs:
        parts = sentences(paragraph)
        if len(parts) < 2 or rng.random() > fraction:
            continue
        messages = []
        if rng.random() < 0.25:
            messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        i = 0
        while i < len(parts) - 1 and (
            not messages or messages[-1]["role"] != "assistant" or rng.random() < 0.3
        ):
            n = rng.randint(1, 3)
            messages.append({"role": "user", "content": parts[i]})
            messages.append({"role": "assistant", "content": " ".join(parts[i + 1 : i + 1 + n])})
            i += 1 + n
        conversations.append(messages)
    return conversations


@dataclass
class TrainingData:
    """Fixed-length windows of token ids: the novels, plus packed chat conversations."""

    tokenizer: Tokenizer
    texts: list[str]
    seq_len: int
    chat_fraction: float
    seed: int

    def __post_init__(self) -> None:
        bos, eos = self.tokenizer.token_to_id(BOS), self.tokenizer.token_to_id(EOS)
        self.stream = []
        for enc in self.tokenizer.encode_batch(self.texts, add_special_tokens=False):
            self.stream += [bos, *enc.ids, eos]
        self.paragraphs = [p for t in self.texts for p in t.split("\n\n")]
        self.template = jinja2.Template(CHAT_TEMPLATE)

    def epoch(self, number: int) -> list[list[int]]:
        rng = random.Random(self.seed * 1000 + number)
        n = self.seq_len
        offset = rng.randrange(n)
        windows = [self.stream[i : i + n] for i in range(offset, len(self.stream) - n + 1, n)]
        rendered = [
            self.template.render(messages=m, bos_token=BOS, add_generation_prompt=False)
            for m in chat_conversations(self.paragraphs, rng, self.chat_fraction)
        ]
        chat_stream = [
            i for e in self.tokenizer.encode_batch(rendered, add_special_tokens=False) for i in e.ids
        ]
        windows += [chat_stream[i : i + n] for i in range(0, len(chat_stream) - n + 1, n)]
        rng.shuffle(windows)
        return windows

    def batches(self, batch_size: int):
        number = 0
        while True:
            windows = self.epoch(number)
            for i in range(0, len(windows) - batch_size + 1, batch_size):
                yield torch.tensor(windows[i : i + batch_size])
            number += 1


# --------------------------------------------------------------------------- 4. model


def build_model(args: argparse.Namespace, tok: Tokenizer) -> LlamaForCausalLM:
    eos_ids = [tok.token_to_id(EOS), tok.token_to_id("<|end|>")]
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=args.max_positions,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tok.token_to_id(BOS),
        eos_token_id=eos_ids,
        pad_token_id=tok.token_to_id(PAD),
    )
    return LlamaForCausalLM(config)


def learning_rate(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(model: LlamaForCausalLM, data: TrainingData, args: argparse.Namespace, heldout_ids):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
    )
    batches = data.batches(args.batch_size)
    history = []
    model.train()
    bar = tqdm(range(args.steps), desc="training", unit="step")
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr, args.warmup)
        batch = next(batches)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            ppl = perplexity(model, heldout_ids, args.seq_len)
            history.append((step + 1, loss.item(), ppl))
            tqdm.write(f"step {step + 1}: train loss {loss.item():.3f}, held-out perplexity {ppl:.2f}")
            model.train()
    return history


# --------------------------------------------------------------------------- 5. evaluation


@torch.no_grad()
def perplexity(model: LlamaForCausalLM, ids: list[int], window: int) -> float:
    """exp(mean next-token loss) over non-overlapping windows of `window` tokens.

    `ids` is the held-out text as the tokenizer encodes it (with its leading <s>); the first
    token of each window is context only, every other token is predicted.
    """
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(ids) - 1, window):
        chunk = torch.tensor([ids[start : start + window]])
        if chunk.shape[1] < 2:
            break
        loss = model(input_ids=chunk, labels=chunk).loss
        total += loss.item() * (chunk.shape[1] - 1)
        count += chunk.shape[1] - 1
    return math.exp(total / count)


def generate_samples(out_dir: Path) -> list[tuple[str, str]]:
    """Greedy outputs of the saved checkpoint, loaded back the way a user would."""
    tok = AutoTokenizer.from_pretrained(out_dir)
    model = AutoModelForCausalLM.from_pretrained(out_dir)
    model.eval()
    samples = []
    for messages in SAMPLE_CHATS:
        prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids
        out = model.generate(ids, do_sample=False, max_new_tokens=80)
        samples.append((prompt, tok.decode(out[0, ids.shape[1] :], skip_special_tokens=False)))
    ids = tok(SAMPLE_TEXT, return_tensors="pt").input_ids
    out = model.generate(ids, do_sample=False, max_new_tokens=60)
    samples.append((SAMPLE_TEXT, tok.decode(out[0, ids.shape[1] :], skip_special_tokens=False)))
    return samples


# --------------------------------------------------------------------------- saving


def save_checkpoint(model: LlamaForCausalLM, tok: Tokenizer, args, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.config.dtype = torch.float32
    model.save_pretrained(out_dir)
    eos_ids = model.config.eos_token_id
    GenerationConfig(
        bos_token_id=model.config.bos_token_id,
        eos_token_id=eos_ids,
        pad_token_id=model.config.pad_token_id,
        do_sample=True,
        temperature=0.8,
        top_p=0.95,
        max_new_tokens=256,
    ).save_pretrained(out_dir)

    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=CHAT_TOKENS,
        model_max_length=args.max_positions,
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )
    wrapped.save_pretrained(out_dir)
    # Say explicitly what engines other than transformers look for: the chat template
    # (also in chat_template.jinja), whether plain text starts with <s>, and the
    # dtype/rope settings under their older names as well.
    tc_path = out_dir / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text())
    tc.update(
        tokenizer_class="PreTrainedTokenizerFast",  # the name transformers 4.x also knows
        chat_template=CHAT_TEMPLATE,
        add_bos_token=True,
        add_eos_token=False,
        model_max_length=args.max_positions,
    )
    tc_path.write_text(json.dumps(tc, indent=2, ensure_ascii=False) + "\n")
    (out_dir / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    cfg_path = out_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.setdefault("torch_dtype", "float32")
    cfg.setdefault("rope_theta", 10000.0)
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def write_model_card(out_dir: Path, facts: dict) -> None:
    f = facts
    history = "\n".join(f"| {step} | {loss:.3f} | {ppl:.2f} |" for step, loss, ppl in f["history"])
    samples = "\n\n".join(
        f"Prompt:\n\n```\n{prompt}\n```\n\nGreedy output:\n\n```\n{output}\n```"
        for prompt, output in f["samples"]
    )
    card = f"""# stratus demo model

A {f["params"] / 1e6:.2f}M-parameter Llama-architecture language model that stratus ships so
that `make serve` works offline. It writes English in the manner of Jane Austen and knows a
simple chat format. It is a demonstration of the serving stack, not a useful assistant.

## Data

Jane Austen's six completed novels, *Sense and Sensibility* (1811), *Pride and Prejudice*
(1813), *Mansfield Park* (1814), *Emma* (1815), *Northanger Abbey* and *Persuasion* (1817),
as Project Gutenberg prepared them and as the Debian package `r-cran-janeaustenr` 1.0.0-1
ships them (package sha256 `{DEB_SHA256}`). The novels are in the public domain: Austen died
in 1817 and the texts were first published 1811-1817. The package's MIT licence covers its
R code and packaging. The text is committed under `corpus/austen/` (see `corpus/README.md`).

Held-out text: *Persuasion* from "Chapter 23" to the end ({f["heldout_chars"]:,} characters,
{f["heldout_tokens"]:,} tokens), saved as `corpus/heldout.txt`. Neither the tokenizer nor the
model saw it. Training text: everything else, {f["train_tokens"]:,} tokens.

## Architecture

| | |
|---|---|
| architecture | `LlamaForCausalLM` (RMSNorm, SwiGLU, RoPE θ = 10000) |
| parameters | {f["params"]:,} |
| layers / hidden / intermediate | {f["layers"]} / {f["hidden"]} / {f["intermediate"]} |
| attention heads / KV heads | {f["heads"]} / {f["kv_heads"]} (grouped-query attention) |
| max positions | {f["max_positions"]} (trained on {f["seq_len"]}-token windows) |
| tied embeddings | no |
| dtype | float32 |
| tokenizer | byte-level BPE, {f["vocab"]} entries, trained on the same text |
| special tokens | `<pad>`={f["ids"]["<pad>"]}, `<s>`={f["ids"]["<s>"]} (BOS), `</s>`={f["ids"]["</s>"]} (EOS), `<|system|>`={f["ids"]["<|system|>"]}, `<|user|>`={f["ids"]["<|user|>"]}, `<|assistant|>`={f["ids"]["<|assistant|>"]}, `<|end|>`={f["ids"]["<|end|>"]} |

Plain text is encoded with a leading `<s>`. The chat template (`chat_template.jinja`, also
in `tokenizer_config.json`) writes `<s>` itself, then each message as
`<|role|>\\n{{content}}<|end|>\\n`, and `<|assistant|>\\n` for a generation prompt. Generation
stops at `</s>` or `<|end|>` (both in `eos_token_id`).

## Training

{f["steps"]} steps of AdamW (peak learning rate {f["lr"]}, warm-up {f["warmup"]} steps, cosine decay
to a tenth), batches of {f["batch_size"]} windows of {f["seq_len"]} tokens: {f["tokens_seen"]:,} tokens seen,
about {f["tokens_seen"] / f["train_tokens"]:.1f} passes over the text. About {f["chat_fraction"]:.0%} of paragraphs with two or
more sentences are also turned, each pass, into chat conversations (user: a sentence;
assistant: the next one to three sentences; sometimes a system prompt or a second turn).
Seed {f["seed"]}, {f["threads"]} CPU threads, torch {torch.__version__}.

Measured on the project's development machine (2 CPU cores, shared with other work while
this ran): tokenizer {f["tokenizer_s"]:.0f} s; model training {f["train_s"] / 60:.1f} min of wall time and
{f["train_cpu_s"] / 60:.1f} min of CPU time over {f["threads"]} threads, that is about {f["train_cpu_s"] / f["threads"] / 60:.1f} min on {f["threads"]} idle
cores; whole script {f["total_s"] / 60:.1f} min of wall time.

| step | training loss | held-out perplexity |
|---|---|---|
{history}

**Held-out perplexity: {f["ppl"]:.2f}** — exp of the mean next-token loss over
`corpus/heldout.txt` encoded by this tokenizer (with its leading `<s>`), cut into
non-overlapping windows of {f["seq_len"]} tokens; the first token of each window is context only.

## Sample outputs

Greedy decoding of the saved checkpoint with transformers:

{samples}

## Reproduce

```
{f["command"]}
```
"""
    (out_dir / "README.md").write_text(card)


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--corpus-dir",
        type=Path,
        default=REPO / "corpus",
        help="holds austen/*.txt; heldout.txt is written here",
    )
    p.add_argument("--out", type=Path, default=REPO / "models" / "demo", help="checkpoint directory to write")
    p.add_argument(
        "--extract-from-deb", type=Path, metavar="DEB", help=f"first rebuild corpus/austen/ from {DEB_NAME}"
    )
    p.add_argument(
        "--vocab-size", type=int, default=4096, help="BPE vocabulary size, special tokens included"
    )
    p.add_argument("--hidden", type=int, default=256, help="hidden size")
    p.add_argument("--intermediate", type=int, default=688, help="MLP intermediate size")
    p.add_argument("--layers", type=int, default=4, help="decoder layers")
    p.add_argument("--heads", type=int, default=8, help="attention (query) heads")
    p.add_argument("--kv-heads", type=int, default=4, help="key/value heads (grouped-query attention)")
    p.add_argument("--max-positions", type=int, default=1024, help="max_position_embeddings in config.json")
    p.add_argument(
        "--seq-len", type=int, default=512, help="tokens per training window (and perplexity window)"
    )
    p.add_argument("--batch-size", type=int, default=4, help="windows per step")
    p.add_argument("--steps", type=int, default=500, help="optimizer steps")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    p.add_argument("--warmup", type=int, default=40, help="warm-up steps")
    p.add_argument(
        "--chat-fraction",
        type=float,
        default=0.5,
        help="share of multi-sentence paragraphs also given as chats, each pass",
    )
    p.add_argument("--eval-every", type=int, default=100, help="steps between held-out evaluations")
    p.add_argument("--seed", type=int, default=1234, help="seed for torch and for the data order")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)

    if args.extract_from_deb:
        extract_corpus(args.extract_from_deb, args.corpus_dir / "austen")
    novels, heldout = load_corpus(args.corpus_dir)
    (args.corpus_dir / "heldout.txt").write_text(heldout, encoding="utf-8")

    t0 = time.perf_counter()
    tok = train_tokenizer(list(novels.values()), args.vocab_size)
    tokenizer_s = time.perf_counter() - t0
    heldout_ids = tok.encode(heldout).ids
    data = TrainingData(tok, list(novels.values()), args.seq_len, args.chat_fraction, args.seed)
    print(
        f"tokenizer: {tok.get_vocab_size()} entries in {tokenizer_s:.1f} s; "
        f"training text {len(data.stream):,} tokens, held-out {len(heldout_ids):,} tokens"
    )

    model = build_model(args, tok)
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {params:,} parameters")
    t0, cpu0 = time.perf_counter(), time.process_time()
    history = train(model, data, args, heldout_ids)
    train_s, train_cpu_s = time.perf_counter() - t0, time.process_time() - cpu0

    save_checkpoint(model, tok, args, args.out)
    samples = generate_samples(args.out)
    for prompt, output in samples:
        print(f"--- {prompt!r}\n{output}")
    facts = dict(
        vars(args),
        params=params,
        vocab=tok.get_vocab_size(),
        ids={t: tok.token_to_id(t) for t in SPECIAL_TOKENS},
        heldout_chars=len(heldout),
        heldout_tokens=len(heldout_ids),
        train_tokens=len(data.stream),
        tokens_seen=args.steps * args.batch_size * args.seq_len,
        history=history,
        ppl=history[-1][2],
        samples=samples,
        tokenizer_s=tokenizer_s,
        train_s=train_s,
        train_cpu_s=train_cpu_s,
        total_s=time.perf_counter() - t_start,
        command="make demo-model   # = .venv/bin/python scripts/train_demo_model.py",
    )
    write_model_card(args.out, facts)
    print(f"held-out perplexity {facts['ppl']:.2f}; wrote {args.out} in {facts['total_s'] / 60:.1f} min")


if __name__ == "__main__":
    main()
