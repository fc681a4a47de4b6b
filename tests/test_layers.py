"""The layer classes: forward caches its input, backward equals the functional backward, repr round-trips."""
import numpy as np
import pytest

import pooling_lib as pl
from _helpers import assert_identical, distinct_values, import_torch

LAYER_CASES = [
    (pl.MaxPool2d, dict(kernel_size=3, stride=2, padding=1), pl.max_pool2d, pl.max_pool2d_backward),
    (pl.MaxPool2d, dict(kernel_size=2, stride=1, dilation=2, ceil_mode=True), pl.max_pool2d,
     pl.max_pool2d_backward),
    (pl.MinPool2d, dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 1)), pl.min_pool2d, pl.min_pool2d_backward),
    (pl.AvgPool2d, dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False), pl.avg_pool2d,
     pl.avg_pool2d_backward),
    (pl.AvgPool2d, dict(kernel_size=2, divisor_override=3), pl.avg_pool2d, pl.avg_pool2d_backward),
    (pl.GlobalMaxPool2d, dict(), pl.global_max_pool2d, pl.global_max_pool2d_backward),
    (pl.GlobalAvgPool2d, dict(), pl.global_avg_pool2d, pl.global_avg_pool2d_backward),
]
IDS = [f"{cls.__name__}-{kw}" for cls, kw, _, _ in LAYER_CASES]


@pytest.mark.parametrize("cls, options, forward, backward", LAYER_CASES, ids=IDS)
def test_layer_equals_functions_and_caches_its_input(cls, options, forward, backward, backend, layout):
    options = dict(options, backend=backend, layout=layout)
    layer = cls(**options)
    shape = (2, 3, 7, 6) if layout == "NCHW" else (2, 7, 6, 3)
    x1 = distinct_values(shape, seed=1)
    x2 = distinct_values(shape, seed=2)
    out1 = layer.forward(x1)
    assert_identical(out1, forward(x1, **options))
    g = np.random.default_rng(0).standard_normal(out1.shape)
    # backward takes only grad_out: the layer differentiates at the input it cached
    assert_identical(layer.backward(g), backward(g, x1, **options))
    assert_identical(layer.backward(g), backward(g, x1, **options))  # the cache survives a backward
    # a new forward replaces the cache
    out2 = layer(x2)
    assert_identical(out2, forward(x2, **options))
    grad2 = layer.backward(g)
    assert_identical(grad2, backward(g, x2, **options))
    if cls is not pl.AvgPool2d and cls is not pl.GlobalAvgPool2d:  # the avg gradient does not depend on x
        assert not np.array_equal(grad2, backward(g, x1, **options))


@pytest.mark.parametrize("cls, forward", [(pl.MaxPool2d, pl.max_pool2d), (pl.MinPool2d, pl.min_pool2d)])
def test_max_and_min_layers_route_by_the_forwards_indices(cls, forward, monkeypatch):
    """Like PyTorch's autograd, the layer keeps the forward's indices and the backward reads them: the gradient
    follows the winners of the forward even when the array is changed in place in between, and the backward
    function is handed exactly those indices."""
    layer = cls(3, stride=2, padding=1)
    x = distinct_values((2, 3, 7, 6), seed=3)
    _, indices = forward(x, 3, stride=2, padding=1, return_indices=True)
    layer.forward(x)
    g = np.random.default_rng(1).standard_normal((2, 3, 4, 3))
    expected = layer.backward(g)
    x[:] = x[:, :, ::-1]                                   # the winners are elsewhere now
    seen = []
    backward = type(layer)._backward

    def spy(*args, **kwargs):
        seen.append(kwargs["indices"])
        return backward(*args, **kwargs)
    monkeypatch.setattr(cls, "_backward", staticmethod(spy))
    assert_identical(layer.backward(g), expected)
    assert_identical(seen[0], indices)


def test_layer_call_is_forward():
    layer = pl.MaxPool2d(2)
    x = distinct_values((1, 1, 4, 4))
    assert_identical(layer(x), layer.forward(x))


def test_failed_forward_keeps_the_previous_cache():
    layer = pl.MaxPool2d(2)
    x = distinct_values((1, 1, 4, 4))
    layer.forward(x)
    with pytest.raises(ValueError):
        layer.forward(np.zeros((1, 1, 1, 1)))  # window too large
    g = np.ones((1, 1, 2, 2))
    assert_identical(layer.backward(g), pl.max_pool2d_backward(g, x, 2))


def test_layers_are_independent():
    a, b = pl.MaxPool2d(2), pl.MaxPool2d(2)
    xa, xb = distinct_values((1, 1, 4, 4), seed=1), distinct_values((1, 1, 4, 4), seed=2)
    a.forward(xa)
    b.forward(xb)
    g = np.ones((1, 1, 2, 2))
    assert_identical(a.backward(g), pl.max_pool2d_backward(g, xa, 2))
    assert_identical(b.backward(g), pl.max_pool2d_backward(g, xb, 2))


def test_stacked_layers_chain_rule():
    """Max pooling then average pooling, backward through both, against a numerical gradient."""
    x = distinct_values((1, 2, 8, 8), seed=3)
    p1, p2 = pl.MaxPool2d(3, stride=1, padding=1), pl.AvgPool2d(2)

    def forward(v):
        return p2.forward(p1.forward(v))

    def backward(g, v):
        forward(v)
        return p1.backward(p2.backward(g))

    assert pl.gradcheck(forward, backward, x) < 1e-7


@pytest.mark.parametrize("layer, name", [
    (pl.MaxPool2d(3, stride=2, padding=1, ceil_mode=True, layout="NHWC", backend="numpy"), "MaxPool2d"),
    (pl.MinPool2d((2, 3), dilation=(1, 2)), "MinPool2d"),
    (pl.AvgPool2d(2, count_include_pad=False, divisor_override=4), "AvgPool2d"),
    (pl.GlobalMaxPool2d(layout="NHWC", backend="naive"), "GlobalMaxPool2d"),
    (pl.GlobalAvgPool2d(), "GlobalAvgPool2d"),
])
def test_repr_names_the_class_and_options_and_round_trips(layer, name):
    text = repr(layer)
    assert text.startswith(name + "(")
    for key, value in layer.options.items():
        assert f"{key}={value!r}" in text
    clone = eval(text, {cls: getattr(pl, cls) for cls in pl.__all__})
    assert type(clone) is type(layer) and repr(clone) == text
    layout = layer.options.get("layout", "NCHW")
    x = distinct_values((1, 6, 6, 2) if layout == "NHWC" else (1, 2, 6, 6), seed=4)
    assert_identical(clone(x), layer(x))


def test_repr_shows_given_values():
    assert "kernel_size=3" in repr(pl.MaxPool2d(3))
    assert "stride=3" in repr(pl.MaxPool2d(3))  # PyTorch's default, shown as torch.nn.MaxPool2d shows it
    assert "stride=(1, 2)" in repr(pl.AvgPool2d(3, stride=(1, 2)))
    assert "divisor_override=5" in repr(pl.AvgPool2d(3, divisor_override=5))
    assert "layout='NHWC'" in repr(pl.GlobalAvgPool2d(layout="NHWC"))


def test_layer_default_options_are_the_functions_defaults():
    x = distinct_values((2, 2, 7, 7), seed=5)
    g = np.random.default_rng(1).standard_normal((2, 2, 3, 3))
    assert_identical(pl.MaxPool2d(2)(x), pl.max_pool2d(x, 2))
    assert_identical(pl.MinPool2d(2)(x), pl.min_pool2d(x, 2))
    layer = pl.AvgPool2d(3, 2, 1)
    assert_identical(layer(x), pl.avg_pool2d(x, 3, 2, 1))
    assert_identical(layer.backward(np.ones((2, 2, 4, 4))), pl.avg_pool2d_backward(np.ones((2, 2, 4, 4)), x, 3, 2, 1))
    layer = pl.MaxPool2d(3, 2)
    layer(x)
    assert_identical(layer.backward(g), pl.max_pool2d_backward(g, x, 3, 2))


MAX_ARGS = [(2,), (3, 2, 1), (3, 1, 1, 2, False, True), ((2, 3), (1, 2), (1, 0), (2, 1), True, False), (3, None)]
AVG_ARGS = [(2,), (3, 2, 1), (3, 2, 1, True, False, 5), ((2, 3), (1, 2), (1, 0), False, True, None), (3, None)]


@pytest.mark.parametrize("args", MAX_ARGS, ids=repr)
@pytest.mark.parametrize("name", ["MaxPool2d", "AvgPool2d"])
def test_layer_arguments_and_attributes_are_pytorchs(name, args):
    # the same positional order as torch.nn, the same attributes (stride defaults to kernel_size)
    torch = import_torch()
    if name == "AvgPool2d":
        args = AVG_ARGS[MAX_ARGS.index(args)]
    ours, theirs = getattr(pl, name)(*args), getattr(torch.nn, name)(*args)
    names = (("kernel_size", "stride", "padding", "dilation", "return_indices", "ceil_mode") if name == "MaxPool2d"
             else ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"))
    for attr in names:
        assert getattr(ours, attr) == getattr(theirs, attr), attr
    x = distinct_values((1, 2, 7, 8), seed=5)
    got, want = ours(x), theirs(torch.from_numpy(x))
    if name == "MaxPool2d" and ours.return_indices:
        assert_identical(got[0], want[0].numpy())
        assert_identical(got[1], want[1].numpy())
    else:
        assert_identical(got, want.numpy())


def test_a_changed_attribute_takes_effect():
    layer = pl.MaxPool2d(2)
    x = distinct_values((1, 1, 6, 6), seed=6)
    layer.kernel_size, layer.stride, layer.padding = 3, 1, 1
    assert_identical(layer(x), pl.max_pool2d(x, 3, 1, 1))
    g = distinct_values((1, 1, 6, 6), seed=7)
    assert_identical(layer.backward(g), pl.max_pool2d_backward(g, x, 3, 1, 1))


def test_return_indices_returns_the_indices_the_backward_uses():
    layer = pl.MaxPool2d(3, 2, 1, return_indices=True)
    x = distinct_values((2, 3, 7, 7), seed=8)
    out, indices = layer(x)
    want_out, want_indices = pl.max_pool2d(x, 3, 2, 1, return_indices=True)
    assert_identical(out, want_out)
    assert_identical(indices, want_indices)
    g = distinct_values(out.shape, seed=9)
    assert_identical(layer.backward(g), pl.max_pool2d_backward(g, x, 3, 2, 1, indices=want_indices))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_global_max_layer_keeps_the_indices(layout):
    # a change of x in place between forward and backward does not move the gradient: it goes by the indices
    x = np.array([[[[1.0, 5.0], [2.0, 3.0]]], [[[4.0, 0.0], [7.0, 6.0]]]])
    x = x.transpose(0, 2, 3, 1).copy() if layout == "NHWC" else x
    layer = pl.GlobalMaxPool2d(layout=layout)
    assert_identical(layer(x), pl.global_max_pool2d(x, layout=layout))
    want = pl.global_max_pool2d_backward(np.array([[2.0], [3.0]]), x, layout=layout)
    x[...] = 9.0 - x  # every winner moves
    assert_identical(layer.backward(np.array([[2.0], [3.0]])), want)
