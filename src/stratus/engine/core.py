"""The synchronous engine core: admit requests, run steps, turn sampled tokens into deltas.

`EngineCore` owns the scheduler and the model runner; `Engine` (engine.py), the async face of a
replica, drives one through the step loop (step_loop.py). Offline work (compression,
benchmarks, tests) uses it directly.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from .block_manager import BlockManager
from .config import CheckpointError, EngineConfig, ModelConfig
from .gguf import is_gguf
from .grammar import Constraint, GrammarError, GrammarVocab, mask_rows
from .inputs import check_embedding_inputs, context_window, prepare_prompt
from .lora import AdapterError, AdapterStore, LoraWeights
from .model_runner import ModelRunner
from .pooling import Pooling, pool
from .sampler import apply_penalties, sample, top_logprobs
from .scheduler import ScheduledBatch, Scheduler
from .sequence import Sequence, Status
from .tokenizer import IncrementalDetokenizer, Tokenizer
from .types import (
    Delta,
    EngineStats,
    FatalEngineError,
    GenerateRequest,
    SamplingParams,
    TokenLogprob,
    ValidationError,
)

log = logging.getLogger("stratus.engine")


class EngineCore:
    def __init__(self, path: str | Path, config: EngineConfig | None = None):
        self.path = Path(path)
        if not (self.path.is_dir() or is_gguf(self.path)):
            raise CheckpointError(
                f"{self.path}: not a directory or a GGUF file; expected a Hugging Face checkpoint"
            )
        self.config = config or EngineConfig()
        if self.config.num_threads:
            torch.set_num_threads(self.config.num_threads)
        self.model_config = ModelConfig.from_dir(self.path)
        self.tokenizer = Tokenizer(self.path)
        if self.tokenizer.vocab_size > self.model_config.vocab_size:
            raise CheckpointError(
                f"{self.path / 'tokenizer.json'}: {self.tokenizer.vocab_size} tokens, but config.json "
                f"says vocab_size={self.model_config.vocab_size}"
            )
        self.max_model_len = context_window(self.model_config, self.config)
        self._check_weight_memory()
        if self.config.world_size > 1:  # one replica over several processes: parallel/
            from .parallel.runner import ParallelRunner

            self.runner: ModelRunner = ParallelRunner(
                self.path, self.model_config, self.config, self.max_model_len
            )
        else:
            self.runner = ModelRunner(self.path, self.model_config, self.config, self.max_model_len)
        pool_tokens = self.runner.num_blocks * self.config.block_size
        if pool_tokens < self.max_model_len:
            if self.config.max_model_len:  # asked for: refuse rather than serve less
                raise ValueError(
                    f"KV cache pool holds {pool_tokens} tokens, less than the context window "
                    f"{self.max_model_len} asked for: raise --kv-cache-memory-fraction or "
                    "--kv-cache-memory-mb, or lower --max-model-len"
                )
            log.warning(
                "%s: the KV cache pool holds %d tokens, less than the model's context window of %d: "
                "serving a context of %d tokens (raise --kv-cache-memory-fraction or "
                "--kv-cache-memory-mb, or use --dtype bfloat16, to serve more)",
                self.path.name,
                pool_tokens,
                self.max_model_len,
                pool_tokens,
            )
            self.max_model_len = pool_tokens
        log.info(
            "%s: weights %.0f MiB, KV pool %d tokens (%.0f MiB: %s), context %d tokens, %d "
            "full-length sequences at once",
            self.path.name,
            self.runner.weight_bytes / 2**20,
            pool_tokens,
            sum(c.numel() * c.element_size() for c in self.runner.kv_caches) / 2**20,
            self.runner.pool.how,
            self.max_model_len,
            pool_tokens // self.max_model_len,
        )
        self.blocks = BlockManager(
            self.runner.num_blocks, self.config.block_size, self.config.enable_prefix_caching
        )
        # LoRA adapters served on this model (lora.py): registered at run time (load_adapter)
        self.adapters = AdapterStore(
            self.model_config, self.runner.dtype, self.runner.device, self.config.max_loras
        )
        self.scheduler = Scheduler(
            self.blocks,
            self.config.max_num_seqs,
            max(self.config.max_num_batched_tokens, 2),
            self.adapters,
        )
        self.eos_token_ids = self._eos_ids()
        self.generator = torch.Generator(device=self.runner.device).manual_seed(self.config.seed)
        self.requests: dict[str, list[Sequence]] = {}
        self._recent: deque[tuple[float, int]] = deque()  # (time, tokens generated in a step)
        self.generated_tokens_total = 0
        self.prompt_tokens_total = 0
        self._failures: dict[str, str] = {}  # request id -> why it failed (take_failures)
        # The vocabulary guided decoding needs (0.4 s for a 49k vocabulary) is built beside the
        # start-up, not inside the step loop on the first guided request, which would stall
        # every sequence in the batch meanwhile. Not a daemon: a process that exits while native
        # code is building it aborts ("terminate called without an active exception", exit 134),
        # so exiting waits for it (under a second).
        self._grammar_vocab: GrammarVocab | None = None
        self._grammar_vocab_built = threading.Thread(
            target=self._build_grammar_vocab, name="stratus-grammar-vocab", daemon=False
        )
        self._grammar_vocab_built.start()

    def _check_weight_memory(self) -> None:
        limit = self.config.max_weight_memory_mb
        if not limit or self.model_config.quantization:  # packed weights: the float count overstates
            return
        from .parallel.layout import check_weight_memory, plan

        config = self.config
        dtype = config.resolve_dtype(self.model_config, config.resolve_device())
        layout = plan(self.model_config, config.tensor_parallel_size, config.pipeline_parallel_size)
        check_weight_memory(self.model_config, layout, torch.finfo(dtype).bits // 8, limit)

    def close(self) -> None:
        """Stop what the core started beside this process (a parallel replica's other ranks)."""
        self.runner.close()

    def layout(self) -> dict:
        """How this replica is split over processes (TP x PP) and what each rank holds."""
        from .parallel.layout import RankReport, describe, peak_rss_bytes

        ranks = getattr(self.runner, "ranks", None)
        if not ranks:  # one process holds it all
            ranks = [
                RankReport(
                    0,
                    0,
                    0,
                    (0, self.model_config.num_layers),
                    socket.gethostname(),
                    os.getpid(),
                    self.runner.weight_bytes,
                    sum(c.numel() * c.element_size() for c in self.runner.kv_caches),
                    peak_rss_bytes(),
                )
            ]
        return describe(self.config.tensor_parallel_size, self.config.pipeline_parallel_size, ranks)

    def _eos_ids(self) -> frozenset[int]:
        ids = set(self.model_config.eos_token_ids)
        gen_file = self.path / "generation_config.json"
        if gen_file.is_file():
            eos = json.loads(gen_file.read_text()).get("eos_token_id")
            ids |= {eos} if isinstance(eos, int) else set(eos or [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return frozenset(ids)

    # -- admission -----------------------------------------------------------------------------

    def prepare(self, request: GenerateRequest) -> list[int]:
        """Validate a request and return its prompt token ids; raises ValidationError."""
        return prepare_prompt(request, self.tokenizer, self.model_config.vocab_size, self.max_model_len)

    def add_request(self, request: GenerateRequest, prompt_ids: list[int] | None = None) -> None:
        if request.request_id in self.requests:
            raise ValidationError(f"request id {request.request_id!r} is already running", "request_id")
        ids = prompt_ids if prompt_ids is not None else self.prepare(request)
        if request.adapter is not None and request.adapter not in self.adapters:
            raise ValidationError(
                f"the LoRA adapter {request.adapter!r} is not loaded on this replica", "model"
            )
        params = request.params
        stop_ids = frozenset(params.stop_token_ids) | (
            frozenset() if params.ignore_eos else self.eos_token_ids
        )
        seqs = []
        for index in range(request.first_index, request.first_index + params.n):
            gen = None
            if params.seed is not None:
                gen = torch.Generator(device=self.runner.device)
            seq = Sequence(
                request_id=request.request_id,
                index=index,
                token_ids=list(ids),
                num_prompt_tokens=len(ids),
                params=params,
                stop_token_ids=stop_ids,
                detokenizer=IncrementalDetokenizer(self.tokenizer, ids, params.skip_special_tokens),
                generator=gen,
                seed=params.seed,
                adapter=request.adapter,
            )
            try:
                if params.grammar is not None:
                    seq.constraint = self._constraint(params.grammar)
                if request.resume_token_ids:
                    self._resume(seq, request.resume_token_ids, request.resume_text)
            except GrammarError as exc:
                raise ValidationError(f"the grammar cannot be used: {exc}", "grammar") from None
            seqs.append(seq)
        for seq in seqs:  # all or nothing: a refused request leaves nothing behind
            self.scheduler.add(seq)
        self.requests[request.request_id] = seqs
        self.prompt_tokens_total += len(ids)

    def _build_grammar_vocab(self) -> None:
        try:
            width = self.model_config.vocab_size
            self._grammar_vocab = GrammarVocab(self.tokenizer.to_json(), width, sorted(self.eos_token_ids))
        except Exception:  # guided requests will fail with the reason; nothing else depends on it
            log.exception("could not build the vocabulary for guided decoding")

    def _constraint(self, grammar: str) -> Constraint:
        """A sequence's grammar state."""
        self._grammar_vocab_built.join()
        if self._grammar_vocab is None:
            raise GrammarError(
                "guided decoding is unavailable for this model (its vocabulary could not be read)"
            )
        return Constraint(self._grammar_vocab, grammar)

    @staticmethod
    def _resume(seq: Sequence, tokens: list[int], delivered: str) -> None:
        """Continue where another replica stopped: its tokens become this sequence's output so
        far, their text is rebuilt exactly as it was produced, and what was delivered is skipped."""
        if seq.constraint is not None:
            seq.constraint.consume_all(tokens)
        for token in tokens:
            seq.token_ids.append(token)
            seq.text += seq.detokenizer.push(token)
        # Text the other replica held back (a possible stop string) is still owed to the caller.
        seq.emitted_chars = len(delivered) if seq.text.startswith(delivered) else len(seq.text)

    # -- LoRA adapters -------------------------------------------------------------------------

    def load_adapter(self, name: str, path: str | Path) -> LoraWeights:
        """Serve the PEFT adapter at `path` as `name` (replacing one of that name); raises
        AdapterError (a CheckpointError) when it cannot be served on this model."""
        if self.config.world_size > 1:
            raise AdapterError(
                f"LoRA adapters are not served by a replica split over {self.config.world_size} "
                "processes (tensor/pipeline parallel) yet: serve the adapter on a replica of one process"
            )
        return self.adapters.register(name, path)

    def unload_adapter(self, name: str) -> bool:
        """Stop serving `name`: new requests for it are refused, running ones finish."""
        return self.adapters.unregister(name)

    def abort(self, request_id: str) -> list[Delta]:
        """Stop a request now and free its KV blocks; returns its closing deltas."""
        deltas = []
        for seq in self.requests.pop(request_id, []):
            if not seq.finished:
                self.scheduler.finish(seq)
                seq.finish_reason = "abort"
                deltas.append(self._delta(seq, "", [], None))
        return deltas

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    # -- the step ------------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> list[Delta]:
        """One step of every scheduled sequence. A sequence whose forward pass or sampling
        fails is failed alone (see `take_failures`): one request must never stop the others."""
        batch = self.scheduler.schedule()
        for seq, why in self.scheduler.take_rejected():
            self._fail(seq, why)
        if not batch.items:
            return []
        try:
            finishing, logits = self.runner.run(batch)
        except FatalEngineError:
            raise  # not this batch's fault: the replica itself is broken
        except Exception as exc:
            finishing, logits = self._run_one_by_one(batch, exc)
        for seq, n in batch.items:
            if not seq.finished:
                seq.num_computed_tokens += n
                self.blocks.commit_full_blocks(seq)
        if not finishing:
            return []
        try:
            tokens, lp_rows = self._sample(logits, finishing)
        except Exception as exc:
            finishing, logits = self._sample_one_by_one(finishing, logits, exc)
            if not finishing:
                return []
            tokens, lp_rows = self._sample(logits, finishing)
        deltas = []
        now = time.monotonic()
        for i, seq in enumerate(finishing):
            delta = self._append_token(seq, tokens[i], lp_rows.get(i))
            if delta is not None:
                deltas.append(delta)
        self._recent.append((now, len(finishing)))
        self.generated_tokens_total += len(finishing)
        return deltas

    def _sample(self, logits: torch.Tensor, finishing: list[Sequence]):
        # Logprobs describe the model's own distribution, before penalties and temperature.
        want = [i for i, seq in enumerate(finishing) if seq.params.logprobs is not None]
        raw = logits[want] if want else None  # advanced indexing copies
        guided = [(i, seq.constraint) for i, seq in enumerate(finishing) if seq.constraint is not None]
        if guided or any(seq.params.penalised for seq in finishing):
            logits = logits.clone()  # penalties and masks work in place; a retry starts afresh
            apply_penalties(logits, finishing)
            mask_rows(logits, guided)
        tokens = sample(logits, finishing, self.generator)
        return tokens, (self._logprobs(raw, want, finishing, tokens) if want else {})

    def _run_one_by_one(self, batch: ScheduledBatch, error: Exception):
        """The batch's forward failed: run each sequence alone and fail the ones that still
        fail. Recomputing writes the same K/V to the same slots, so a retry is harmless."""
        log.warning("engine step failed (%s); retrying its %d sequences one by one", error, len(batch.items))
        rows: list[tuple[Sequence, torch.Tensor]] = []
        for item in batch.items:
            try:
                done, logits = self.runner.run(ScheduledBatch([item]))
            except FatalEngineError:
                raise
            except Exception as exc:
                self._fail(item[0], exc)
                continue
            if done and logits is not None:
                rows.append((done[0], logits[0]))
        rows = [(seq, row) for seq, row in rows if not seq.finished]  # a sibling choice failed
        if not rows:
            return [], None
        return [seq for seq, _ in rows], torch.stack([row for _, row in rows])

    def _sample_one_by_one(self, finishing: list[Sequence], logits: torch.Tensor, error: Exception):
        """Sampling the batch failed: keep the rows that sample alone, fail the others."""
        log.warning("sampling failed (%s); retrying its %d rows one by one", error, len(finishing))
        kept = []
        for i, seq in enumerate(finishing):
            try:
                self._sample(logits[i : i + 1], [seq])
            except Exception as exc:
                self._fail(seq, exc)
                continue
            kept.append(i)
        kept = [i for i in kept if not finishing[i].finished]  # a sibling choice failed
        return [finishing[i] for i in kept], logits[kept]

    def _fail(self, seq: Sequence, exc: Exception | str) -> None:
        """Fail the request `seq` belongs to (all its choices) and free its blocks. A string
        is a reason the caller may read (the adapter it asked for was unloaded)."""
        if isinstance(exc, str):
            log.warning("request %s failed in the engine: %s", seq.request_id, exc)
        else:
            log.error("request %s failed in the engine: %s: %s", seq.request_id, type(exc).__name__, exc)
        for other in self.requests.pop(seq.request_id, [seq]):
            if not other.finished:
                self.scheduler.finish(other)
                other.finish_reason = "abort"
        why = exc if isinstance(exc, str) else f"{type(exc).__name__} while computing this request"
        self._failures[seq.request_id] = why

    def take_failures(self) -> dict[str, str]:
        """Requests failed since the last call, and why; each is gone from the engine."""
        failures, self._failures = self._failures, {}
        return failures

    def _logprobs(self, raw, rows, finishing, tokens) -> dict[int, TokenLogprob]:
        k = max(finishing[i].params.logprobs for i in rows)
        chosen, best = top_logprobs(raw, [tokens[i] for i in rows], k)
        text = self.tokenizer.token_text
        return {
            i: TokenLogprob(
                tokens[i],
                text(tokens[i]),
                chosen[j],
                [(t, text(t), lp) for t, lp in best[j][: finishing[i].params.logprobs]],
            )
            for j, i in enumerate(rows)
        }

    def _append_token(self, seq: Sequence, token: int, logprob: TokenLogprob | None) -> Delta | None:
        if seq.constraint is not None and token not in seq.stop_token_ids:
            try:
                seq.constraint.consume(token)
            except GrammarError as exc:
                self._fail(seq, exc)
                return None
        seq.token_ids.append(token)
        params = seq.params
        finish = None
        new_text = ""
        if token in seq.stop_token_ids:
            finish = "stop"
        else:
            seq.text += seq.detokenizer.push(token)
            if params.stop:
                cut = self._find_stop(seq)
                if cut is not None:
                    seq.text = seq.text[:cut]
                    finish = "stop"
        if finish is None and seq.constraint is not None and seq.constraint.complete:
            finish = "stop"  # the grammar allows nothing more: the output is whole
        if finish is None and (
            seq.num_output_tokens >= params.max_tokens or seq.num_tokens >= self.max_model_len
        ):
            finish = "length"
        if finish is None:
            # Hold back a tail that could still grow into a stop string.
            safe = len(seq.text) - self._stop_holdback(seq)
        else:
            safe = len(seq.text)
        if safe > seq.emitted_chars:
            new_text = seq.text[seq.emitted_chars : safe]
            seq.emitted_chars = safe
        if finish is not None:
            seq.finish_reason = finish
            self.scheduler.finish(seq)
            group = self.requests.get(seq.request_id, [])
            if all(s.finished for s in group):
                self.requests.pop(seq.request_id, None)
        return self._delta(seq, new_text, [token], [logprob] if logprob else None)

    @staticmethod
    def _find_stop(seq: Sequence) -> int | None:
        # Only the text a new token could have completed needs searching.
        longest = max(len(s) for s in seq.params.stop)
        window_start = max(0, seq.emitted_chars - longest)
        hits = [i for s in seq.params.stop if (i := seq.text.find(s, window_start)) != -1]
        return min(hits) if hits else None

    @staticmethod
    def _stop_holdback(seq: Sequence) -> int:
        """Length of the longest suffix of the text that is a proper prefix of a stop string."""
        best = 0
        for stop in seq.params.stop:
            for k in range(min(len(stop) - 1, len(seq.text)), best, -1):
                if seq.text.endswith(stop[:k]):
                    best = k
                    break
        return best

    def _delta(self, seq: Sequence, text: str, token_ids: list[int], logprobs) -> Delta:
        return Delta(
            request_id=seq.request_id,
            index=seq.index,
            text=text,
            token_ids=token_ids,
            logprobs=logprobs,
            finish_reason=seq.finish_reason,
            prompt_tokens=seq.num_prompt_tokens,
            completion_tokens=seq.num_output_tokens,
            cached_tokens=seq.num_cached_tokens,
        )

    # -- introspection -------------------------------------------------------------------------

    def stats(self) -> EngineStats:
        now = time.monotonic()
        while self._recent and now - self._recent[0][0] > 5.0:
            self._recent.popleft()
        span = now - self._recent[0][0] if len(self._recent) > 1 else 0.0
        rate = sum(n for _, n in self._recent) / span if span > 0 else 0.0
        return EngineStats(
            running=len(self.scheduler.running),
            waiting=len(self.scheduler.waiting),
            kv_blocks_total=self.blocks.num_blocks,
            kv_blocks_used=self.blocks.num_used,
            kv_blocks_free=self.blocks.num_free,
            prefix_cache_queries=self.blocks.prefix_queries,
            prefix_cache_hits=self.blocks.prefix_hits,
            prefix_hit_rate=self.blocks.hit_rate,
            tokens_per_second=rate,
            preemptions=self.scheduler.num_preemptions,
            generated_tokens_total=self.generated_tokens_total,
            prompt_tokens_total=self.prompt_tokens_total,
        )

    def prompt_logits(self, prompts: list[list[int]], adapter: str | None = None) -> list[torch.Tensor]:
        """Logits for every position of each prompt, computed as one batch (with the LoRA
        `adapter`, if named). Engine must be idle."""
        with self._whole_prompts(prompts, "logits") as seqs:
            lora = self.adapters.acquire(adapter) if adapter is not None else None
            try:
                for seq in seqs:
                    seq.lora = lora
                return self.runner.full_logits(seqs)
            finally:
                if lora is not None:
                    self.adapters.release(lora)

    @contextmanager
    def _whole_prompts(self, prompts: list[list[int]], request_id: str) -> Iterator[list[Sequence]]:
        """Sequences outside the scheduler holding KV blocks for all of `prompts`, freed after."""
        seqs = [
            Sequence(
                request_id,
                i,
                list(ids),
                len(ids),
                SamplingParams(max_tokens=1),
                frozenset(),
                IncrementalDetokenizer(self.tokenizer, []),
                None,
                status=Status.RUNNING,
            )
            for i, ids in enumerate(prompts)
        ]
        try:
            for seq in seqs:
                if not self.blocks.allocate_slots(seq, seq.num_tokens):
                    raise ValueError("not enough free KV blocks for these prompts")
            yield seqs
        finally:
            for seq in seqs:
                self.blocks.free(seq)

    @torch.inference_mode()
    def embed(self, prompts: list[list[int]], pooling: Pooling) -> torch.Tensor:
        """One vector per prompt, [len(prompts), hidden] float32: its final hidden states pooled
        (pooling.py). Prompts run whole (each must fit the context window), as many per forward
        pass as the per-step token budget and the free KV blocks allow; the blocks are freed
        after each pass and nothing enters the prefix cache. Run between steps."""
        check_embedding_inputs(prompts, self.model_config.vocab_size, self.max_model_len)
        vectors = []
        for batch in self._embedding_batches(prompts):
            with self._whole_prompts(batch, "embed") as seqs:
                hidden = self.runner.hidden_states(seqs)
            vectors.append(pool(hidden, [len(ids) for ids in batch], pooling))
        self.prompt_tokens_total += sum(len(ids) for ids in prompts)
        return torch.cat(vectors)

    def _embedding_batches(self, prompts: list[list[int]]) -> Iterator[list[list[int]]]:
        """Consecutive runs of prompts within max_num_batched_tokens and the free KV blocks (a
        longer prompt runs alone)."""
        budget, free = max(self.config.max_num_batched_tokens, 1), self.blocks.num_free
        batch: list[list[int]] = []
        tokens = blocks = 0
        for ids in prompts:
            need = self.blocks.blocks_needed(len(ids))
            if batch and (tokens + len(ids) > budget or blocks + need > free):
                yield batch
                batch, tokens, blocks = [], 0, 0
            batch.append(ids)
            tokens += len(ids)
            blocks += need
        if batch:
            yield batch
