"""The two builds of the compiled kernels, baseline and AVX2, give the same bits.

``setup.py`` compiles ``_kernels.pyx`` twice on x86: ``_kernels`` (SSE2) and ``_kernels_avx2``, and
:mod:`pooling_lib.cython_tier` runs the AVX2 one when the CPU has AVX2. The rest of the suite tests whichever
build this machine picked; here every build that can run is swapped in and compared with the NumPy tier (bit for
bit for max and min pooling, values and indices and gradients, and the average forward) and with the other
build (bit for bit for everything, the average backward included). The inputs are large enough for the vector
loops, and hold ties, NaN of both signs, infinities and signed zeros, or random floats of many magnitudes (whose
sums round differently when added in another order: an average must sum a window's taps in scan order in every
vector loop too). The "threaded" cases run on two threads (``SMALL_WORK = 0``, two threads set, and checked). A
winner keeps its bits, so max and min pooling must give each NaN's own sign; where an average sums NaNs of both
signs, only the NaN is checked, not its sign (see ``_same_result``).
"""
import ctypes
import ctypes.util
import math
import mmap
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest

import pooling_lib.functional as F
from _helpers import compiled_builds, run_on_threads

cython_tier = pytest.importorskip("pooling_lib.cython_tier", reason="the compiled tier is not built")

pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf - inf in sums

CPU_HAS_AVX2 = cython_tier.BASELINE.cpu_has_avx2()  # False on every CPU that is not x86
AVX2_BUILD = cython_tier._load_avx2()
BUILDS = compiled_builds()

CONFIGS = [  # kernel_size, stride, padding, dilation, ceil_mode
    (2, 2, 0, 1, False),
    (3, 2, 1, 1, False),
    (3, 1, 1, 1, False),
    (3, 2, 0, 1, True),
    (2, 1, 0, 2, False),
    ((3, 2), (2, 1), (1, 0), 1, False),
    (5, 1, 2, 1, False),   # with (3, 1, 1) and the (3, 2) one: every fixed-size tap row of the NCHW backward
    (2, 2, 1, 1, False),
    (3, 3, 0, 1, False),
    (3, 2, 1, 1, True),    # the NCHW max backward's 3x3 stride-2 padding-1 plane loop, with a last window row and
                           # column that hold one real row or column only
]


def _input(kind, dtype, layout, shape):
    rng = np.random.default_rng(zlib.crc32(repr((kind, np.dtype(dtype).name, layout, shape)).encode()))
    if kind == "normal":  # no ties, and magnitudes from 2**-6 to 2**6: a sum's rounding depends on its order
        x = (rng.standard_normal(shape) * np.exp2(rng.integers(-6, 7, size=shape))).astype(dtype)
    else:
        x = rng.integers(-3, 4, size=shape).astype(dtype)      # small integers: many ties
    if kind == "nan":  # two NaNs that differ in their bits (the sign): a winner must keep its own
        pick = rng.random(shape)
        x[pick < 0.05] = np.nan
        x[pick < 0.02] = -np.nan
    elif kind == "few_nan":  # a NaN in a few planes and rows only: the kernels pick the rule per plane (block)
        flat = x.reshape(-1)
        flat[rng.choice(flat.size, size=4, replace=False)] = np.nan
    elif kind == "special":
        pick = rng.random(shape)
        x[pick < 0.1] = np.inf
        x[(pick >= 0.1) & (pick < 0.2)] = -np.inf
        x[(pick >= 0.2) & (pick < 0.5)] = -0.0
        x[(pick >= 0.5) & (pick < 0.7)] = 0.0
    elif kind == "mixed":  # the kinds above side by side, plane by plane, so that each thread's share of the planes
        # (NCHW) or of the rows (NHWC) holds all of them; the NaN planes have their NaN in the first rows only, so
        # that NHWC rows without NaN (which take the rule without the NaN test) come too
        kinds = ("normal", "nan", "special", "ties")
        parts = {k: _input(k, dtype, "NCHW", shape) for k in kinds}
        parts["nan"][:, :, 6:] = parts["ties"][:, :, 6:]
        for plane in range(shape[0] * shape[1]):
            n, c = divmod(plane, shape[1])
            x[n, c] = parts[kinds[plane % len(kinds)]][n, c]
    if layout == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    return x


def _run_all(x, layout, config, backend="cython"):
    """Every pooling function of one tier on x: for max and min, values and indices, values alone, gradient;
    then the average and its gradient. Returns the list of the ten results."""
    k, s, p, d, ceil = config
    kw = dict(kernel_size=k, stride=s, padding=p, ceil_mode=ceil, layout=layout, backend=backend)
    results = []
    for fwd, bwd in ((F.max_pool2d, F.max_pool2d_backward), (F.min_pool2d, F.min_pool2d_backward)):
        out, idx = fwd(x, dilation=d, return_indices=True, **kw)
        grad_out = np.linspace(-1.5, 2.5, out.size).reshape(out.shape).astype(x.dtype)
        results += [out, idx, fwd(x, dilation=d, **kw), bwd(grad_out, x, dilation=d, **kw)]
    out = F.avg_pool2d(x, **kw)
    grad_out = np.linspace(-1.5, 2.5, out.size).reshape(out.shape).astype(x.dtype)
    results += [out, F.avg_pool2d_backward(grad_out, x, **kw)]
    return results


def _same_bits(a, b):
    """Same shape, dtype and bytes: -0.0 differs from 0.0, and NaN payloads count."""
    return a.shape == b.shape and a.dtype == b.dtype and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


def _same_result(i, a, b):
    """:func:`_same_bits` for result ``i`` of :func:`_run_all`; but the average forward (result 8) only needs NaN
    where the other has NaN: the sign of a sum of two NaNs that differ in sign depends on the order of the
    additions (x86 returns the first operand's), and IEEE 754 leaves it open. Max and min pooling pick a winner,
    and keep its bits, whatever its sign."""
    if i != 8:
        return _same_bits(a, b)
    nan = np.isnan(a)
    return (a.shape == b.shape and a.dtype == b.dtype and np.array_equal(nan, np.isnan(b))
            and _same_bits(np.where(nan, 0, a), np.where(nan, 0, b)))


@pytest.fixture(params=sorted(BUILDS))
def build(request, monkeypatch):
    monkeypatch.setattr(cython_tier, "_kernels", BUILDS[request.param])
    return request.param


def _on_two_threads(monkeypatch):
    """Run the compiled calls of this test on two threads, whatever the input's size (``SMALL_WORK = 0``), and
    record the thread count each call chose: returns the list, to check after the calls that it holds only 2s."""
    run_on_threads(monkeypatch, 2)
    chosen = []
    threads_for = cython_tier._threads_for

    def recording(g):
        chosen.append(threads_for(g))
        return chosen[-1]

    monkeypatch.setattr(cython_tier, "_threads_for", recording)
    return chosen


# name: (shape, threads, streamed). "channels": 45 channels take every part of the NHWC AVX2 winner loops (blocks
# of 4 vectors, single vectors, and the scalar rest) in both float types; "streamed": the paths that write large
# outputs with streaming stores (STREAM_MIN_BYTES = 0), which the other shapes are too small for; "threaded": two
# threads share the planes (NCHW) or the rows and images (NHWC) of every kernel, checked (the streamed paths run on
# two threads in test_against_torch.py's test_streamed_paths_match_torch_bitwise and
# test_avg_backward_streamed_matches_torch). Each call on two threads waits for the second thread, long when the
# cores are busy, as they are under pytest -n 2 (160 more two-thread cases took this file from about 28 s to 35-50 s
# on two busy cores), so the threaded cases take the "mixed" values, every other kind in one input, and the other
# shapes run on one thread.
SHAPES = {"small": ((2, 5, 23, 29), 1, False), "channels": ((1, 45, 12, 11), 1, False),
          "streamed": ((2, 16, 48, 40), 1, True), "threaded": ((2, 16, 48, 40), 2, False)}
# The "normal" values (order-sensitive sums) are not run "streamed": streaming changes only the stores of the
# backward, whose gradient does not depend on them.
SHAPE_KINDS = ([pytest.param(shape_id, kind, id=f"{kind}-{shape_id}")
                for kind in ("ties", "nan", "few_nan", "special", "normal") for shape_id in ("small", "channels")]
               + [pytest.param("streamed", kind, id=f"{kind}-streamed") for kind in ("ties", "nan", "few_nan",
                                                                                      "special")]
               + [pytest.param("threaded", "mixed", id="mixed-threaded")])


@pytest.mark.parametrize("shape_id, kind", SHAPE_KINDS)
@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_each_build_matches_numpy_tier(build, monkeypatch, config, kind, shape_id, dtype, layout):
    shape, threads, streamed = SHAPES[shape_id]
    chosen = _on_two_threads(monkeypatch) if threads == 2 else None
    if streamed:
        monkeypatch.setattr(cython_tier, "STREAM_MIN_BYTES", 0)
    x = _input(kind, dtype, layout, shape)
    ours = _run_all(x, layout, config)
    if chosen is not None:
        assert chosen and set(chosen) == {2}, f"the compiled calls chose {sorted(set(chosen))} threads, not 2"
    ref = _run_all(x, layout, config, backend="numpy")
    for i, (a, b) in enumerate(zip(ours, ref)):
        assert _same_result(i, a, b), f"result {i} of the {build} build differs from the NumPy tier"


def _guarded(shape, dtype):
    """A C-contiguous array whose last byte lies just before a page that may not be read: a kernel that reads past
    the end of its input crashes the test instead of reading garbage."""
    itemsize = np.dtype(dtype).itemsize
    nbytes = math.prod(shape) * itemsize
    page = mmap.PAGESIZE
    total = -(-nbytes // page) * page + page
    buf = mmap.mmap(-1, total, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    start = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    assert libc.mprotect(ctypes.c_void_p(start + total - page), ctypes.c_size_t(page), 0) == 0  # PROT_NONE
    return np.frombuffer(buf, dtype=dtype, count=math.prod(shape), offset=total - page - nbytes).reshape(shape)


@pytest.mark.skipif(not hasattr(mmap, "PROT_READ"), reason="needs POSIX mmap and mprotect for the guard page")
@pytest.mark.parametrize("padding", [0, 1])
def test_3x3_stride_2_at_every_width_reads_only_its_input(monkeypatch, padding, dtype):
    """The NCHW backward for 3x3 stride-2 windows finds winners in blocks of windows (8 float32 windows at a time in
    the AVX2 build) and moves the last block back so that it stays in the row. Every width from 5 to 64 puts the
    blocks' ends somewhere else; the input ends at an unreadable page (its last row is the last window row), and
    every result must equal the NumPy tier's."""
    for W in range(5, 65):
        x = _guarded((1, 2, 7 + padding, W), dtype)
        x[...] = _input("ties", dtype, "NCHW", x.shape)
        config = (3, 2, padding, 1, False)
        ref = _run_all(x, "NCHW", config, backend="numpy")
        for name, module in BUILDS.items():
            monkeypatch.setattr(cython_tier, "_kernels", module)
            ours = _run_all(x, "NCHW", config)
            for i, (a, b) in enumerate(zip(ours[:9], ref[:9])):
                assert _same_result(i, a, b), f"W={W}: result {i} of the {name} build differs from the NumPy tier"


@pytest.mark.skipif(len(BUILDS) < 2, reason="only one build can run on this machine")
@pytest.mark.parametrize("streamed", [False, True], ids=["stored", "streamed"])
@pytest.mark.parametrize("kind", ["ties", "nan", "few_nan", "special"])
@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_builds_agree_bit_for_bit(monkeypatch, config, kind, streamed, dtype, layout):
    """On one thread (this shape is below ``SMALL_WORK``): on two threads, each build is compared with the NumPy
    tier, bit for bit for everything but the sign of a NaN average, in test_each_build_matches_numpy_tier's
    "threaded" cases."""
    if streamed:
        monkeypatch.setattr(cython_tier, "STREAM_MIN_BYTES", 0)
    x = _input(kind, dtype, layout, (2, 16, 48, 40))
    results = {}
    for name, module in BUILDS.items():
        monkeypatch.setattr(cython_tier, "_kernels", module)
        results[name] = _run_all(x, layout, config)
    for i, (a, b) in enumerate(zip(results["baseline"], results["avx2"])):
        assert _same_result(i, a, b), f"result {i}: the AVX2 build differs from the baseline build"


def test_avx2_build_present_where_it_can_run():
    """On an x86 CPU with AVX2 the AVX2 build must exist and be the one in use (else the build silently failed)."""
    if not CPU_HAS_AVX2:
        pytest.skip("this CPU has no AVX2: the baseline build is the right one")
    assert AVX2_BUILD is not None, "setup.py did not build pooling_lib._kernels_avx2"
    expected = "baseline" if os.environ.get("POOLING_LIB_SIMD", "").strip().lower() == "baseline" else "avx2"
    assert cython_tier.simd() == expected


def test_environment_variable_chooses_the_build():
    code = "from pooling_lib import cython_tier; print(cython_tier.simd())"
    env = dict(os.environ, POOLING_LIB_SIMD="baseline")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "baseline"
    env["POOLING_LIB_SIMD"] = "fastest"
    done = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", code], env=env,
                          capture_output=True, text=True)
    assert done.returncode != 0 and "POOLING_LIB_SIMD must be" in done.stderr


@pytest.mark.parametrize("name", sorted(BUILDS))
@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_parallel_copy_copies_every_value(name, n_threads, dtype):
    """The benchmark's bandwidth reference: every slab lands in place, for lengths that do not divide evenly."""
    module = BUILDS[name]
    for n in (0, 1, 7, 1000, 4097):
        src = np.random.default_rng(n).standard_normal(n).astype(dtype)
        dst = np.full(n, np.nan, dtype=dtype)
        module.parallel_copy(src, dst, n_threads)
        assert _same_bits(dst, src)
    with pytest.raises(ValueError, match="dst must have the length of src"):
        module.parallel_copy(np.zeros(5, dtype), np.zeros(4, dtype), n_threads)
