"""How the Cython tier allocates memory. Its cache of freed output buffers (``pooling_lib._buffers``) reuses only
memory NumPy has freed, never memory a live array or view still uses; it keeps to its limit; and its outputs are
ordinary arrays. Its per-thread scratch rows never share a cache line.
"""
import pickle

import numpy as np
import pytest

import pooling_lib as pl

cython_tier = pytest.importorskip("pooling_lib.cython_tier", reason="the compiled tier is not built")

# (2, 8, 96, 96) float64: a 1.2 MB gradient, above the cache's 1 MiB threshold
SHAPE = (2, 8, 96, 96)


@pytest.fixture(autouse=True)
def fresh_cache():
    """Each test starts from an empty cache with the default limit, and leaves it so."""
    limit = cython_tier.set_buffer_cache(0)
    cython_tier.set_buffer_cache(limit)
    yield
    cython_tier.set_buffer_cache(0)
    cython_tier.set_buffer_cache(limit)


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(SHAPE)
    g = rng.standard_normal((SHAPE[0], SHAPE[1], SHAPE[2] // 2, SHAPE[3] // 2))
    return x, g


def _backward(g, x):
    return pl.max_pool2d_backward(g, x, 2, backend="cython")


def test_the_cache_module_is_built_with_the_tier():
    # setup.py builds it beside the kernels; if it went missing the tier would silently allocate fresh pages
    from pooling_lib import _buffers  # noqa: F401
    assert cython_tier._buffers is not None


def test_a_freed_output_is_reused_and_the_result_is_still_right():
    x, g = _inputs()
    expected = pl.max_pool2d_backward(g, x, 2, backend="numpy")
    first = _backward(g, x)
    address = first.ctypes.data
    del first
    assert cython_tier.buffer_cache_info()["blocks"] == 1
    hits = cython_tier.buffer_cache_info()["hits"]
    second = _backward(g, x)
    assert second.ctypes.data == address
    assert cython_tier.buffer_cache_info()["hits"] == hits + 1
    np.testing.assert_array_equal(second, expected)


def test_a_live_output_is_never_handed_out_again():
    x, g = _inputs()
    first = _backward(g, x)
    kept = first.copy()
    second = _backward(-g, x)
    assert not np.shares_memory(first, second)
    np.testing.assert_array_equal(first, kept)
    np.testing.assert_array_equal(second, pl.max_pool2d_backward(-g, x, 2, backend="numpy"))


def test_a_view_keeps_its_memory_out_of_the_cache():
    x, g = _inputs()
    view = _backward(g, x)[1, ::2]       # the only reference left is a view
    kept = view.copy()
    assert cython_tier.buffer_cache_info()["blocks"] == 0
    other = _backward(-g, x)
    assert not np.shares_memory(view, other)
    np.testing.assert_array_equal(view, kept)
    del view
    assert cython_tier.buffer_cache_info()["blocks"] == 1


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("op", ["max", "avg"])
def test_every_output_comes_from_the_cache(op, layout):
    x, g = _inputs()
    x4 = np.concatenate([x] * 4)                              # for the outputs a quarter of x's size
    if layout == "NHWC":
        x, g, x4 = (np.ascontiguousarray(a.transpose(0, 2, 3, 1)) for a in (x, g, x4))
    if op == "max":
        calls = [lambda: pl.max_pool2d(x4, 2, backend="cython", layout=layout),
                 lambda: pl.max_pool2d(x4, 2, backend="cython", return_indices=True, layout=layout),
                 lambda: pl.max_pool2d_backward(g, x, 2, backend="cython", layout=layout)]
    else:
        calls = [lambda: pl.avg_pool2d(x4, 2, backend="cython", layout=layout),
                 lambda: pl.avg_pool2d_backward(g, x, 2, backend="cython", layout=layout)]
    for call in calls:
        outs = call()
        outs = outs if isinstance(outs, tuple) else (outs,)  # values and indices, or one array
        assert all(out.nbytes >= 1 << 20 for out in outs)
        addresses = {out.ctypes.data for out in outs}
        del outs
        hits = cython_tier.buffer_cache_info()["hits"]
        outs = call()
        outs = outs if isinstance(outs, tuple) else (outs,)
        assert {out.ctypes.data for out in outs} == addresses
        assert cython_tier.buffer_cache_info()["hits"] == hits + len(outs)


def test_the_limit_is_kept_and_zero_turns_the_cache_off():
    x, g = _inputs()
    size = _backward(g, x).nbytes
    cython_tier.set_buffer_cache(size)                       # room for one block
    outputs = [_backward(g, x) for _ in range(3)]
    del outputs
    info = cython_tier.buffer_cache_info()
    assert info["blocks"] == 1 and info["held_bytes"] == size
    assert cython_tier.set_buffer_cache(0) == size
    assert cython_tier.buffer_cache_info()["held_bytes"] == 0
    del x
    out = _backward(g, _inputs()[0])
    del out
    assert cython_tier.buffer_cache_info()["blocks"] == 0


def test_outputs_are_ordinary_arrays():
    x, g = _inputs()
    out = _backward(g, x)
    assert out.flags.owndata and out.flags.writeable and out.flags.c_contiguous and out.base is None
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(out)), out)
    out.resize((SHAPE[0] * 2,) + SHAPE[1:], refcheck=False)    # NumPy reallocates through the cache's policy
    out[SHAPE[0]:] = 0
    np.testing.assert_array_equal(out[:SHAPE[0]], _backward(g, x))


@pytest.mark.parametrize("bad, error", [(-1, ValueError), (1.5, TypeError), (True, TypeError), ("1", TypeError)])
def test_set_buffer_cache_rejects_bad_limits(bad, error):
    with pytest.raises(error, match="max_bytes"):
        cython_tier.set_buffer_cache(bad)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
@pytest.mark.parametrize("n", [1, 15, 16, 17, 28, 64, 84, 1000])
def test_scratch_rows_of_different_threads_share_no_cache_line(n, dtype):
    nt = 4
    rows = cython_tier._scratch(nt, n, dtype)
    assert rows.shape[0] == nt and rows.shape[1] >= n and rows.flags.c_contiguous
    line = cython_tier._CACHE_LINE
    for t in range(nt - 1):
        last_byte = rows[t, n - 1:].ctypes.data + rows.itemsize - 1       # the last byte thread t uses
        first_byte_next = rows[t + 1].ctypes.data                         # the first byte thread t + 1 uses
        assert last_byte // line < first_byte_next // line, (n, t)
