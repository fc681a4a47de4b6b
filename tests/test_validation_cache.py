"""The checked-geometry and divisor caches: a hit gives what the checks would give, and never skips an error.

``params.pool_geometry`` keeps the geometries that passed (``params._kept_geometry``), and
``cython_tier._avg_divisors`` the divisor arrays it built (both to save Python work on a layer's repeated calls). A
cache keyed loosely would be wrong in a way no other test sees: ``True == 1``, ``0 == False`` and ``2.0 == 2`` hash
alike, so after a good call with ``2`` a call with ``2.0`` could find its geometry and skip the TypeError it must
raise.
"""
import itertools

import numpy as np
import pytest

import pooling_lib as pl
from pooling_lib import params as P

X = np.zeros((1, 1, 6, 6))

# (a good call's arguments, the same with one argument replaced by a value that compares and hashes equal to the
# good one but must be refused, the argument's name)
EQUAL_HASH_CASES = [
    ({"kernel_size": 2}, {"kernel_size": 2.0}, "kernel_size"),
    ({"kernel_size": 1}, {"kernel_size": True}, "kernel_size"),
    ({"kernel_size": (2, 2)}, {"kernel_size": (2, 2.0)}, "kernel_size"),
    ({"kernel_size": (1, 2)}, {"kernel_size": (True, 2)}, "kernel_size"),
    ({"kernel_size": 2, "stride": 2}, {"kernel_size": 2, "stride": 2.0}, "stride"),
    ({"kernel_size": 2, "stride": 1}, {"kernel_size": 2, "stride": True}, "stride"),
    ({"kernel_size": 2, "padding": 0}, {"kernel_size": 2, "padding": False}, "padding"),
    ({"kernel_size": 2, "padding": 1}, {"kernel_size": 2, "padding": 1.0}, "padding"),
    ({"kernel_size": 2, "dilation": 1}, {"kernel_size": 2, "dilation": True}, "dilation"),
    ({"kernel_size": 2, "ceil_mode": False}, {"kernel_size": 2, "ceil_mode": 0}, "ceil_mode"),
    ({"kernel_size": 2, "ceil_mode": True}, {"kernel_size": 2, "ceil_mode": 1}, "ceil_mode"),
]


CACHE_CASES = [(func, good, bad, name) for func in (pl.max_pool2d, pl.avg_pool2d)
               for good, bad, name in EQUAL_HASH_CASES
               if not (func is pl.avg_pool2d and name == "dilation")]  # avg_pool2d has no dilation


@pytest.mark.parametrize("func, good, bad, name", CACHE_CASES,
                         ids=[f"{f.__name__}-{bad}" for f, good, bad, name in CACHE_CASES])
def test_a_cached_geometry_never_skips_a_type_error(func, good, bad, name):
    func(X, **good)
    func(X, **good)  # now certainly a cache hit
    with pytest.raises(TypeError, match=name):
        func(X, **bad)


def test_pool_geometry_from_the_cache_equals_the_checks():
    """Every size argument form, twice: the second call is served from the cache and must equal the first and a
    fresh check; the unhashable and NumPy forms are checked every time and give the same geometry too."""
    P._kept_geometry.cache_clear()
    shapes = [(2, 3, 7, 5), (1, 1, 4, 9), (0, 2, 6, 6)]
    for shape, k, s, p, d, ceil in itertools.product(shapes, [1, 2, 3, (2, 3)], [None, 1, 2, (1, 2)], [0, 1],
                                                      [1, 2], [False, True]):
        x = np.zeros(shape)
        try:
            fresh = P._check_geometry(x.shape, k, s, p, d, ceil, "NCHW")
        except ValueError:
            with pytest.raises(ValueError):
                P.pool_geometry(x, k, s, p, d, ceil)
            continue
        first = P.pool_geometry(x, k, s, p, d, ceil)
        second = P.pool_geometry(x, k, s, p, d, ceil)
        assert first == fresh and second == fresh
        assert second is first  # the cache served it
        as_list = list(k) if isinstance(k, tuple) else [k, k]
        assert P.pool_geometry(x, as_list, s, p, d, ceil) == fresh
        assert P.pool_geometry(x, np.int64(as_list[0]) if as_list[0] == as_list[1] else k, s, p, d, ceil) == fresh
    info = P._kept_geometry.cache_info()
    assert 0 < info.currsize <= info.maxsize


def test_the_geometry_cache_is_bounded():
    P._kept_geometry.cache_clear()
    limit = P._kept_geometry.cache_info().maxsize
    assert limit is not None
    for w in range(2, 2 + 3 * limit):
        P.pool_geometry(np.zeros((1, 1, 2, w)), 2)
        assert P._kept_geometry.cache_info().currsize <= limit
    g = P.pool_geometry(np.zeros((1, 1, 2, 9)), 2)
    assert (g.out_h, g.out_w) == (1, 4)


def test_a_geometry_for_one_shape_is_not_served_for_another():
    a = pl.max_pool2d(np.arange(16.0).reshape(1, 1, 4, 4), 2)
    b = pl.max_pool2d(np.arange(36.0).reshape(1, 1, 6, 6), 2)
    np.testing.assert_array_equal(a[0, 0], [[5, 7], [13, 15]])
    np.testing.assert_array_equal(b[0, 0], [[7, 9, 11], [19, 21, 23], [31, 33, 35]])


def _cython_tier():
    if "cython" not in pl.available_backends():
        pytest.skip("the compiled tier is not built on this machine")
    from pooling_lib import cython_tier
    return cython_tier


@pytest.mark.parametrize("count_include_pad, divisor_override", [(True, None), (False, None), (True, 3), (False, -2)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cached_divisors_equal_the_formula_and_are_read_only(count_include_pad, divisor_override, dtype):
    ct = _cython_tier()
    g = P.pool_geometry(np.zeros((1, 1, 7, 6)), 3, 2, 1, 1, True)
    dtype = np.dtype(dtype)
    first = ct._avg_divisors(g, count_include_pad, divisor_override, dtype)
    again = ct._avg_divisors(g, count_include_pad, divisor_override, dtype)
    assert again is first
    assert first.dtype == dtype and first.flags.c_contiguous and not first.flags.writeable
    np.testing.assert_array_equal(first, P.avg_divisors(g, count_include_pad, divisor_override).astype(dtype))
    with pytest.raises(ValueError, match="read-only"):
        first[0, 0] = 1


def test_average_pooling_keeps_its_divisors_apart():
    """Calls that differ only in what the cache keys on must not share divisors."""
    _cython_tier()
    x = np.arange(1.0, 50.0).reshape(1, 1, 7, 7)
    kw = {"kernel_size": 3, "stride": 2, "padding": 1, "backend": "cython"}
    results = {(cip, ov): pl.avg_pool2d(x, count_include_pad=cip, divisor_override=ov, **kw)
               for cip in (True, False) for ov in (None, 2)}
    for (cip, ov), got in results.items():
        want = pl.avg_pool2d(x, count_include_pad=cip, divisor_override=ov, **{**kw, "backend": "numpy"})
        np.testing.assert_array_equal(got, want)
    assert not np.array_equal(results[True, None], results[False, None])
    f32 = pl.avg_pool2d(x.astype(np.float32), **kw)
    np.testing.assert_array_equal(f32, results[True, None].astype(np.float32))
