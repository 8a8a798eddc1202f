"""Build the one compiled module, chunkpull._native, from ext/_native.pyx.

Environment:
  CHUNKPULL_NO_EXTENSIONS=1  build without the extension (pure-Python backend)
  CHUNKPULL_CYTHON_TRACE=1   line tracing in the kernels, for coverage
  CHUNKPULL_CFLAGS="-O2 ..." override the optimisation flags
"""

import os
import platform

from setuptools import setup

DIRECTIVES = {
    "language_level": 3,
    "boundscheck": False,
    "wraparound": False,
    "initializedcheck": False,
    "cdivision": True,
    "embedsignature": True,
}


def extensions():
    if os.environ.get("CHUNKPULL_NO_EXTENSIONS") == "1" or platform.python_implementation() != "CPython":
        return []
    from Cython.Build import cythonize
    from setuptools import Extension

    directives = dict(DIRECTIVES)
    macros = [("OPENSSL_SUPPRESS_DEPRECATED", None)]
    if os.environ.get("CHUNKPULL_CYTHON_TRACE") == "1":
        directives["linetrace"] = True
        macros.append(("CYTHON_TRACE_NOGIL", "1"))
    cflags = os.environ.get("CHUNKPULL_CFLAGS", "-O3").split()
    ext = Extension(
        "chunkpull._native",
        ["ext/_native.pyx"],
        libraries=["crypto"],
        include_dirs=["ext"],
        define_macros=macros,
        extra_compile_args=cflags + ["-Wall", "-Wno-unused-function", "-Wno-unreachable-code"],
    )
    return cythonize([ext], compiler_directives=directives, include_path=["ext"], annotate=True, language_level=3)


setup(ext_modules=extensions())
