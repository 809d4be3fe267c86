"""``grpc_api.server.main`` argument handling (the serving path runs in tests/integration)."""

from __future__ import annotations

from pathlib import Path

import pytest

from grpc_api.server import SERVICE_NAMES, main


def test_bad_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "moldau.toml"
    config.write_text("nonsense = 1\n")
    assert main(["--config", str(config)]) == 2
    assert "unknown keys nonsense" in capsys.readouterr().err


def test_bad_listen_flag_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--listen", "localhost"]) == 2
    assert "HOST:PORT" in capsys.readouterr().err


def test_help_names_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "moldau serve" in capsys.readouterr().out


def test_service_names() -> None:
    assert SERVICE_NAMES == (
        "moldau.v1.AdminService",
        "moldau.v1.ProduceService",
        "moldau.v1.FetchService",
        "moldau.v1.GroupService",
        "moldau.v1.EventStoreService",
    )
