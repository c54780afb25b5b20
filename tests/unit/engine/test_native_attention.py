"""The C decode-attention kernel (engine/kernels/decode_attention.c) against attention written
out in PyTorch, and the engine's fallback when the kernel cannot be built."""

import os
import random

import pytest
import torch
from test_batching import make_prompts, run_all  # same directory (pytest puts it on sys.path)

from stratus.engine import EngineConfig, EngineCore, native
from stratus.engine.model_runner import ModelRunner

pytestmark = pytest.mark.skipif(
    native.decode_attention_kernel() is None, reason="no C compiler here: the kernel cannot be built"
)


def reference(q, kv, tables, lengths, block_size, num_kv_heads, window):
    """Attention of each row's query over its context, gathered token by token."""
    group = q.shape[1] // num_kv_heads
    out = torch.empty(len(lengths), *q.shape[1:])
    for row, (table, length) in enumerate(zip(tables, lengths)):
        first = max(0, length - window) if window else 0
        slots = torch.tensor(
            [table[p // block_size] * block_size + p % block_size for p in range(first, length)]
        )
        keys = kv[:num_kv_heads, slots].repeat_interleave(group, 0).double()  # [H, L, D]
        values = kv[num_kv_heads:, slots].repeat_interleave(group, 0).double()
        scores = (keys @ q[row].double().unsqueeze(-1)).squeeze(-1) * q.shape[-1] ** -0.5
        out[row] = (torch.softmax(scores, -1).unsqueeze(-1) * values).sum(1).float()
    return out


@pytest.mark.parametrize(
    "heads,kv_heads,head_dim",
    [
        (12, 4, 64),
        (8, 8, 128),
        (8, 1, 80),
    ],  # GQA, multi-head, multi-query with a size the kernel does not specialise
)
@pytest.mark.parametrize("window", [None, 40])
@pytest.mark.parametrize("threads", [1, 4])  # 4 threads for 6 rows: runs of unequal row counts
def test_kernel_matches_attention_written_out(heads, kv_heads, head_dim, window, threads):
    block_size, num_blocks = 16, 96
    gen = torch.Generator().manual_seed(heads + head_dim)
    kv = torch.randn(2 * kv_heads, num_blocks * block_size, head_dim, generator=gen)
    lengths = [1, 15, 16, 17, 150, 333]
    # Scattered blocks in no order, as a pool looks after preemptions and prefix-cache hits.
    blocks = list(range(num_blocks))
    random.Random(heads).shuffle(blocks)
    tables, width = [], -(-max(lengths) // block_size)
    for length in lengths:
        need = -(-length // block_size)
        tables.append(blocks[:need] + [0] * (width - need))
        blocks = blocks[need:]
    # q is a view into a fused qkv projection, as in the model: rows are strided.
    qkv = torch.randn(len(lengths) + 2, heads + 2 * kv_heads, head_dim, generator=gen)
    q = qkv[:, :heads]
    out = torch.full((len(lengths) + 2, heads, head_dim), 7.0)
    native.decode_attention(
        q,
        kv,
        out,
        torch.tensor(tables, dtype=torch.int32),
        torch.tensor(lengths, dtype=torch.int32),
        block_size,
        kv_heads,
        head_dim**-0.5,
        window,
        threads,
    )
    expected = reference(q, kv, tables, lengths, block_size, kv_heads, window)
    assert (out[: len(lengths)] - expected).abs().max() < 2e-5
    assert (out[len(lengths) :] == 7.0).all()  # rows past the decodes are left alone


def test_kernel_refuses_lengths_and_block_ids_outside_the_pool():
    """Checked before anything is read or written: a bad table never becomes a wild read."""
    kv, q = torch.randn(2, 64, 32), torch.randn(2, 1, 32)
    good_tables, good_lengths = [[0, 1], [2, 3]], [20, 32]
    cases = [
        ([[0, 1], [2, 3]], [0, 32]),  # an empty context
        ([[0, 1], [2, 3]], [20, 33]),  # longer than its table
        ([[0, 1], [2, 4]], [20, 32]),  # block 4 of a 4-block pool
        ([[0, -1], [2, 3]], [20, 32]),  # a negative block id
    ]
    for tables, lengths in [(good_tables, good_lengths)] + cases:
        out = torch.full((2, 1, 32), 7.0)
        call = lambda t=tables, n=lengths, o=out: native.decode_attention(  # noqa: E731
            q,
            kv,
            o,
            torch.tensor(t, dtype=torch.int32),
            torch.tensor(n, dtype=torch.int32),
            16,
            1,
            0.2,
            None,
            2,
        )
        if tables is good_tables:
            call()
            assert not (out == 7.0).any()
            continue
        with pytest.raises(ValueError, match="outside"):
            call()
        assert (out == 7.0).all()  # nothing written


def test_kernel_rejects_shapes_that_do_not_fit_together():
    kv, q = torch.zeros(2, 32, 64), torch.zeros(1, 2, 64)
    tables, lengths = torch.zeros(1, 1, dtype=torch.int32), torch.ones(1, dtype=torch.int32)
    for bad in (
        dict(out=torch.empty(1, 1, 64)),  # fewer heads than q: writes would overrun it
        dict(kv=torch.zeros(4, 32, 64)),  # not 2 * num_kv_heads planes
        dict(tables=torch.zeros(1, dtype=torch.int32)),  # not [rows, W]
        dict(q=torch.zeros(1, 2, 64, dtype=torch.float64)),
    ):
        args = dict(q=q, kv=kv, out=torch.empty(1, 2, 64), tables=tables, lengths=lengths) | bad
        with pytest.raises(ValueError):
            native.decode_attention(
                args["q"], args["kv"], args["out"], args["tables"], args["lengths"], 16, 1, 0.125, None
            )


def test_kernel_rejects_a_layout_it_cannot_read():
    kv = torch.zeros(2, 32, 64)
    q = torch.zeros(1, 2, 64).transpose(0, 1)  # heads not contiguous
    with pytest.raises(ValueError, match="contiguous"):
        native.decode_attention(
            q,
            kv,
            torch.empty(2, 1, 64),
            torch.zeros(1, 1, dtype=torch.int32),
            torch.ones(1, dtype=torch.int32),
            16,
            1,
            0.125,
            None,
        )


def test_loading_the_kernel_leaves_floating_point_modes_alone():
    """-ffast-math on gcc's link line would add crtfastmath.o, which flushes denormals to zero
    for the whole process when the library loads; native.py compiles with it and links without."""
    native.decode_attention_kernel()
    tiny = torch.tensor([1e-38]) * torch.tensor([1e-3])
    assert tiny.item() != 0.0


def test_engine_outputs_are_the_same_with_and_without_the_kernel(llama_dir):
    """Greedy outputs of a batch (with preemption: scattered block tables) match token for
    token between the kernel and the PyTorch decode path."""
    prompts = make_prompts(8, 20)

    def outputs(kernel: bool):
        engine = EngineCore(
            llama_dir,
            EngineConfig(
                num_kv_blocks=24, max_model_len=128, max_num_batched_tokens=64, native_kernels=kernel
            ),
        )
        assert engine.runner.native_decode is kernel
        return run_all(engine, prompts, 48), engine.stats().preemptions

    (with_kernel, preempted), (without, _) = outputs(True), outputs(False)
    assert preempted > 0
    assert with_kernel == without


def test_without_a_compiler_the_engine_uses_pytorch(llama_dir, tmp_path, monkeypatch):
    from stratus.engine.config import ModelConfig

    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("STRATUS_KERNEL_CACHE", str(tmp_path / "cache"))  # nothing built there yet
    native.decode_attention_kernel.cache_clear()
    try:
        assert native.decode_attention_kernel() is None
        runner = ModelRunner(llama_dir, ModelConfig.from_dir(llama_dir), EngineConfig(num_kv_blocks=16), 128)
        assert runner.native_decode is False
    finally:
        native.decode_attention_kernel.cache_clear()  # later tests build (or find) the real one


def test_a_build_under_a_permissive_umask_still_loads(tmp_path, monkeypatch):
    """umask 002 (common for desktop users) must not leave a group-writable library that the
    next process then refuses."""
    monkeypatch.setenv("STRATUS_KERNEL_CACHE", str(tmp_path / "cache"))
    old = os.umask(0o002)
    native.decode_attention_kernel.cache_clear()
    try:
        assert native.decode_attention_kernel() is not None  # built
        native.decode_attention_kernel.cache_clear()
        assert native.decode_attention_kernel() is not None  # and loaded again from the cache
    finally:
        os.umask(old)
        native.decode_attention_kernel.cache_clear()


def test_a_cache_under_a_directory_others_can_write_is_refused(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # not sticky: another user could rename our directory and put theirs there
    monkeypatch.setenv("STRATUS_KERNEL_CACHE", str(shared / "mine"))
    native.decode_attention_kernel.cache_clear()
    try:
        assert native.decode_attention_kernel() is None
    finally:
        native.decode_attention_kernel.cache_clear()


def test_a_cache_others_can_write_is_refused(tmp_path, monkeypatch):
    """The cache holds code the engine loads: a directory other users can write is not trusted."""
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)  # mkdir's mode is masked by the umask
    monkeypatch.setenv("STRATUS_KERNEL_CACHE", str(shared))
    native.decode_attention_kernel.cache_clear()
    try:
        assert native.decode_attention_kernel() is None
        assert not list(shared.iterdir())  # nothing built there either
    finally:
        native.decode_attention_kernel.cache_clear()
