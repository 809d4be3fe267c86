"""Builds the optional C loops; everything else is configured in pyproject.toml.

``optional=True``: without a C compiler the install still succeeds and the pure-Python
loops that the extension mirrors do the work.
"""

from setuptools import Extension, setup

_FLAGS = ["-O2", "-Wall", "-Werror=implicit-function-declaration"]
_SHARED = "engine/records/_native.h"  # varints and exact sums, included by each module

setup(
    ext_modules=[
        Extension(name, [source], include_dirs=["engine/records"], depends=[_SHARED],
                  extra_compile_args=_FLAGS, optional=True)
        for name, source in (
            ("engine.records._crecords", "engine/records/_crecords.c"),
            ("engine.views.routing._creframe", "engine/views/routing/_creframe.c"),
            ("engine.views.eventstore._cevents", "engine/views/eventstore/_cevents.c"),
            ("grpc_api._cappend", "grpc_api/_cappend.c"),
            ("moldau._cappend", "clients/python/moldau/_cappend.c"),
            ("moldau._creplay", "clients/python/moldau/_creplay.c"),
        )
    ]
)
