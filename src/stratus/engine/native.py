"""The engine's C kernels (engine/kernels/*.c): compiled once per machine with the system C
compiler, cached, and loaded with ctypes.

ctypes keeps the build light (no PyTorch headers, about two seconds with gcc) and releases the
GIL for each call (the gateway's threads keep running). The kernel shares its work among
PyTorch's own OpenMP threads (see OPENMP_FLAGS). When there is no compiler, or the build fails,
`decode_attention_kernel()` returns None and the engine keeps its PyTorch path (logged once).
`EngineConfig.native_kernels` (`--no-native-kernels`, or STRATUS_NATIVE_KERNELS=0 for
`stratus serve`) turns them off; STRATUS_KERNEL_CACHE moves the cache (default:
$XDG_CACHE_HOME/stratus/kernels, else ~/.cache/stratus/kernels).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCES = Path(__file__).parent / "kernels"
# -ffast-math only when compiling: it lets gcc vectorise the reductions and use libm's vector
# expf. It must stay off the link line, where gcc would add crtfastmath.o, whose constructor
# flushes denormals to zero for the whole process (torch included).
COMPILE_FLAGS = ["-O3", "-ffast-math", "-fPIC", "-std=gnu11", "-fopenmp"]
# The library's OpenMP calls must reach the libgomp PyTorch already loaded, or two thread pools
# would fight over the cores. PyTorch's CPU wheel ships libgomp with the soname libgomp.so.1,
# the name gcc's -fopenmp links against: the dynamic loader reuses the copy already in the process.
OPENMP_FLAGS = ["-fopenmp"]
NATIVE_FLAGS = ["-march=native"]  # the cache key includes the CPU's flags (see _cpu_signature)


def cache_dir() -> Path:
    if os.environ.get("STRATUS_KERNEL_CACHE"):
        return Path(os.environ["STRATUS_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "stratus" / "kernels"


def _cpu_signature() -> str:
    """What -march=native depends on: a binary built for one CPU may not run on another that
    shares the cache directory (a home on NFS)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc"))


def _check_private(path: Path) -> None:
    """Loading a library runs its code: refuse a cache that another user could have written to
    (one under a shared directory such as /tmp). The library and its directory must be ours and
    writable by nobody else; every directory above must belong to us or root and, if others may
    write to it, be sticky (as /tmp is: nobody can rename what is ours there)."""
    me = os.getuid()
    info = path.stat()
    if info.st_uid != me or info.st_mode & 0o022:
        raise OSError(f"{path} is writable by other users or not ours; not loading kernels from it")
    for parent in path.resolve().parents:
        info = parent.stat()
        if info.st_uid not in (me, 0) or (info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX):
            raise OSError(f"{parent} (above {path}) could be changed by other users; not loading kernels")


def build(name: str) -> Path:
    """Compile kernels/<name>.c into the cache (if not there yet) and return the shared library.
    Raises OSError or subprocess.CalledProcessError when it cannot."""
    compiler = _compiler()
    if compiler is None:
        raise OSError("no C compiler found (set CC, or install gcc)")
    source = SOURCES / f"{name}.c"
    key = hashlib.sha256()
    compiler_file = os.stat(os.path.realpath(compiler))  # a new compiler release: a new build
    for part in (
        source.read_bytes(),
        f"{compiler} {compiler_file.st_size} {compiler_file.st_mtime_ns}".encode(),
        str(COMPILE_FLAGS + NATIVE_FLAGS + OPENMP_FLAGS).encode(),
        _cpu_signature().encode(),
    ):
        key.update(part)
    target = cache_dir() / f"{name}-{key.hexdigest()[:16]}.so"
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _check_private(target.parent)
    if target.exists():
        _check_private(target)
        return target
    # Build in a private directory, then rename: concurrent processes never load a half-written file.
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        obj, lib = Path(tmp) / f"{name}.o", Path(tmp) / f"{name}.so"
        for flags in (COMPILE_FLAGS + NATIVE_FLAGS, COMPILE_FLAGS):  # some compilers lack -march=native
            compiled = subprocess.run(
                [compiler, *flags, "-c", str(source), "-o", str(obj)], capture_output=True, text=True
            )
            if compiled.returncode == 0:
                break
        compiled.check_returncode()
        subprocess.run(
            [compiler, "-shared", str(obj), "-o", str(lib), "-lm", *OPENMP_FLAGS],
            check=True,
            capture_output=True,
            text=True,
        )
        lib.chmod(0o755)  # whatever the umask: a group-writable library would be refused (above)
        os.replace(lib, target)
    return target


_I64, _PTR = ctypes.c_int64, ctypes.c_void_p
# stratus_decode_attention's parameters, in order (kernels/decode_attention.c).
DECODE_ATTENTION_ARGS = (
    ("q", _PTR), ("q_row_stride", _I64), ("kv", _PTR), ("slots", _I64),
    ("out", _PTR), ("out_row_stride", _I64), ("tables", _PTR), ("table_width", _I64),
    ("lengths", _PTR), ("rows", _I64), ("block_size", _I64), ("num_heads", _I64),
    ("num_kv_heads", _I64), ("head_dim", _I64), ("scale", ctypes.c_float), ("window", _I64),
    ("threads", _I64),
)  # fmt: skip


@functools.cache
def decode_attention_kernel():
    """The C function `stratus_decode_attention` (see kernels/decode_attention.c), or None."""
    try:
        lib = ctypes.CDLL(str(build("decode_attention")))
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        log.warning("native decode attention unavailable, using PyTorch's: %s", detail)
        return None
    fn = lib.stratus_decode_attention
    fn.argtypes = [kind for _, kind in DECODE_ATTENTION_ARGS]
    fn.restype = ctypes.c_int
    return fn


def decode_attention(
    q,
    kv_cache,
    out,
    tables,
    lengths,
    block_size: int,
    num_kv_heads: int,
    scale: float,
    window: int | None,
    threads: int = 1,
) -> None:
    """out[r] = attention of q[r] over its paged context, for r < len(lengths); float32 CPU
    tensors. q [T, H, D] may be a view of the qkv projection (rows strided, heads contiguous);
    kv_cache [2 * KVH, slots, D], out [T, H, D] and the int32 tables and lengths contiguous.
    `threads` > 1 shares the rows among that many threads (the caller's and threads - 1 started
    for the call)."""
    heads, dim = q.shape[1], q.shape[2]
    # Layouts and shapes are checked here (attribute reads); lengths and block ids, which need a
    # pass over the values, in the kernel before it reads anything (status -2).
    if q.stride(2) != 1 or q.stride(1) != dim or not (kv_cache.is_contiguous() and out.is_contiguous()):
        raise ValueError("decode_attention: q heads, kv_cache and out must be contiguous")
    if {q.dtype, kv_cache.dtype, out.dtype} != {torch.float32} or {tables.dtype, lengths.dtype} != {
        torch.int32
    }:
        raise ValueError("decode_attention: float32 q, kv_cache and out; int32 tables and lengths")
    if {t.device.type for t in (q, kv_cache, out, tables, lengths)} != {"cpu"}:
        raise ValueError("decode_attention: CPU tensors only")
    rows = lengths.shape[0]
    if (
        tables.dim() != 2
        or tables.shape[0] != rows
        or not (tables.is_contiguous() and lengths.is_contiguous())
        or rows > min(q.shape[0], out.shape[0])
        or out.shape[1:] != q.shape[1:]
        or kv_cache.dim() != 3
        or kv_cache.shape[0] != 2 * num_kv_heads
        or kv_cache.shape[2] != dim
    ):
        raise ValueError(
            "decode_attention: shapes q [T, H, D], out [T, H, D], kv_cache [2 * KVH, slots, D], "
            "tables [rows, W] and lengths [rows] (contiguous), rows <= T"
        )
    status = decode_attention_kernel()(
        q.data_ptr(),
        q.stride(0),
        kv_cache.data_ptr(),
        kv_cache.shape[1],
        out.data_ptr(),
        out.stride(0),
        tables.data_ptr(),
        tables.shape[1],
        lengths.data_ptr(),
        rows,
        block_size,
        heads,
        num_kv_heads,
        dim,
        scale,
        window or 0,
        threads,
    )
    if status == -2:
        raise ValueError(
            "decode_attention: a length outside 1..W * block_size, a block id outside the pool, "
            "or heads not a multiple of KV heads"
        )
    if status != 0:
        raise MemoryError("decode_attention: no memory for its scratch buffer")
