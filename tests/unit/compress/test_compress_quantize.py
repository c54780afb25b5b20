"""The quantizers and the engine's quantized layers, on plain tensors."""

import pytest
import torch

from stratus.compress.gptq import gptq_int4
from stratus.compress.prune import is_two_four, prune_weight, sparsity_of
from stratus.compress.quantize import dequantize, fake_quantize_int4, quantize_int4, quantize_int8
from stratus.engine.quant import Int4Linear, Int8Linear, pack_int4, unpack_int4


def weight(rows, cols, seed=0):
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * 0.05


def test_pack_unpack_round_trip():
    q = torch.randint(0, 16, (5, 12), dtype=torch.uint8)
    packed = pack_int4(q)
    assert packed.shape == (5, 6) and packed.dtype == torch.uint8
    assert torch.equal(packed[:, 0] & 15, q[:, 0]) and torch.equal(packed[:, 0] >> 4, q[:, 1])
    assert torch.equal(unpack_int4(packed), q)


def test_int8_error_is_at_most_half_a_step_per_weight():
    w = weight(64, 96)
    t = quantize_int8(w)
    assert t["qweight"].dtype == torch.int8 and t["scales"].shape == (64,)
    err = (dequantize(t, 96) - w).abs()
    assert (err <= t["scales"][:, None] / 2 + 1e-7).all()


@pytest.mark.parametrize("group_size,cols", [(128, 256), (32, 96), (128, 200)])
def test_int4_error_is_bounded_per_group(group_size, cols):
    """Every weight is within half a quantization step (plus the float16 rounding of the zero)
    of its original; over the matrix the relative error stays under 12% for Gaussian weights."""
    w = weight(48, cols)
    t = quantize_int4(w, group_size)
    padded = -(-cols // group_size) * group_size
    assert t["qweight"].shape == (48, padded // 2) and t["scales"].dtype == torch.float16
    back = dequantize(t, cols)
    step = t["scales"].float().repeat_interleave(group_size, dim=1)[:, :cols]
    zero_rounding = t["zeros"].float().abs().repeat_interleave(group_size, dim=1)[:, :cols] * 2**-10
    assert ((back - w).abs() <= step / 2 + zero_rounding + 1e-6).all()
    assert (back - w).norm() / w.norm() < 0.12
    # the search's fast fake quantizer agrees with the stored format to within one step
    assert ((fake_quantize_int4(w, group_size) - back).abs() <= step + 1e-6).all()


def test_clipping_narrows_the_range():
    w = weight(8, 128)
    full = quantize_int4(w, 128)
    clipped = quantize_int4(w, 128, clip=torch.full((8, 1), 0.8))
    assert (clipped["scales"].float() < full["scales"].float()).all()


@pytest.mark.timeout(60)
def test_gptq_lowers_the_output_error_on_correlated_inputs():
    """Error compensation: on inputs with correlated channels (as real activations have) the
    layer's output error is well below plain rounding's, in the same stored format."""
    g = torch.Generator().manual_seed(2)
    # 200 channels driven by 32 underlying factors, plus a little noise of their own
    x = torch.randn(1024, 32, generator=g) @ torch.randn(32, 200, generator=g)
    x = x + 0.1 * torch.randn(1024, 200, generator=g)
    w = weight(48, 200)
    plain, compensated = quantize_int4(w, 64), gptq_int4(w, x, 64)
    assert {k: v.shape for k, v in compensated.items()} == {k: v.shape for k, v in plain.items()}

    def output_error(t):
        return ((x @ dequantize(t, 200).T - x @ w.T).norm() / (x @ w.T).norm()).item()

    assert output_error(compensated) < 0.7 * output_error(plain)


def load(layer, tensors):
    for key, value in tensors.items():
        getattr(layer, key).copy_(value)
    layer.prepare()
    return layer


@pytest.mark.parametrize("rows", [1, 5, 40, 200])  # 40, 200: the dense paths (module doc)
@pytest.mark.parametrize("out_features,in_features", [(96, 256), (100, 200)])
def test_quantized_layers_multiply_by_their_dequantized_weight(rows, out_features, in_features):
    """The matmul reads the compressed weight: its result equals x @ dequantized(W).T to within
    the bfloat16 rounding of activations on the packed path (1% of the output's scale)."""
    w = weight(out_features, in_features)
    x = torch.randn(rows, in_features, generator=torch.Generator().manual_seed(1))
    for layer, tensors in (
        (Int8Linear(in_features, out_features), quantize_int8(w)),
        (Int4Linear(in_features, out_features, group_size=64), quantize_int4(w, 64)),
    ):
        load(layer, tensors)
        ref = x @ dequantize(tensors, in_features).T
        got = layer(x)
        assert got.shape == (rows, out_features)
        assert (got - ref).abs().max() <= 0.01 * ref.abs().max()
        # the dense path (large batches) rounds as the packed kernel does: same result up to
        # float32 summation order and one bfloat16 rounding of the output
        dense = layer._dense_matmul(x)
        assert (dense - got).abs().max() <= 2**-7 * ref.abs().max()
        # off the CPU (no packed kernel) the layer dequantizes and multiplies in full precision
        layer._choose_paths(torch.device("cuda"))  # only the device type matters here
        exact = x @ layer.dequantize().T
        assert torch.allclose(layer(x), exact, atol=1e-5 * exact.abs().max().item())
        # on the CPU the layer uses its kernel's bfloat16 scales (and zeros) on both paths
        stored = dequantize(tensors, in_features)
        assert (layer.dequantize() - stored).abs().max() <= 2**-7 * stored.abs().max()


def test_bias_and_leading_dimensions():
    w = weight(64, 128)
    layer = load(Int8Linear(128, 64, bias=True), quantize_int8(w))
    layer.bias.copy_(torch.arange(64.0))
    x = torch.randn(2, 3, 128)
    expected = x @ layer.dequantize().T + torch.arange(64.0)
    assert torch.allclose(layer(x), expected, atol=0.02 * expected.abs().max().item())


def test_int4_layer_rejects_impossible_group_size():
    with pytest.raises(ValueError, match="group size"):
        Int4Linear(128, 64, group_size=100)


def test_two_four_pruning_pattern_and_unstructured_sparsity():
    w = weight(32, 64)
    pruned = prune_weight(w, "2:4", 0.5)
    assert is_two_four(pruned) and not is_two_four(w)
    kept = pruned != 0
    assert torch.equal(pruned[kept], w[kept])  # survivors unchanged
    groups = w.abs().view(32, 16, 4)
    assert torch.equal(pruned.abs().view(32, 16, 4).amax(-1), groups.amax(-1))  # largest kept
    sparse = prune_weight(w, "unstructured", 0.7)
    assert sparsity_of(sparse) == pytest.approx(0.7, abs=0.01)
    assert ((sparse == 0).sum(dim=1) == round(64 * 0.7)).all()  # per row, no row wiped out
