"""Builds the optional C loops; everything else is configured in pyproject.toml.

``optional=True``: without a C compiler the install still succeeds and the pure-Python
loops that the extension mirrors do the work.
"""

from setuptools import Extension, setup

_FLAGS = ["-O2", "-Wall", "-Werror=implicit-function-declaration"]

setup(
    ext_modules=[
        Extension("engine.records._crecords", ["engine/records/_crecords.c"],
                  extra_compile_args=_FLAGS, optional=True),
        Extension("engine.views.routing._creframe", ["engine/views/routing/_creframe.c"],
                  extra_compile_args=_FLAGS, optional=True),
        Extension("moldau._creplay", ["clients/python/moldau/_creplay.c"],
                  extra_compile_args=_FLAGS, optional=True),
    ]
)
