"""Build the optional Cython extension ``pooling_lib._kernels``.

OpenMP is used when the compiler accepts ``-fopenmp``; otherwise the kernels are built single-threaded.
If no compiler is present at all, the extension is skipped (``optional=True``) and ``pooling_lib`` runs on
its NumPy tier, saying so once when it is imported.

The build targets the compiler's default instruction set (SSE2 on x86-64), so the module runs on any machine of
the architecture, as it must where a package is built on one machine and run on another (Binder, clusters).
For a build tuned to this machine only, add flags through the environment, e.g.
``CFLAGS="-march=native -mprefer-vector-width=256" pip install -e .``. Results stay bit-identical because
``-ffp-contract=off`` comes after such flags (no fused multiply-add); never add ``-ffast-math``.
"""
import os
import sys
import tempfile

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

OPENMP_PROBE = "#include <omp.h>\nint main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }\n"


def compiler_has_openmp(compiler):
    """Return True when the C compiler compiles and links a tiny OpenMP program."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(OPENMP_PROBE)
        try:
            objects = compiler.compile([src], output_dir=tmp, extra_postargs=["-fopenmp"])
            compiler.link_executable(objects, os.path.join(tmp, "probe"), extra_postargs=["-fopenmp"])
        except Exception:  # CompileError, LinkError, or no compiler at all
            return False
    return True


class BuildExt(build_ext):
    def build_extensions(self):
        if self.compiler.compiler_type == "msvc":
            flags, link_flags = ["/O2", "/openmp", "/fp:precise"], []  # /fp:precise: no contraction to FMA
        else:
            # -ffp-contract=off: no fused multiply-add, so every float operation rounds as in NumPy (the kernels
            # must match the naive tier to the bit); never -ffast-math, for the same reason.
            flags = ["-O3", "-ffp-contract=off"]
            link_flags = []
            if compiler_has_openmp(self.compiler):
                flags.append("-fopenmp")
                link_flags.append("-fopenmp")
            else:
                print("pooling_lib: the compiler has no OpenMP; building the kernels single-threaded", file=sys.stderr)
        for ext in self.extensions:
            ext.extra_compile_args = flags + ext.extra_compile_args
            ext.extra_link_args = link_flags + ext.extra_link_args
        super().build_extensions()


extensions = [
    Extension(
        "pooling_lib._kernels",
        ["pooling_lib/_kernels.pyx"],
        include_dirs=[np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        optional=True,
    )
]

ext_modules = cythonize(extensions, language_level=3, compiler_directives={"embedsignature": True})
for ext in ext_modules:
    ext.optional = True  # cythonize() returns new Extension objects without the flag

setup(
    ext_modules=ext_modules,
    cmdclass={"build_ext": BuildExt},
)
