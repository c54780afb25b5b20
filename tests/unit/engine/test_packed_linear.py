"""oneDNN-packed float32 linears compute what nn.Linear computes, and are used where they apply."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from stratus.engine.packed_linear import CACHE_VARIABLES, PackedLinear, pack_linears, packing_available

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        not packing_available(torch.device("cpu"), torch.float32),
        reason="this torch build has no oneDNN (mkldnn) linear; the engine uses nn.Linear there",
    ),
]


@pytest.mark.parametrize("rows", [1, 3, 64, 300])
@pytest.mark.parametrize("bias", [False, True])
def test_same_result_as_nn_linear(rows, bias):
    torch.manual_seed(rows)
    linear = nn.Linear(96, 200, bias=bias)
    packed = PackedLinear(linear)
    x = torch.randn(rows, 96)
    with torch.inference_mode():
        assert (packed(x) - linear(x)).abs().max() < 1e-5
        assert packed(x.view(1, rows, 96)).shape == (1, rows, 200)
    assert torch.equal(packed.weight, linear.weight.detach())


def test_pack_swaps_plain_linears_but_not_a_tied_head():
    model = nn.Module()
    model.embed = nn.Embedding(50, 16)
    model.head = nn.Linear(16, 50, bias=False)
    model.head.weight = model.embed.weight
    model.proj = nn.Linear(16, 16)
    assert pack_linears(model) == 1
    assert isinstance(model.proj, PackedLinear)
    assert type(model.head) is nn.Linear and model.head.weight is model.embed.weight


def test_engine_packs_float32_on_cpu_only(llama_dir):
    from stratus.engine import EngineConfig, EngineCore

    fp32 = EngineCore(llama_dir, EngineConfig(num_kv_blocks=16, max_model_len=64))
    assert isinstance(fp32.runner.model.layers[0].mlp.gate_up_proj, PackedLinear)
    bf16 = EngineCore(llama_dir, EngineConfig(num_kv_blocks=16, max_model_len=64, dtype="bfloat16"))
    assert type(bf16.runner.model.layers[0].mlp.gate_up_proj) is nn.Linear


_GROWTH_SCRIPT = """
import ctypes, sys
import torch
from torch import nn
from stratus.engine.packed_linear import pack_linears

torch.set_num_threads(1)
try:
    trim = ctypes.CDLL("libc.so.6").malloc_trim
except OSError:
    trim = lambda _: 0

def rss_mib():
    trim(0)  # freed evicted primitives go back to the OS, not stay in malloc's free lists
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

model = nn.Sequential(nn.Linear(256, 1376, bias=False))
pack_linears(model)
with torch.inference_mode():
    for rows in range(1, 301):
        model(torch.randn(rows, 256))
    before = rss_mib()
    for rows in range(301, 601):
        model(torch.randn(rows, 256))
    print(rss_mib() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_primitive_caches_are_bounded():
    """Every new row count builds a oneDNN primitive; the caches that keep them are capped
    (bound_primitive_caches), so 300 more shapes after the first 300 add no memory. Uncapped
    (1024 entries, the default) the second 300 added ~150 MiB here. A fresh process: the caps
    are read once, at the first oneDNN op of a process."""
    env = {k: v for k, v in os.environ.items() if k not in CACHE_VARIABLES}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[3] / "src"), env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, "-c", _GROWTH_SCRIPT], env=env, capture_output=True, text=True, timeout=100
    )
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.split()[-1]) < 40, out.stdout
