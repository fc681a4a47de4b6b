"""pooling_lib: max, min, average and global pooling for CNNs, forward and backward, exact to PyTorch.

Three tiers compute the same thing: ``"naive"`` (Python loops, the book's reference), ``"numpy"``
(vectorised) and ``"cython"`` (compiled, multi-threaded); ``backend="auto"`` picks the fastest available.
"""
import warnings

from .functional import (
    CYTHON_IMPORT_ERROR as _CYTHON_IMPORT_ERROR,
    available_backends,
    avg_pool2d,
    avg_pool2d_backward,
    global_avg_pool2d,
    global_avg_pool2d_backward,
    global_max_pool2d,
    global_max_pool2d_backward,
    max_pool2d,
    max_pool2d_backward,
    min_pool2d,
    min_pool2d_backward,
)
from .gradcheck import GradcheckError, gradcheck, numerical_gradient, rel_error
from .layers import AvgPool2d, GlobalAvgPool2d, GlobalMaxPool2d, MaxPool2d, MinPool2d
from .params import pool2d_output_size

__version__ = "1.0.0"

__all__ = [
    "available_backends",
    "avg_pool2d",
    "avg_pool2d_backward",
    "global_avg_pool2d",
    "global_avg_pool2d_backward",
    "global_max_pool2d",
    "global_max_pool2d_backward",
    "max_pool2d",
    "max_pool2d_backward",
    "min_pool2d",
    "min_pool2d_backward",
    "pool2d_output_size",
    "MaxPool2d",
    "MinPool2d",
    "AvgPool2d",
    "GlobalMaxPool2d",
    "GlobalAvgPool2d",
    "numerical_gradient",
    "rel_error",
    "gradcheck",
    "GradcheckError",
]

if _CYTHON_IMPORT_ERROR is not None:
    warnings.warn(
        "pooling_lib: the compiled Cython tier (pooling_lib._kernels) is not available, so backend='auto' uses "
        "the NumPy tier. The extension is built when pooling_lib is installed and a C compiler is present: "
        f"reinstall with one to get it. (Import error: {_CYTHON_IMPORT_ERROR})",
        RuntimeWarning,
        stacklevel=2,
    )
