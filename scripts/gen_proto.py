"""Regenerate the Python gRPC stubs from proto/ into clients/python/moldau/v1/.

Usage::

    .venv/bin/python scripts/gen_proto.py            # rewrite the committed stubs
    .venv/bin/python scripts/gen_proto.py --out DIR  # write DIR/moldau/v1/... (drift check)

The stubs are committed so that installing the package needs no protoc; CI regenerates them
into a temporary directory and fails when they differ (tests/grpc_api/test_stubs_fresh.py).
``proto/`` mirrors the Python package path, so protoc's absolute imports
(``from moldau.v1 import common_pb2``) resolve to the installed package.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PACKAGE = Path("moldau") / "v1"
TARGET_ROOT = ROOT / "clients" / "python"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")
INIT_TEXT = '"""Generated gRPC stubs of the moldau.v1 API (by scripts/gen_proto.py)."""\n'


def proto_files() -> list[Path]:
    """The .proto sources, in a stable order so protoc output is reproducible."""
    return sorted((PROTO_ROOT / PACKAGE).glob("*.proto"))


def generate(out_root: Path) -> list[Path]:
    """Run protoc (with the mypy-protobuf plugins) writing ``out_root/moldau/v1/``.

    Returns:
        The generated files, ``__init__.py`` included.
    """
    bin_dir = Path(sys.executable).parent
    include = Path(protoc.__file__).parent / "_proto"
    out_root.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out=quiet:{out_root}",
        f"--mypy_grpc_out=quiet:{out_root}",
        *(str(p.relative_to(PROTO_ROOT)) for p in proto_files()),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the messages above")
    package_dir = out_root / PACKAGE
    (package_dir / "__init__.py").write_text(INIT_TEXT)
    return sorted(p for p in package_dir.iterdir() if p.is_file())


def is_generated(path: Path) -> bool:
    """Whether ``path`` is a file this script owns in the target package."""
    return path.name == "__init__.py" or path.name.endswith(GENERATED_SUFFIXES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write here instead of clients/python")
    args = parser.parse_args(argv)
    if args.out is not None:
        generate(args.out)
        return 0
    target = TARGET_ROOT / PACKAGE
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        target.mkdir(parents=True, exist_ok=True)
        for stale in target.iterdir():
            if stale.is_file() and is_generated(stale):
                stale.unlink()
        for path in fresh:
            shutil.copyfile(path, target / path.name)
    print(f"wrote {len(fresh)} files to {target.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
