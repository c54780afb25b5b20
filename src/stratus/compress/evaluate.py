"""What compression cost and gained: perplexity, top-1 agreement, decode speed, size.

- perplexity: exp of the mean next-token negative log-likelihood over consecutive windows of
  a held-out text (each window scored on its own, its first token unscored).
- top-1 agreement: the original model continues each prompt greedily; both models then read
  prompt + continuation, and agreement is the share of positions where their most likely
  next token is the same.
- decode tokens/s: `batch` sequences generate together; only decode steps are timed; best of
  `speed_repeats` runs. Load time is that of a second load (the first in a process also pays
  one-time start-up costs).
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from stratus.engine import EngineCore, GenerateRequest, SamplingParams

from .generation import batched_logits, generate, open_engine, windows

DEFAULT_PROMPTS = [
    "It is a truth universally acknowledged,",
    "The morning was fine, and",
    "She could not help",
    "My dear Sir,",
    "There was no possibility of",
    "Hello! How are you today?",
    "The best way to learn a new language is",
    "Once upon a time,",
]


@dataclass
class EvalOptions:
    eval_text: Path | None = None  # perplexity text; None: skip perplexity
    max_eval_tokens: int = 16384
    window: int = 512
    prompts: list[str] = field(default_factory=lambda: list(DEFAULT_PROMPTS))
    continuation_tokens: int = 32
    speed: bool = True
    speed_batches: tuple[int, ...] = (1, 16)
    speed_tokens: int = 64
    speed_repeats: int = 2  # best of: other work on the machine only ever slows a run down


@dataclass
class ModelMeasures:
    parameters: int
    file_bytes: int
    perplexity: float | None = None
    eval_tokens: int | None = None
    load_seconds: float | None = None
    decode_tokens_per_s: dict[str, float] = field(default_factory=dict)


def file_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))


def perplexity(engine: EngineCore, ids: list[int], window: int) -> tuple[float, int]:
    """(perplexity, tokens scored) of `ids`, in windows of `window` tokens."""
    chunks = windows(ids, min(window, engine.max_model_len))
    nll, count = 0.0, 0
    for i, logits in batched_logits(engine, chunks):
        target = torch.tensor(chunks[i][1:], device=logits.device)
        nll += F.cross_entropy(logits[:-1].float(), target, reduction="sum").item()
        count += len(target)
    return float(torch.exp(torch.tensor(nll / count))), count


def top1(engine: EngineCore, sequences: list[list[int]]) -> list[torch.Tensor]:
    out: list[torch.Tensor] = [None] * len(sequences)  # type: ignore[list-item]
    for i, logits in batched_logits(engine, sequences):
        out[i] = logits.argmax(dim=-1).cpu()
    return out


def agreement(reference: list[torch.Tensor], other: list[torch.Tensor]) -> float:
    same = sum(int((a == b).sum()) for a, b in zip(reference, other))
    return same / sum(len(a) for a in reference)


def decode_speed(engine: EngineCore, batch: int, new_tokens: int, prompt: list[int]) -> float:
    """Generated tokens per second over the decode steps of `batch` sequences."""
    generate(engine, [prompt], 4)  # warm-up
    for i in range(batch):
        params = SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True)
        engine.add_request(GenerateRequest(prompt_token_ids=list(prompt), params=params, request_id=f"s{i}"))
    while engine.has_work() and engine.scheduler.waiting:
        engine.step()  # prefill until every sequence is running
    for _ in range(2):
        engine.step()  # the first decode step of a new shape pays for allocations
    tokens, start = 0, time.perf_counter()
    while engine.has_work():
        tokens += sum(len(d.token_ids) for d in engine.step())
    elapsed = time.perf_counter() - start
    return tokens / elapsed if elapsed > 0 else 0.0


class Evaluator:
    """Measures one model at a time (original first), holding only token lists in between."""

    def __init__(self, options: EvalOptions):
        self.options = options
        self.eval_ids: list[int] | None = None
        self.sequences: list[list[int]] | None = None
        self.reference: list[torch.Tensor] | None = None

    def measure(self, path: Path, progress=None) -> tuple[ModelMeasures, float | None]:
        """Measures of the model at `path`, and its top-1 agreement with the first one measured."""
        opts = self.options
        open_engine(path)  # the first load in a process also pays one-time start-up costs
        gc.collect()
        start = time.perf_counter()
        engine = open_engine(path)
        load_s = time.perf_counter() - start
        cfg = engine.model_config
        params = cfg.num_parameters()
        m = ModelMeasures(parameters=params, file_bytes=file_bytes(path), load_seconds=round(load_s, 3))
        if opts.eval_text is not None:
            if self.eval_ids is None:
                text = Path(opts.eval_text).read_text(encoding="utf-8")
                self.eval_ids = engine.tokenizer.encode(text)[: opts.max_eval_tokens]
            m.perplexity, m.eval_tokens = perplexity(engine, self.eval_ids, opts.window)
            _tick(progress)
        agree = None
        if opts.prompts:
            if self.sequences is None:
                prompts = [engine.tokenizer.encode(p) for p in opts.prompts]
                cont = generate(engine, prompts, opts.continuation_tokens)
                self.sequences = [p + c for p, c in zip(prompts, cont)]
                self.reference = top1(engine, self.sequences)
            else:
                agree = agreement(self.reference, top1(engine, self.sequences))
            _tick(progress)
        if opts.speed:
            prompt = engine.tokenizer.encode(opts.prompts[0] if opts.prompts else "Hello")
            for batch in opts.speed_batches:
                runs = [
                    decode_speed(engine, batch, opts.speed_tokens, prompt) for _ in range(opts.speed_repeats)
                ]
                m.decode_tokens_per_s[str(batch)] = round(max(runs), 1)
                _tick(progress)
        del engine
        gc.collect()
        return m, agree

    def steps_per_model(self) -> int:
        o = self.options
        return int(o.eval_text is not None) + int(bool(o.prompts)) + (len(o.speed_batches) if o.speed else 0)


def _tick(progress) -> None:
    if progress is not None:
        progress.update(1)
