"""Benchmark session info: every run records the machine and library versions it ran on."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

import pytest


def pytest_benchmark_update_machine_info(
    config: pytest.Config, machine_info: dict[str, Any]
) -> None:
    machine_info["cpu_count"] = os.cpu_count()
    machine_info["python"] = platform.python_version()
    versions = {}
    for name in ("numpy", "crc32c", "lz4", "zstandard", "cramjam", "grpcio", "protobuf"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    machine_info["libraries"] = versions
