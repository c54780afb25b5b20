"""Owns the model and the KV pool on one device; turns a scheduled batch into logits."""

from __future__ import annotations

from pathlib import Path

import torch

from . import gguf, memory, native
from .config import EngineConfig, ModelConfig
from .decode_groups import block_table_tensor, contiguous_start, make_decode_groups, overhead_tokens
from .lora import LoraBatch
from .model import AttentionBatch, DecodeSlice, LlamaModel, PagedDecodes, PrefillSpan
from .packed_linear import pack_linears, packing_available
from .scheduler import ScheduledBatch
from .sequence import Sequence
from .weights import load_weights


class ModelRunner:
    def __init__(self, path: Path, model_config: ModelConfig, config: EngineConfig, max_model_len: int):
        self.device = config.resolve_device()
        self.dtype = config.resolve_dtype(model_config, self.device)
        self.block_size = config.block_size
        model = self._load_model(path, model_config, config, max_model_len)
        if packing_available(self.device, self.dtype):  # float32 on the CPU: see packed_linear.py
            pack_linears(model)
        self.model = model.eval()
        local = model.config  # what this process computes: all of it, or a rank's share
        self.pool = self._plan_pool(path, local, config, max_model_len)
        self.num_blocks = self.pool.num_blocks
        # Per layer, K heads then V heads: [2 * kv_heads, slots, head_dim]. Head-major, so a
        # gathered context is contiguous per head (see model.gather_blocks), and K and V of a
        # step are written, and read back, in one copy each.
        kv_shape = (2 * local.num_kv_heads, self.num_blocks * self.block_size, local.head_dim)
        self.kv_caches = [memory.zeroed(kv_shape, self.dtype, self.device) for _ in range(local.num_layers)]
        self.group_overhead = overhead_tokens(local.num_kv_heads, local.head_dim, self.dtype)
        # Float32 decode attention on the CPU in the C kernel (native.py), when it builds here.
        self.native_decode = (
            config.native_kernels
            and self.device.type == "cpu"
            and self.dtype == torch.float32
            and not model_config.attn_logit_softcap  # the C kernel does not soft-cap scores
            and native.decode_attention_kernel() is not None
        )

    def _load_model(
        self, path: Path, model_config: ModelConfig, config: EngineConfig, max_model_len: int
    ) -> LlamaModel:
        """The model with its weights (sets `weight_bytes`), refused first when the memory
        available cannot hold them; parallel/runner.py loads a rank's share (a StageModel,
        which answers the same calls)."""
        memory.check_weights_fit(
            path.name,
            memory.weight_bytes_estimate(path, model_config, self.dtype),
            memory.available_bytes(self.device),
            self.dtype,
        )
        with torch.device("meta"):
            model = LlamaModel(model_config, max_positions=1)
        model = model.to_empty(device=self.device).to(self.dtype)
        if model_config.tie_word_embeddings:
            model.lm_head.weight = model.embed_tokens.weight
        if model_config.quantization:  # a `stratus compress` checkpoint: see quant.py
            from .quant import install_quant_linears

            install_quant_linears(model, model_config.quantization)
        elif gguf.is_gguf(path) and not config.gguf_dequantize:  # Q8_0/Q4_0/Q4_1 kept quantized
            from .gguf_blocks import install_native_layers, native_layers

            install_native_layers(model, native_layers(path, model_config), self.dtype)
        from .model import RotaryEmbedding  # rope tables are computed, not loaded

        model.rope = RotaryEmbedding(model_config, max_model_len).to(self.device)
        load_weights(model, path, self.dtype)
        # what the weights hold as loaded (quantized layers keep theirs as buffers), before packing
        self.weight_bytes = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
        return model

    def _plan_pool(
        self, path: Path, local: ModelConfig, config: EngineConfig, max_model_len: int
    ) -> memory.PoolPlan:
        """The KV pool's size for what this process computes (`local`), from the memory
        available after the weights."""
        return memory.plan_pool(
            path.name,
            local,
            config,
            self.dtype,
            self.device,
            max_model_len,
            memory.available_bytes(self.device),
        )

    def close(self) -> None:
        """Release what outlives this object (a parallel runner's ranks); nothing here."""

    def block_tables(self, seqs: list[Sequence], length: int) -> torch.Tensor:
        """[len(seqs), W] the blocks holding positions 0..length-1 of each sequence (padded with 0)."""
        return block_table_tensor([s.block_table for s in seqs], length, self.block_size, self.device)

    def _paged_decodes(self, decodes: list[tuple[Sequence, int]]) -> PagedDecodes | None:
        """All decode rows, for the C kernel: each row's block table and context length."""
        if not decodes:
            return None
        lengths = [seq.num_computed_tokens + 1 for seq, _ in decodes]
        # Sized for the longest context, so every table covers its own row's context.
        tables = block_table_tensor(
            [seq.block_table for seq, _ in decodes], max(lengths), self.block_size, self.device, torch.int32
        )
        return PagedDecodes(tables, torch.tensor(lengths, dtype=torch.int32), torch.get_num_threads())

    def _pytorch_decode_plan(
        self, decodes: list[tuple[Sequence, int]]
    ) -> tuple[list[tuple[Sequence, int]], list[DecodeSlice], list]:
        """The PyTorch path: rows whose context is one slice of the pool first (read in place),
        then the rest longest context first, so that decode groups are runs of rows.
        Returns the decodes in that order, the in-place slices and the groups."""
        in_place, gathered, slices = [], [], []
        for seq, n in decodes:
            length = seq.num_computed_tokens + 1
            first = contiguous_start(seq.block_table, -(-length // self.block_size))
            if first is None:
                gathered.append((seq, n))
            else:
                slices.append(DecodeSlice(len(in_place), first * self.block_size, length))
                in_place.append((seq, n))
        gathered.sort(key=lambda item: -item[0].num_computed_tokens)
        groups = []
        if gathered:
            groups = make_decode_groups(
                [s.num_computed_tokens + 1 for s, _ in gathered],
                [s.block_table for s, _ in gathered],
                self.block_size,
                self.model.config.sliding_window,
                self.group_overhead,
                self.dtype,
                self.device,
                first_row=len(in_place),
            )
        return in_place + gathered, slices, groups

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> tuple[list[Sequence], torch.Tensor | None]:
        """Compute the batch; returns the sequences that reached their last token and their logits."""
        # Decodes first (rows [0, len(decodes)), in the order their attention plan gives).
        decodes = [(seq, n) for seq, n in batch.items if n == 1]
        if self.native_decode:  # any order will do: rows of one adapter together (one LoRA group)
            decodes.sort(key=_adapter_order)
            slices, groups, paged = [], [], self._paged_decodes(decodes)
        else:
            decodes, slices, groups = self._pytorch_decode_plan(decodes)
            paged = None
        prefills = sorted(((s, n) for s, n in batch.items if n > 1), key=_adapter_order)
        input_ids: list[int] = []
        positions: list[int] = []
        for seq, n in decodes + prefills:
            start = seq.num_computed_tokens
            input_ids.extend(seq.token_ids[start : start + n])
            positions.extend(range(start, start + n))
        pos_t = torch.tensor(positions, dtype=torch.long)
        # Slot of every new token: its block's first slot plus its offset in the block.
        block_of = torch.tensor(
            [
                seq.block_table[p // self.block_size]
                for seq, n in decodes + prefills
                for p in range(seq.num_computed_tokens, seq.num_computed_tokens + n)
            ],
            dtype=torch.long,
        )
        slot_mapping = (block_of * self.block_size + pos_t % self.block_size).to(self.device)

        spans = []
        row = len(decodes)
        for seq, n in prefills:
            total = seq.num_computed_tokens + n
            spans.append(PrefillSpan(row, n, seq.num_computed_tokens, self.block_tables([seq], total)[0]))
            row += n
        attn = AttentionBatch(slot_mapping, self.block_size, len(decodes), groups, spans, slices, paged)
        lora = None
        if any(seq.lora is not None for seq, _ in batch.items):
            lora = LoraBatch.of_rows(
                [seq.lora for seq, n in decodes + prefills for _ in range(n)], self.device
            )
        # Only a sequence whose last token was computed this step samples a next token; results
        # keep the scheduler's order, whatever order the rows ran in.
        last_row, row = {}, 0
        for seq, n in decodes + prefills:
            row += n
            last_row[seq.seq_id] = row - 1
        last_rows, finishing = [], []
        for seq, n in batch.items:
            if seq.num_computed_tokens + n == seq.num_tokens:
                last_rows.append(last_row[seq.seq_id])
                finishing.append(seq)
        ids = torch.tensor(input_ids, dtype=torch.long, device=self.device)
        logits = self._compute(ids, pos_t.to(self.device), attn, lora, "logits", last_rows)
        return finishing, logits

    def _compute(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        attn: AttentionBatch,
        lora: LoraBatch | None,
        want: str,
        rows: list[int] | None = None,
    ) -> torch.Tensor | None:
        """One forward pass. want "hidden": the final hidden states of every row; "logits": the
        logits of `rows` (None: every row; empty: none, the pass only fills the KV cache)."""
        hidden = self.model(input_ids, positions, self.kv_caches, attn, lora)
        if want == "hidden":
            return hidden
        if rows is None:
            return self.model.logits(hidden)
        if not rows:
            return None
        return self.model.logits(hidden[torch.tensor(rows, device=self.device)])

    @torch.inference_mode()
    def full_logits(self, seqs: list[Sequence]) -> list[torch.Tensor]:
        """Logits at every position of each sequence, all in one forward pass (parity, perplexity).
        The sequences must already own blocks for all their tokens."""
        logits = self._compute(*self._whole_sequences(seqs), "logits")
        assert logits is not None
        return list(logits.split([s.num_tokens for s in seqs]))

    @torch.inference_mode()
    def hidden_states(self, seqs: list[Sequence]) -> torch.Tensor:
        """[sum of lengths, hidden] final hidden states (after the last norm) of every position
        of each sequence, back to back, in one forward pass from position 0 (embeddings, logits).
        The sequences must already own blocks for all their tokens."""
        hidden = self._compute(*self._whole_sequences(seqs), "hidden")
        assert hidden is not None
        return hidden

    def _whole_sequences(
        self, seqs: list[Sequence]
    ) -> tuple[torch.Tensor, torch.Tensor, AttentionBatch, LoraBatch | None]:
        """Input ids, positions, attention plan and adapters of every position of each sequence
        from 0."""
        spans, rows, slot_mapping = [], 0, []
        for seq in seqs:
            blocks = self.block_tables([seq], seq.num_tokens)[0]
            spans.append(PrefillSpan(rows, seq.num_tokens, 0, blocks))
            pos = torch.arange(seq.num_tokens, device=self.device)
            slot_mapping.append(blocks[pos // self.block_size] * self.block_size + pos % self.block_size)
            rows += seq.num_tokens
        slot_mapping = torch.cat(slot_mapping)
        ids = torch.tensor([t for s in seqs for t in s.token_ids], dtype=torch.long, device=self.device)
        positions = torch.cat([torch.arange(s.num_tokens, device=self.device) for s in seqs])
        lora = LoraBatch.of_rows([s.lora for s in seqs for _ in range(s.num_tokens)], self.device)
        return ids, positions, AttentionBatch(slot_mapping, self.block_size, 0, [], spans), lora


def _adapter_order(item: tuple[Sequence, int]) -> int:
    """Sorts rows of one adapter next to each other (the base model's first)."""
    lora = item[0].lora
    return 0 if lora is None else id(lora)
