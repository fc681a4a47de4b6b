"""The Cython tier: the compiled, multi-threaded kernels of :mod:`pooling_lib._kernels`.

The five functions have the naive tier's signatures and contracts. Each takes an NCHW-*axes* array of
float32 or float64 in any memory order, picks the kernel for its memory order, allocates the outputs and
calls the kernel with the GIL released:

* NCHW memory (C-contiguous): kernels that run over the ``N * C`` planes;
* NHWC memory (``x.transpose(0, 2, 3, 1)`` is C-contiguous, as for ``x_nhwc.transpose(0, 3, 1, 2)``): kernels
  whose innermost loop runs over the contiguous channel axis; the result is written in NHWC memory and
  returned as its NCHW-axes view, so :mod:`pooling_lib.functional` hands an NHWC caller a C-contiguous array;
* any other memory order is first copied to C-contiguous NCHW.

Results are bit-identical to the naive tier, and so to PyTorch's CPU kernels (average pooling's backward too: a
cell gets the shares of the windows that cover it in row-major window order, as in PyTorch). Like the other tiers,
this one does no argument validation of its own, except that the backward from indices counts the indices outside
their plane as its kernel reads them, never writing there, and raises the tiers' ValueError when there is one.

Max pooling with indices (NCHW) finds the winners with the backward's winner search, and the backward from indices
(:func:`max_pool_backward_indices`) builds each plane of a large gradient (``STREAM_MIN_BYTES`` and up) without
reading it first: for 2x2 stride-2 and 3x3 stride-2 padding-1 windows (AVX2 build) row by row in registers, written
with streaming stores; otherwise scattered in a per-thread buffer that stays in the cache and then streamed out.
A plane whose indices are not all in their own windows is scattered instead, so any index in the plane is
honoured, as by PyTorch. The NCHW average backward streams a large gradient the same way (2x2 stride-2 planes
from registers, the others through the buffer; 3x3 stride-2 padding-1 planes are built there row by row, each cell
written once).

``set_num_threads(n)`` sets how many OpenMP threads the kernels use (``get_num_threads()`` reads it; the
default is OpenMP's, usually the number of cores); ``openmp_enabled()`` tells whether the extension was
built with OpenMP at all (if not, every kernel runs on one thread).

The kernels come in two builds of one source: ``_kernels`` (the architecture's baseline instruction set) and,
on x86, ``_kernels_avx2`` (256-bit AVX2 vectors). The AVX2 build is used when the CPU has AVX2; the
environment variable ``POOLING_LIB_SIMD=baseline`` (or ``avx2``) chooses at import. ``simd()`` says which
build runs. Both give the same bits.

Large outputs (1 MiB and up) come from a small cache of freed buffers (:mod:`pooling_lib._buffers`): a fresh
block above glibc's 32 MiB recycling limit costs a page fault and a page of zeros for every 4 KiB (or 2 MiB)
on its first write, which for a float64 gradient of the benchmark's size costs about as much as the kernel.
The outputs are ordinary NumPy arrays that own their memory; a block goes back to the cache only when NumPy
frees it. ``set_buffer_cache(max_bytes)`` sets how much freed memory the cache may hold (default 256 MiB;
0 turns it off and frees it), and ``buffer_cache_info()`` reports it.
"""
import functools
import importlib
import numbers
import os
import warnings

import numpy as np

from .params import avg_divisors, index_error

# ImportError when the extension was not built (functional then leaves this tier out). import_module says "No module
# named 'pooling_lib._kernels'", or why it did not load; "from . import _kernels" would blame a circular import.
_kernels = importlib.import_module(__package__ + "._kernels")

try:
    from . import _buffers
except ImportError:  # the cache is optional: without it the outputs come from np.empty
    _buffers = None

__all__ = [
    "max_pool_forward",
    "max_pool_backward",
    "avg_pool_forward",
    "avg_pool_backward",
    "set_num_threads",
    "get_num_threads",
    "openmp_enabled",
    "simd",
    "set_buffer_cache",
    "buffer_cache_info",
]


def _load_avx2():
    """The AVX2 build, or None when it was not built (not x86, or its compile failed)."""
    try:
        from . import _kernels_avx2
    except ImportError:
        return None
    return _kernels_avx2


def _choose_build():
    """``(module, name)``: the AVX2 build when the CPU has AVX2, unless ``POOLING_LIB_SIMD`` says otherwise."""
    wanted = os.environ.get("POOLING_LIB_SIMD", "auto").strip().lower() or "auto"
    if wanted not in ("auto", "avx2", "baseline"):
        warnings.warn(f"pooling_lib: POOLING_LIB_SIMD must be 'auto', 'avx2' or 'baseline', got {wanted!r}; "
                      "using 'auto'", RuntimeWarning, stacklevel=3)
        wanted = "auto"
    if wanted == "baseline":
        return _kernels, "baseline"
    avx2 = _load_avx2() if _kernels.cpu_has_avx2() else None
    if avx2 is not None:
        return avx2, "avx2"
    if wanted == "avx2":
        warnings.warn("pooling_lib: POOLING_LIB_SIMD=avx2, but this CPU has no AVX2 or the AVX2 build is missing; "
                      "using the baseline build", RuntimeWarning, stacklevel=3)
    return _kernels, "baseline"


BASELINE = _kernels
_kernels, _simd = _choose_build()


def simd():
    """Which build of the kernels runs: ``'avx2'`` or ``'baseline'``."""
    return _simd

_num_threads = max(1, int(_kernels.default_num_threads()))


def openmp_enabled():
    """True when the compiled kernels were built with OpenMP (and so can use several threads)."""
    return _kernels.openmp_enabled()


def get_num_threads():
    """Number of threads the kernels use (set by :func:`set_num_threads`; default: OpenMP's default)."""
    return _num_threads


MAX_THREADS = 1024  # OpenMP starts every thread with a stack of its own: far more fail, or abort the process


def set_num_threads(n):
    """Use ``n`` threads (an int from 1 to ``MAX_THREADS``) in the compiled kernels from now on; returns the
    previous count. More threads than cores only add overhead.

    Without OpenMP (see :func:`openmp_enabled`) the count is recorded but the kernels run on one thread.
    """
    global _num_threads
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral):
        raise TypeError(f"n must be a positive int, got {n!r}")
    if not 1 <= n <= MAX_THREADS:
        raise ValueError(f"n must be a positive int of at most {MAX_THREADS} (each thread needs a stack of its "
                         f"own), got {n!r}")
    previous, _num_threads = _num_threads, int(n)
    return previous


def _c_aligned(a):
    """``a`` C-contiguous and aligned, as the NCHW kernels require (checked in C): a copy only when it is not.
    ``np.ascontiguousarray`` would return a contiguous array that is not aligned (a buffer at an odd offset)
    unchanged."""
    return a if a.flags.c_contiguous and a.flags.aligned else np.array(a, order="C")


def _is_nhwc(a):
    """True when ``a`` (NCHW axes) is laid out as NHWC in memory.

    When both orders describe the memory (``C == 1``, or ``H == W == 1`` as for a global pooling's
    ``grad_out``), the strides of the size-1 axes, which keep the caller's layout, decide.
    """
    if a.flags.c_contiguous and a.shape[1] > 1 and a.shape[2] * a.shape[3] > 1:
        return False  # NCHW memory, and only NCHW: the common case, without building the NHWC view
    if not a.transpose(0, 2, 3, 1).flags.c_contiguous:
        return False
    if not a.flags.c_contiguous:
        return True
    return a.shape[1] > 1 and a.strides[1] < a.strides[3]


# Below this many input cells a call runs on one thread: starting and joining an OpenMP team costs more than the
# work, and on a busy machine a thread waiting for a core can make a tiny call thousands of times slower.
SMALL_WORK = 1 << 16


def _threads_for(g):
    """The thread count for one call: :func:`get_num_threads`, or 1 for a small input."""
    return _num_threads if g.N * g.C * g.H * g.W >= SMALL_WORK else 1


def _geometry_args(g, dilation=True):
    args = [g.kernel_h, g.kernel_w, g.stride_h, g.stride_w, g.pad_h, g.pad_w]
    if dilation:
        args += [g.dilation_h, g.dilation_w]
    return args


def set_buffer_cache(max_bytes):
    """Let the cache of freed output buffers hold up to ``max_bytes`` bytes (an int >= 0; 0 turns it off and
    frees what it holds). Returns the previous limit (0 when the cache module was not built)."""
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, numbers.Integral):
        raise TypeError(f"max_bytes must be an int (a number of bytes), got {type(max_bytes).__name__}")
    if max_bytes < 0:
        raise ValueError(f"max_bytes must be >= 0 (a number of bytes), got {max_bytes}")
    return 0 if _buffers is None else _buffers.set_max_bytes(int(max_bytes))


def buffer_cache_info():
    """``{'max_bytes', 'held_bytes', 'blocks', 'hits'}``: the cache's limit, the freed memory it holds now, and how
    many outputs it has served so far (all zero when the cache module was not built)."""
    if _buffers is None:
        return {"max_bytes": 0, "held_bytes": 0, "blocks": 0, "hits": 0}
    return _buffers.info()


def _empty(shape, dtype):
    """An uninitialised output array; a large one may reuse a freed output's memory."""
    return np.empty(shape, dtype=dtype) if _buffers is None else _buffers.empty(shape, dtype)


_CACHE_LINE = 64  # bytes, on x86 and on most ARM cores


def _scratch(nt, n, dtype):
    """Scratch rows for the kernels, one per thread: an ``(nt, m)`` array, ``m >= n``, whose rows are padded so that
    no two threads' first ``n`` values share a cache line. A line that two cores write at the same time bounces
    between their caches on every write ("false sharing"), which can cost more than the second thread gains."""
    itemsize = np.dtype(dtype).itemsize
    m = -(-n * itemsize // _CACHE_LINE) * _CACHE_LINE // itemsize + _CACHE_LINE // itemsize
    return np.empty((nt, m), dtype=dtype)


def _nhwc_empty(g, dtype):
    """An uninitialised (N, out_h, out_w, C) output."""
    return _empty((g.N, g.out_h, g.out_w, g.C), dtype)


def max_pool_forward(x, g, minimum=False, return_indices=True):
    """Max (min) pooling. Returns ``(out, indices or None)`` of shape ``g.out_shape`` (NCHW axes)."""
    if g.N == 0:
        out = np.empty(g.out_shape, dtype=x.dtype)
        return out, (np.empty(g.out_shape, dtype=np.int64) if return_indices else None)
    nt = _threads_for(g)
    if _is_nhwc(x):
        xm = x.transpose(0, 2, 3, 1)
        out = _nhwc_empty(g, x.dtype)
        indices = _nhwc_empty(g, np.int64) if return_indices else np.empty((0, 0, 0, 0), dtype=np.int64)
        _kernels.extremum_nhwc(xm, out, indices, *_geometry_args(g), minimum, return_indices, nt)
        out = out.transpose(0, 3, 1, 2)
        return out, (indices.transpose(0, 3, 1, 2) if return_indices else None)
    x = _c_aligned(x)
    out = _empty(g.out_shape, x.dtype)
    if return_indices:
        indices = _empty(g.out_shape, np.int64)
        if _float_taps(g, x.dtype) and _window_reach(g) < 2**31:
            best = _scratch(nt, g.out_w, x.dtype)
            tap = _scratch(nt, g.out_w, x.dtype)
            _kernels.extremum_index_nchw(x, out, indices, best, tap, *_geometry_args(g), minimum, nt)
        elif minimum:
            _kernels.extremum_nchw(x, out, indices, *_geometry_args(g), True, True, nt)
        else:  # the book's chapter 8 kernel
            _kernels.max_pool2d_nchw(x, out, indices, *_geometry_args(g), nt)
        return out, indices
    _kernels.extremum_nchw(x, out, np.empty((0, 0, 0, 0), dtype=np.int64), *_geometry_args(g), minimum, False, nt)
    return out, None


def _window_reach(g):
    """The largest offset of a tap from its window's first tap: ``(kernel_h - 1) * dilation_h * W + (kernel_w - 1)
    * dilation_w``."""
    return (g.kernel_h - 1) * g.dilation_h * g.W + (g.kernel_w - 1) * g.dilation_w


def _float_taps(g, dtype):
    """True when every tap's offset in its window is exact in ``dtype`` (below 2**24 for float32, 2**53 for
    float64): the NCHW kernels that hold winners as float offsets need it."""
    return _window_reach(g) < (2**24 if np.dtype(dtype) == np.float32 else 2**53)


# Gradients of at least this many bytes are streamed to memory (non-temporal stores) by the backward from indices
# and the NCHW average backward, without the read that an ordinary store makes of every line it writes (row by row
# from registers for 2x2 stride-2 planes, and 3x3 stride-2 ones for max pooling, else each plane or NHWC image built
# in a per-thread buffer that stays in the cache, then copied out). The gradient then starts in memory, not in the
# cache; on the README's machine streaming still won when the whole gradient was read right after, as the layer
# before would read it (benchmark input, one thread: max pooling's forward, backward and read, float32 2x2 7.95 ms
# against 9.72 ms with ordinary stores, float64 13.1 against 17.5 ms; average pooling's, float32 2x2 6.10 against
# 7.80 ms, float64 11.4 against 14.8 ms, float32 3x3 10.5 against 10.9 ms).
STREAM_MIN_BYTES = 8 << 20
# ... and only when a plane (an image) is at most this large, so that the buffer stays in a core's own cache (the
# README's machine has 2 MiB of L2 per core; there an NHWC float64 image of the benchmark, 1.6 MB, took its
# backward from 8.7 ms scattered in place to 6.4 ms through the buffer).
STREAM_MAX_UNIT_BYTES = 2 << 20


def _stage(grad_x, unit, nt):
    """Rows for a backward that streams ``grad_x`` (one per thread, of ``unit`` values: a plane or an NHWC image),
    or no rows when ``grad_x`` is too small to stream or a unit too large to stay in a core's cache."""
    if grad_x.nbytes >= STREAM_MIN_BYTES and unit * grad_x.itemsize <= STREAM_MAX_UNIT_BYTES:
        return _scratch(nt, unit, grad_x.dtype)
    return np.empty((0, 0), dtype=grad_x.dtype)


def max_pool_backward_indices(grad_out, indices, x, g):
    """Gradient of max (min) pooling from the forward's ``indices`` (int64, of ``grad_out``'s shape, NCHW axes):
    ``grad_out`` is added to each window's indexed cell, window after window (PyTorch's backward). ``x`` gives only
    the dtype and the layout. Raises ValueError when an index is outside its plane."""
    if g.N == 0:
        return np.zeros((g.N, g.C, g.H, g.W), dtype=x.dtype)
    nt = _threads_for(g)
    nhwc = _is_nhwc(x)
    grad_out = grad_out.astype(x.dtype, copy=False)
    if nhwc:
        gm = _c_aligned(grad_out.transpose(0, 2, 3, 1))
        im = _c_aligned(indices.transpose(0, 2, 3, 1))
        grad_x = _empty((g.N, g.H, g.W, g.C), x.dtype)
        unit = g.H * g.W * g.C
    else:
        gm = _c_aligned(grad_out)
        im = _c_aligned(indices)
        grad_x = _empty((g.N, g.C, g.H, g.W), x.dtype)
        unit = g.H * g.W
    stage = _stage(grad_x, unit, nt)
    bad = np.zeros(nt, dtype=np.int64)
    blocks_2x2 = (g.kernel_h, g.kernel_w, g.stride_h, g.stride_w, g.pad_h, g.pad_w) == (2, 2, 2, 2, 0, 0)
    rows_3x3 = (g.kernel_h, g.kernel_w, g.stride_h, g.stride_w, g.pad_h, g.pad_w, g.dilation_h, g.dilation_w) == (
        3, 3, 2, 2, 1, 1, 1, 1)
    _kernels.max_backward_indices(gm, im, grad_x, stage, bad, nhwc, blocks_2x2, rows_3x3, nt)
    if bad.any():
        raise index_error(int(bad.sum()), g)
    return grad_x.transpose(0, 3, 1, 2) if nhwc else grad_x


def max_pool_backward(grad_out, x, g, minimum=False):
    """Gradient of max (min) pooling: each window's ``grad_out`` goes to its winner; a cell's gradients add up."""
    nt = _threads_for(g)
    if g.N == 0:
        return np.zeros((g.N, g.C, g.H, g.W), dtype=x.dtype)
    grad_out = grad_out.astype(x.dtype, copy=False)
    # the NHWC kernel holds tap numbers in the float type: exact below 2**24 taps for float32
    if _is_nhwc(x) and (x.dtype == np.float64 or g.kernel_h * g.kernel_w < 2**24):
        xm = x.transpose(0, 2, 3, 1)
        gm = _c_aligned(grad_out.transpose(0, 2, 3, 1))
        grad_x = _empty((g.N, g.H, g.W, g.C), x.dtype)
        best = _scratch(nt, 2 * g.C, x.dtype)
        tap = _scratch(nt, 2 * g.C, x.dtype)
        _kernels.extremum_backward_nhwc(xm, gm, grad_x, best, tap, *_geometry_args(g), minimum, nt)
        return grad_x.transpose(0, 3, 1, 2)
    x = _c_aligned(x)
    grad_out = _c_aligned(grad_out)
    grad_x = _empty((g.N, g.C, g.H, g.W), x.dtype)
    best = _scratch(nt, g.out_w, x.dtype)
    tap = _scratch(nt, 2 * g.out_w, x.dtype)             # the winners of two window rows
    win = _scratch(nt, g.out_w, np.int64)
    _kernels.extremum_backward_nchw(x, grad_out, grad_x, best, tap, win, *_geometry_args(g), minimum, nt)
    return grad_x


# Divisor arrays are kept, read-only, for the last 256 (geometry, count_include_pad, divisor_override, dtype) seen:
# building one takes a handful of small NumPy calls, 0.13 ms on the README's machine when their code is out of the
# caches, as it is after a layer's work, and a kept one 0.03 ms (see ``params._kept_geometry``).
@functools.lru_cache(maxsize=256)
def _avg_divisors(g, count_include_pad, divisor_override, dtype):
    """PyTorch's ``(out_h, out_w)`` divisors, converted to ``dtype`` (C-contiguous, read-only) for the kernels."""
    divisors = np.ascontiguousarray(avg_divisors(g, count_include_pad, divisor_override).astype(dtype))
    divisors.flags.writeable = False
    return divisors


def avg_pool_forward(x, g, count_include_pad=True, divisor_override=None):
    """Average pooling: the sum of each window's real cells, divided once by PyTorch's divisor."""
    if g.N == 0:
        return np.empty(g.out_shape, dtype=x.dtype)
    divisors = _avg_divisors(g, count_include_pad, divisor_override, x.dtype)
    nt = _threads_for(g)
    if _is_nhwc(x):
        out = _nhwc_empty(g, x.dtype)
        _kernels.avg_nhwc(x.transpose(0, 2, 3, 1), out, divisors, *_geometry_args(g, dilation=False), nt)
        return out.transpose(0, 3, 1, 2)
    x = _c_aligned(x)
    out = _empty(g.out_shape, x.dtype)
    _kernels.avg_nchw(x, out, divisors, *_geometry_args(g, dilation=False), nt)
    return out


def avg_pool_backward(grad_out, g, dtype, count_include_pad=True, divisor_override=None):
    """Gradient of average pooling: each window spreads ``grad_out / divisor`` over its real cells.

    The result is in NHWC memory when ``grad_out`` is, else C-contiguous NCHW.
    """
    dtype = np.dtype(dtype)
    if g.N == 0:
        return np.zeros((g.N, g.C, g.H, g.W), dtype=dtype)
    grad_out = grad_out.astype(dtype, copy=False)
    divisors = _avg_divisors(g, count_include_pad, divisor_override, dtype)
    nt = _threads_for(g)
    if _is_nhwc(grad_out):
        grad_x = _empty((g.N, g.H, g.W, g.C), dtype)
        share = _scratch(nt, g.C, dtype)
        _kernels.avg_backward_nhwc(grad_out.transpose(0, 2, 3, 1), grad_x, divisors, share,
                                   *_geometry_args(g, dilation=False), nt)
        return grad_x.transpose(0, 3, 1, 2)
    grad_out = _c_aligned(grad_out)
    grad_x = _empty((g.N, g.C, g.H, g.W), dtype)
    layers = _kernels.avg_backward_layers(g.kernel_h, g.kernel_w, g.stride_w)
    share = _scratch(nt, g.out_w + g.W * (1 + layers), dtype)
    _kernels.avg_backward_nchw(grad_out, grad_x, divisors, share, _stage(grad_x, g.H * g.W, nt),
                               *_geometry_args(g, dilation=False), nt)
    return grad_x
