"""Weight-only quantized linear layers: what the engine runs for a `stratus compress` checkpoint.

The format on disk (config.json carries `"quantization": {"method": "int8" | "int4", ...}`):

    int8  <name>.qweight  int8    [out, in]         w = qweight * scales[:, None]
          <name>.scales   float32 [out]             (symmetric, one scale per output channel)
    int4  <name>.qweight  uint8   [out, in_p // 2]  two 4-bit values q in 0..15 per byte: input
                                                    column 2j in the low nibble, 2j+1 in the high
          <name>.scales   float16 [out, in_p // G]  w = (q - 8) * scale + zero, one scale and
          <name>.zeros    float16 [out, in_p // G]  zero per group of G input columns

`in_p` is `in` rounded up to a multiple of the group size G; padded columns (zero weights before
quantization) only ever meet zero activations. Every tensor is indexed by output row first, so
q/k/v (and gate/up) fuse by concatenating rows, exactly as the full-precision weights do.

The matmul, chosen by measurement (docs/BENCHMARKS.md, "Compression"): torch's packed kernels
`_weight_int8pack_mm` and `_weight_int4pack_mm_for_cpu` read the compressed weight directly and
are vectorized for bfloat16 activations (fed float32 they take a scalar path, 5-25x slower than
a plain float32 matmul). So on the CPU a small batch (decode) goes through those kernels with the
activations rounded to bfloat16. A large batch (prefill) is cheaper the other way round: the
weight is dequantized one tile of rows at a time and multiplied by the dense matmul, which then
reuses each weight across all the rows. Where the CPU multiplies bfloat16 natively (AVX512-BF16
or AMX, as oneDNN uses them) that dense matmul runs in bfloat16, and pays from DENSE_MIN_ROWS
rows on; elsewhere (AVX2) it runs in float32, and only pays beyond PACKED_MAX_ROWS rows. Any
device other than the CPU always dequantizes and multiplies in full precision.
The kernels take their scales (and int4 zeros) in bfloat16 too, and return bfloat16. So that a
sequence computes the same thing whichever path its batch takes, a layer that uses the kernels
rounds its scales to bfloat16 for both paths, and the dense path rounds its inputs and outputs
to bfloat16 as the kernels do; the two paths then differ only in float32 summation order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .types import CheckpointError

METHODS = ("int8", "int4")
INT4_GROUP_SIZES = (32, 64, 128, 256)  # what _weight_int4pack_mm_for_cpu accepts
PACKED_MAX_ROWS = 512  # float32 dense matmul: above this many rows dequantizing is no slower
# bfloat16 dense matmul: from here on it is faster (int8_block multiplies with the int4 kernel)
DENSE_MIN_ROWS = {"int8": 32, "int4": 128, "int8_block": 128}
ROW_BLOCK = 32  # the CPU int4 kernel wants out_features in multiples of 16; 32 fixes its layout
# torch 2.13's AVX512 `_weight_int8pack_mm` reads the input dimension in blocks of 16 with no
# tail: any other width gave garbage or a segfault here (measured), so the layer pads it.
INT8_K_MULTIPLE = 16
TILE_ELEMENTS = 1 << 20  # weights dequantized at a time on the dense path (4 MiB as float32)


def padded_in_features(in_features: int, group_size: int) -> int:
    return -(-in_features // group_size) * group_size


def int4_shapes(out_features: int, in_features: int, group_size: int) -> dict[str, tuple[int, ...]]:
    """Shapes of the stored tensors of one int4 linear layer."""
    padded = padded_in_features(in_features, group_size)
    groups = padded // group_size
    return {
        "qweight": (out_features, padded // 2),
        "scales": (out_features, groups),
        "zeros": (out_features, groups),
    }


def int8_shapes(out_features: int, in_features: int) -> dict[str, tuple[int, ...]]:
    return {"qweight": (out_features, in_features), "scales": (out_features,)}


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """[out, in] integers in 0..15 (in even) -> [out, in // 2] uint8, column 2j in the low nibble."""
    q = q.to(torch.uint8)
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of `pack_int4`: [out, in // 2] uint8 -> [out, in] uint8 in 0..15."""
    return torch.stack((packed & 15, packed >> 4), dim=-1).flatten(-2)


def dequantize_int4(
    qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """[out, in_p] weights in `dtype` from the stored int4 tensors."""
    q = unpack_int4(qweight).to(dtype)
    out, padded = q.shape
    groups = scales.shape[1]
    scales = scales.to(dtype).unsqueeze(-1)
    # (q - 8) * scale + zero as q * scale + (zero - 8 * scale), in place: two passes over the
    # weights instead of three, and the in-place broadcasts were 1.3-16x faster than the
    # out-of-place ones measured (addcmul, or `*` then `+`).
    q = q.view(out, groups, padded // groups).mul_(scales)
    return q.add_(zeros.to(dtype).unsqueeze(-1) - 8 * scales).view(out, padded)


def dequantize_int8(qweight: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return qweight.to(dtype) * scales.to(dtype).unsqueeze(-1)


def int4_kernel_operands(
    q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """torch's CPU int4 kernel's operands for w = (q - 8) * scale + zero: q int32 [out, in] in
    0..15, scales and zeros [out, in // G]. Rows are padded to a multiple of ROW_BLOCK."""
    out = q.shape[0]
    extra = -(-out // ROW_BLOCK) * ROW_BLOCK - out
    if extra:
        q = F.pad(q, (0, 0, 0, extra), value=8)
        scales = F.pad(scales, (0, 0, 0, extra), value=1.0)
        zeros = F.pad(zeros, (0, 0, 0, extra))
    weight = torch._convert_weight_to_int4pack_for_cpu(q, 1)
    # [groups, out, 2] as the kernel reads it: (q - 8) * scale + zero
    scale_zeros = torch.stack((scales.t(), zeros.t()), dim=-1).to(torch.bfloat16).contiguous()
    return weight, scale_zeros


def int4_kernel_matmul(
    x: torch.Tensor, weight: torch.Tensor | None, group_size: int, scale_zeros: torch.Tensor | None
) -> torch.Tensor:
    """x (bfloat16) [rows, in] @ the kernel's weight: [rows, out rounded up to ROW_BLOCK]."""
    assert weight is not None and scale_zeros is not None, "prepare() first"
    return torch._weight_int4pack_mm_for_cpu(x, weight, group_size, scale_zeros)


def bf16_matmul_is_native() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (oneDNN then uses AVX512-BF16 or AMX)."""
    cpu = torch.cpu
    return bool(cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())


class QuantLinear(nn.Module):
    """Common part: bias, the dense fallback path, the choice of path per call."""

    method = ""

    def __init__(self, in_features: int, out_features: int, bias: bool, device=None):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer("bias", torch.zeros(out_features, device=device) if bias else None)
        self.packed = False  # set by `prepare` when the CPU kernel will be used
        self.dense_dtype: torch.dtype | None = None  # bfloat16 where the CPU multiplies it natively
        self.dense_min_rows = 0  # batches of fewer rows use the packed kernel

    def _choose_paths(self, device: torch.device) -> None:
        """Called by `prepare`: which matmul each batch size gets on this device (module doc)."""
        self.packed = device.type == "cpu"
        if not self.packed:
            self.dense_dtype, self.dense_min_rows = None, 0
        elif bf16_matmul_is_native():
            self.dense_dtype, self.dense_min_rows = torch.bfloat16, DENSE_MIN_ROWS[self.method]
        else:
            self.dense_dtype, self.dense_min_rows = None, PACKED_MAX_ROWS + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        if x.shape[0] < self.dense_min_rows:
            y = self._packed_matmul(x)
        else:
            y = self._dense_matmul(x)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*shape[:-1], self.out_features)

    def _dense_matmul(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed:  # see the module docstring: round as the packed kernels do
            y = self._dequantized_matmul(x.to(torch.bfloat16).to(self.dense_dtype or x.dtype))
            return y.to(torch.bfloat16).to(x.dtype)
        return self._dequantized_matmul(x)

    def _dequantized_matmul(self, x: torch.Tensor) -> torch.Tensor:
        """Dequantize a tile of output rows at a time, so the float copy stays small."""
        rows = max(1, TILE_ELEMENTS // max(1, self.stored_in_features))
        xp = self._pad_input(x)
        if rows >= self.out_features:
            return self._tile_matmul(xp, 0, self.out_features)
        parts = [
            self._tile_matmul(xp, r, min(r + rows, self.out_features))
            for r in range(0, self.out_features, rows)
        ]
        return torch.cat(parts, dim=-1)

    def _tile_matmul(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """x @ W[start:stop].T in x's dtype. A bfloat16 x gets the weight dequantized in float32
        and rounded once, not rounded at every step of the dequantization."""
        if x.dtype == torch.bfloat16:
            return F.linear(x, self.dequantize_rows(start, stop, torch.float32).to(x.dtype))
        return F.linear(x, self.dequantize_rows(start, stop, x.dtype))

    @property
    def stored_in_features(self) -> int:
        return self.in_features

    def _pad_input(self, x: torch.Tensor) -> torch.Tensor:
        extra = self.stored_in_features - self.in_features
        return F.pad(x, (0, extra)) if extra else x

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The [out, in] weight this layer multiplies by (for tests and evaluation)."""
        return self.dequantize_rows(0, self.out_features, dtype)[:, : self.in_features]

    def dequantize_rows(self, start: int, stop: int, dtype: torch.dtype) -> torch.Tensor:
        raise NotImplementedError

    def _packed_matmul(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"{self.method}, in_features={self.in_features}, out_features={self.out_features}"


class Int8Linear(QuantLinear):
    """int8 weights, one float scale per output channel."""

    method = "int8"

    def __init__(self, in_features: int, out_features: int, bias: bool = False, device=None):
        super().__init__(in_features, out_features, bias, device)
        self.register_buffer(
            "qweight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device)
        )
        self.register_buffer("scales", torch.ones(out_features, dtype=torch.float32, device=device))
        self._kernel_scales: torch.Tensor | None = None

    def prepare(self) -> None:
        """Call after loading: sets up the CPU kernel's operands."""
        self._choose_paths(self.qweight.device)
        if self.packed:
            self._kernel_scales = self.scales.to(torch.bfloat16)
            self.scales.copy_(self._kernel_scales)  # both paths use the kernel's scales
            extra = -self.qweight.shape[1] % INT8_K_MULTIPLE  # (0 if already padded)
            if extra:  # zero weight columns, met by the zero padding of the input
                self.qweight = F.pad(self.qweight, (0, extra))

    @property
    def stored_in_features(self) -> int:
        return self.qweight.shape[1]

    def _packed_matmul(self, x: torch.Tensor) -> torch.Tensor:
        y = torch._weight_int8pack_mm(
            self._pad_input(x).to(torch.bfloat16), self.qweight, self._kernel_scales
        )
        return y.to(x.dtype)

    def dequantize_rows(self, start: int, stop: int, dtype: torch.dtype) -> torch.Tensor:
        return dequantize_int8(self.qweight[start:stop], self.scales[start:stop], dtype)

    def _tile_matmul(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        # x @ (q * s).T == (x @ q.T) * s: int8 values are exact even in bfloat16, so the
        # weight is never rounded, and the scale is one multiply per output
        y = F.linear(x, self.qweight[start:stop].to(x.dtype))
        return y * self.scales[start:stop].to(x.dtype)


class Int4Linear(QuantLinear):
    """4-bit weights, packed two per byte, a scale and a zero per group of input columns."""

    method = "int4"
    qweight: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor

    def __init__(
        self,
        in_features: int,
        out_features: int,
        group_size: int,
        bias: bool = False,
        device=None,
        scale_dtype: torch.dtype = torch.float16,  # float32: a GGUF Q4_1's zero m + 8d, exactly
    ):
        super().__init__(in_features, out_features, bias, device)
        if group_size not in INT4_GROUP_SIZES:
            raise ValueError(f"int4 group size must be one of {INT4_GROUP_SIZES}, got {group_size}")
        self.group_size = group_size
        shapes = int4_shapes(out_features, in_features, group_size)
        self.register_buffer("qweight", torch.full(shapes["qweight"], 0x88, dtype=torch.uint8, device=device))
        self.register_buffer("scales", torch.ones(shapes["scales"], dtype=scale_dtype, device=device))
        self.register_buffer("zeros", torch.zeros(shapes["zeros"], dtype=scale_dtype, device=device))
        self._kernel_weight: torch.Tensor | None = None
        self._kernel_scale_zeros: torch.Tensor | None = None

    @property
    def stored_in_features(self) -> int:
        return padded_in_features(self.in_features, self.group_size)

    def prepare(self) -> None:
        """Call after loading: repack for the CPU kernel (rows padded to a multiple of 32)."""
        self._choose_paths(self.qweight.device)
        if not self.packed:
            return
        self._kernel_weight, self._kernel_scale_zeros = int4_kernel_operands(
            unpack_int4(self.qweight).to(torch.int32), self.scales.float(), self.zeros.float()
        )
        # The dense path uses the kernel's (bfloat16-rounded) scales and zeros, kept in float32.
        self.scales = self.scales.to(torch.bfloat16).float()
        self.zeros = self.zeros.to(torch.bfloat16).float()

    def _packed_matmul(self, x: torch.Tensor) -> torch.Tensor:
        xb = self._pad_input(x).to(torch.bfloat16)
        y = int4_kernel_matmul(xb, self._kernel_weight, self.group_size, self._kernel_scale_zeros)
        return y[:, : self.out_features].to(x.dtype)

    def dequantize_rows(self, start: int, stop: int, dtype: torch.dtype) -> torch.Tensor:
        return dequantize_int4(
            self.qweight[start:stop], self.scales[start:stop], self.zeros[start:stop], dtype
        )

    def rows(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return dequantize_int4(self.qweight[ids], self.scales[ids], self.zeros[ids], dtype)[
            :, : self.in_features
        ]

    def extra_repr(self) -> str:
        return super().extra_repr() + f", group_size={self.group_size}"


class Int8BlockLinear(QuantLinear):
    """int8 weights with one float scale per block of 32 input columns of a row (GGUF's Q8_0):
    w = qweight * scales[:, k // 32].

    torch's int8 kernel takes one scale per output channel only, so on the CPU the multiply goes
    through the int4 kernel instead, exactly: with u = q + 128 = 16h + l (h, l in 0..15),
    q * d = 16d (h - 8) + d (l - 8) + 8d, so the weight is two int4 planes [h | l] with group
    size 32 (scales 16d and d, zeros 0 and 8d) that multiply the input twice over, [x | x]. The
    planes take the same bytes as the int8 values, and the int4 kernel is vectorized."""

    method = "int8_block"
    group_size = 32
    qweight: torch.Tensor
    scales: torch.Tensor

    def __init__(self, in_features: int, out_features: int, bias: bool = False, device=None):
        super().__init__(in_features, out_features, bias, device)
        if in_features % self.group_size:
            raise ValueError(f"in_features must be a multiple of {self.group_size}, got {in_features}")
        self.register_buffer(
            "qweight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device)
        )
        groups = in_features // self.group_size
        self.register_buffer("scales", torch.ones(out_features, groups, dtype=torch.float32, device=device))
        self._kernel_weight: torch.Tensor | None = None
        self._kernel_scale_zeros: torch.Tensor | None = None

    def prepare(self) -> None:
        self._choose_paths(self.qweight.device)
        if not self.packed:
            return
        scales = self.scales.to(torch.bfloat16).float()  # as the kernel holds them, for both paths
        u = self.qweight.to(torch.int32) + 128
        self._kernel_weight, self._kernel_scale_zeros = int4_kernel_operands(
            torch.cat((u >> 4, u & 15), dim=1),
            torch.cat((16 * scales, scales), dim=1),
            torch.cat((torch.zeros_like(scales), 8 * scales), dim=1),
        )
        self.scales = scales

    def _packed_matmul(self, x: torch.Tensor) -> torch.Tensor:
        xb = x.to(torch.bfloat16)
        y = int4_kernel_matmul(
            torch.cat((xb, xb), dim=-1), self._kernel_weight, self.group_size, self._kernel_scale_zeros
        )
        return y[:, : self.out_features].to(x.dtype)

    def dequantize_rows(self, start: int, stop: int, dtype: torch.dtype) -> torch.Tensor:
        return self._dequantize(self.qweight[start:stop], self.scales[start:stop], dtype)

    def rows(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self._dequantize(self.qweight[ids], self.scales[ids], dtype)

    def _dequantize(self, q: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        rows = q.shape[0]
        q = q.to(dtype).view(rows, -1, self.group_size).mul_(scales.to(dtype).unsqueeze(-1))
        return q.view(rows, self.in_features)


class QuantEmbedding(nn.Module):
    """An embedding table held by a quantized layer (tied: the lm_head itself); a lookup
    dequantizes only the rows it reads."""

    def __init__(self, table: Int4Linear | Int8BlockLinear, dtype: torch.dtype):
        super().__init__()
        self.table = table
        self.dtype = dtype
        self.num_embeddings, self.embedding_dim = table.out_features, table.in_features

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        return self.table.rows(flat, self.dtype).view(*ids.shape, self.embedding_dim)


def check_spec(spec: object, source: str = "config.json") -> dict:
    """The quantization section of config.json, validated; raises CheckpointError if unusable."""
    if not isinstance(spec, dict):
        raise CheckpointError(f"{source}: 'quantization' must be an object, got {type(spec).__name__}")
    method = spec.get("method")
    if method not in METHODS:
        raise CheckpointError(
            f"{source}: quantization method {method!r} not supported; expected one of {METHODS}"
        )
    if method == "int4" and spec.get("group_size") not in INT4_GROUP_SIZES:
        raise CheckpointError(
            f"{source}: int4 group_size {spec.get('group_size')!r} not supported; expected one of "
            f"{INT4_GROUP_SIZES}"
        )
    return spec


def make_quant_linear(linear: nn.Linear, spec: dict) -> QuantLinear:
    """An empty quantized layer shaped like `linear`, on its device."""
    device = linear.weight.device
    bias = linear.bias is not None
    if spec["method"] == "int8":
        layer: QuantLinear = Int8Linear(linear.in_features, linear.out_features, bias, device)
    elif spec["method"] == "int4":
        layer = Int4Linear(linear.in_features, linear.out_features, int(spec["group_size"]), bias, device)
    else:
        raise ValueError(f"unknown quantization method {spec['method']!r}; expected one of {METHODS}")
    if bias:
        layer.bias = layer.bias.to(linear.bias.dtype)
    return layer


def quantized_linears(model: nn.Module, spec: dict) -> dict[str, tuple[nn.Module, str]]:
    """Engine module name -> (parent, attribute) of every linear layer the spec quantizes."""
    found = {}
    for n, layer in enumerate(model.layers):
        for parent, attr in (
            (layer.self_attn, "qkv_proj"),
            (layer.self_attn, "o_proj"),
            (layer.mlp, "gate_up_proj"),
            (layer.mlp, "down_proj"),
        ):
            prefix = "self_attn" if parent is layer.self_attn else "mlp"
            found[f"layers.{n}.{prefix}.{attr}"] = (parent, attr)
    if spec.get("lm_head"):
        found["lm_head"] = (model, "lm_head")
    return found


def install_quant_linears(model: nn.Module, spec: dict) -> None:
    """Swap the model's nn.Linear layers named by `spec` for empty quantized ones (before loading)."""
    check_spec(spec)
    for parent, attr in quantized_linears(model, spec).values():
        setattr(parent, attr, make_quant_linear(getattr(parent, attr), spec))
