"""Builds the optional C loops; everything else is configured in pyproject.toml.

``optional=True``: without a C compiler the install still succeeds and the pure-Python
loops that the extension mirrors do the work.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "engine.views.routing._creframe",
            ["engine/views/routing/_creframe.c"],
            extra_compile_args=["-O2", "-Wall", "-Werror=implicit-function-declaration"],
            optional=True,
        )
    ]
)
