"""Build the optional Cython extensions: ``pooling_lib._kernels`` and its small companion ``pooling_lib._buffers``
(the cache of freed output buffers the compiled tier allocates from; without it the tier uses ``np.empty``).

OpenMP is used when the compiler accepts ``-fopenmp``; otherwise the kernels are built single-threaded.
If no compiler is present at all, the extension is skipped (``optional=True``) and ``pooling_lib`` runs on
its NumPy tier, saying so once when it is imported.

The kernels are built twice from one source: ``_kernels`` for the compiler's default instruction set (SSE2 on
x86-64), which runs on any machine of the architecture, and, on x86, ``_kernels_avx2`` with 256-bit AVX2
vectors (with GCC or Clang). ``pooling_lib.cython_tier`` picks the AVX2 build when the CPU running it has AVX2, so a package built on
one machine still runs on another (Binder, clusters). Both builds give the same bits: ``-ffp-contract=off``
(no fused multiply-add) comes after any flags from the environment, and there is never ``-ffast-math``. If the
AVX2 build fails, the baseline one is still used (both are optional).
"""
import os
import platform
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


X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")


class BuildExt(build_ext):
    def finalize_options(self):
        super().finalize_options()
        if not self.parallel:
            self.parallel = True  # the two builds compile side by side, one per core

    def build_extensions(self):
        msvc = self.compiler.compiler_type == "msvc"
        if msvc:
            flags, link_flags = ["/O2", "/openmp", "/fp:precise"], []  # /fp:precise: no contraction to FMA
        else:
            # -ffp-contract=off: no fused multiply-add, so every float operation rounds as in NumPy (the kernels
            # must match the naive tier to the bit); never -ffast-math, for the same reason.
            # -Werror=implicit-function-declaration: a C function the headers do not declare stops the build
            # instead of the import
            flags = ["-O3", "-ffp-contract=off", "-Werror=implicit-function-declaration"]
            link_flags = []
            if compiler_has_openmp(self.compiler):
                flags.append("-fopenmp")
                link_flags.append("-fopenmp")
            else:
                print("pooling_lib: the compiler has no OpenMP; building the kernels single-threaded", file=sys.stderr)
        if msvc:
            # the CPU check that selects the AVX2 build at run time needs GCC or Clang, so MSVC would build it in vain
            self.extensions = [ext for ext in self.extensions if not ext.name.endswith("_avx2")]
        for ext in self.extensions:
            extra = ["-mavx2"] if ext.name.endswith("_avx2") else []
            # the flags we rely on come last, after any the extension or the environment brings
            ext.extra_compile_args = ext.extra_compile_args + extra + flags
            ext.extra_link_args = link_flags + ext.extra_link_args
        super().build_extensions()


def kernel_extension(name):
    return Extension(
        f"pooling_lib.{name}",
        [f"pooling_lib/{name}.pyx"],
        include_dirs=[np.get_include()],
        # NPY_TARGET_VERSION 1.22: the oldest NumPy API with PyDataMem_SetHandler (_buffers). NumPy 2.2 (the
        # newest on Python 3.10) targets 1.21 by default, which leaves that function undeclared: the module would
        # build and then fail to import.
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
                       ("NPY_TARGET_VERSION", "NPY_1_22_API_VERSION")],
        optional=True,
    )


extensions = [kernel_extension("_kernels"), kernel_extension("_buffers")]
if X86:
    extensions.append(kernel_extension("_kernels_avx2"))

ext_modules = cythonize(extensions, language_level=3, compiler_directives={"embedsignature": True})
for ext in ext_modules:
    ext.optional = True  # cythonize() returns new Extension objects without the flag

setup(
    ext_modules=ext_modules,
    cmdclass={"build_ext": BuildExt},
)
