"""Builds the optional CPU kernel of GradientCentralization; everything else is in pyproject.toml.

The kernel needs a C compiler with OpenMP (gcc on Linux). Where it cannot be built, the install
goes on without it (``optional=True``) and the callback uses its eager PyTorch path.
"""

import sys

from setuptools import Extension, setup

ext_modules = []
if sys.platform.startswith("linux"):
    ext_modules.append(
        Extension(
            "lightning_ranger.callbacks._centralize_kernel",
            sources=["lightning_ranger/callbacks/_centralize_kernel.c"],
            extra_compile_args=["-O3", "-fopenmp"],
            extra_link_args=["-fopenmp"],
            optional=True,
        )
    )

setup(ext_modules=ext_modules)
