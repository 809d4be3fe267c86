"""The committed stubs in clients/python/moldau/v1 must be what proto/ generates.

This is how CI catches a .proto edit without a regeneration (or a hand edit of a stub). Tool
version stamps are masked, so a newer grpcio-tools alone does not fail the check; a change in
what the stubs say does.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "clients" / "python" / "moldau" / "v1"

_VERSION_STAMPS = [
    (re.compile(r"^# Protobuf Python Version: .*$", re.M), "# Protobuf Python Version: X"),
    (re.compile(r"ValidateProtobufRuntimeVersion\(.*?\)", re.S), "ValidateProtobufRuntime()"),
    (re.compile(r"^GRPC_GENERATED_VERSION = .*$", re.M), "GRPC_GENERATED_VERSION = X"),
]


def _normalized(path: Path) -> str:
    text = path.read_text()
    for pattern, replacement in _VERSION_STAMPS:
        text = pattern.sub(replacement, text)
    return text


def test_committed_stubs_match_proto(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    fresh = tmp_path / "moldau" / "v1"
    fresh_names = sorted(p.name for p in fresh.iterdir() if p.is_file())
    committed_names = sorted(
        p.name for p in COMMITTED.iterdir() if p.is_file() and p.suffix in {".py", ".pyi"}
    )
    hint = "run `.venv/bin/python scripts/gen_proto.py` and commit the result"
    assert committed_names == fresh_names, f"stub files differ from proto/; {hint}"
    stale = [
        name for name in fresh_names if _normalized(fresh / name) != _normalized(COMMITTED / name)
    ]
    assert not stale, f"stale stubs {stale}; {hint}"


def test_every_proto_declares_the_package_its_path_implies() -> None:
    for proto in sorted((ROOT / "proto" / "moldau" / "v1").glob("*.proto")):
        assert "\npackage moldau.v1;\n" in proto.read_text(), proto.name
