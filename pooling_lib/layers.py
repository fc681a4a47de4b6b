"""Pooling layers with a forward/backward contract, in the style of CS231n's ``layers.py``.

``forward(x)`` computes the output and caches what ``backward`` needs (the input, and for max, min and global max
pooling the winners' indices, as PyTorch's autograd keeps them); ``backward(grad_out)`` returns the gradient with
respect to that input. A layer holds no weights, so there is nothing else to learn.
Every method goes through :mod:`pooling_lib.functional`, so validation and semantics are the functions'. The
constructors take PyTorch's arguments in PyTorch's order (``MaxPool2d(kernel_size, stride, padding, dilation,
return_indices, ceil_mode)``), then ``layout`` and ``backend``, and keep each as an attribute of the same name, as
``torch.nn.MaxPool2d`` does: ``stride`` defaults to ``kernel_size``.
"""
from . import functional as F

__all__ = ["MaxPool2d", "MinPool2d", "AvgPool2d", "GlobalMaxPool2d", "GlobalAvgPool2d"]


class _Pool:
    """Shared plumbing: the options as attributes, ``forward`` caches ``x``, ``backward`` gets the cached ``x``."""

    _forward = None  # set by subclasses to a functional forward/backward pair
    _backward = None
    _options = ()  # the names of the constructor's options, in its order (and the repr's)
    _layer_only = ()  # those of them that the functions do not take

    def __init__(self, **options):
        if options.get("stride", False) is None:
            options["stride"] = options["kernel_size"]  # PyTorch's default, shown as such
        for name, value in options.items():
            setattr(self, name, value)
        self._x = None

    @property
    def options(self):
        """The keyword arguments this layer passes to its functions (read from the attributes)."""
        return {name: getattr(self, name) for name in self._options if name not in self._layer_only}

    def __repr__(self):
        args = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._options)
        return f"{type(self).__name__}({args})"

    def forward(self, x):
        """Pool ``x`` and remember it for :meth:`backward`."""
        out = type(self)._forward(x, **self.options)
        self._x = x
        return out

    __call__ = forward

    def _cached_x(self):
        if self._x is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward: there is no input to "
                               "differentiate")
        return self._x

    def backward(self, grad_out):
        """Gradient of the loss with respect to the input of the last :meth:`forward` call."""
        return type(self)._backward(grad_out, self._cached_x(), **self.options)


class _IndexedPool(_Pool):
    """A pool whose ``forward`` keeps the winners' indices and whose ``backward`` routes the gradient by them, as
    PyTorch's autograd does; ``forward`` returns ``(out, indices)`` when ``return_indices`` is true."""

    return_indices = False  # an attribute of MaxPool2d's own; global max pooling never returns the indices

    def __init__(self, **options):
        super().__init__(**options)
        self._indices = None

    def forward(self, x):
        """Pool ``x`` and remember it and its winners' indices for :meth:`backward`; with ``return_indices``,
        return ``(out, indices)``."""
        out, indices = type(self)._forward(x, **self.options, return_indices=True)
        self._x, self._indices = x, indices
        return (out, indices) if self.return_indices else out

    __call__ = forward

    def backward(self, grad_out):
        """Gradient of the loss with respect to the input of the last :meth:`forward` call."""
        return type(self)._backward(grad_out, self._cached_x(), **self.options, indices=self._indices)


class MaxPool2d(_IndexedPool):
    """Max pooling layer; the options are those of :func:`pooling_lib.max_pool2d`.

    ``forward`` keeps the winners' indices and ``backward`` routes the gradient by them, as PyTorch does: it
    then reads 8 bytes per window instead of searching ``x`` for the winners again, and a change to ``x`` in
    place between the two does not move the gradient. With ``return_indices=True``, ``forward`` also returns
    them, as ``torch.nn.MaxPool2d`` does.

    >>> import numpy as np
    >>> pool = MaxPool2d(2)
    >>> pool
    MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, return_indices=False, ceil_mode=False, layout='NCHW', backend='auto')
    >>> pool(np.arange(16.).reshape(1, 1, 4, 4))[0, 0]
    array([[ 5.,  7.],
           [13., 15.]])
    >>> pool.backward(np.ones((1, 1, 2, 2)))[0, 0, :2]
    array([[0., 0., 0., 0.],
           [0., 1., 0., 1.]])
    """

    _forward = staticmethod(F.max_pool2d)
    _backward = staticmethod(F.max_pool2d_backward)
    _options = ("kernel_size", "stride", "padding", "dilation", "return_indices", "ceil_mode", "layout", "backend")
    _layer_only = ("return_indices",)  # the forward always keeps the indices; this says whether it returns them

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False,
                 layout="NCHW", backend="auto"):
        super().__init__(kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation,
                         return_indices=return_indices, ceil_mode=ceil_mode, layout=layout, backend=backend)


class MinPool2d(MaxPool2d):
    """Min pooling layer, the mirror of :class:`MaxPool2d`."""

    _forward = staticmethod(F.min_pool2d)
    _backward = staticmethod(F.min_pool2d_backward)


class AvgPool2d(_Pool):
    """Average pooling layer; the options are those of :func:`pooling_lib.avg_pool2d`."""

    _forward = staticmethod(F.avg_pool2d)
    _backward = staticmethod(F.avg_pool2d_backward)
    _options = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override", "layout",
                "backend")

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 divisor_override=None, layout="NCHW", backend="auto"):
        super().__init__(kernel_size=kernel_size, stride=stride, padding=padding, ceil_mode=ceil_mode,
                         count_include_pad=count_include_pad, divisor_override=divisor_override,
                         layout=layout, backend=backend)


class GlobalMaxPool2d(_IndexedPool):
    """Global max pooling layer: ``(N, C, H, W) -> (N, C)``.

    Like :class:`MaxPool2d`, ``forward`` keeps the winners' indices (max pooling with one window over the plane)
    and ``backward`` routes the gradient by them.
    """

    _forward = staticmethod(F.global_max_pool2d)
    _backward = staticmethod(F.global_max_pool2d_backward)
    _options = ("layout", "backend")

    def __init__(self, layout="NCHW", backend="auto"):
        super().__init__(layout=layout, backend=backend)


class GlobalAvgPool2d(_Pool):
    """Global average pooling layer: ``(N, C, H, W) -> (N, C)``."""

    _forward = staticmethod(F.global_avg_pool2d)
    _backward = staticmethod(F.global_avg_pool2d_backward)
    _options = ("layout", "backend")

    def __init__(self, layout="NCHW", backend="auto"):
        super().__init__(layout=layout, backend=backend)
