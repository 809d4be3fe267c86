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
        "moldau.v1.AclService",
        "moldau.v1.QueueService",
        "moldau.v1.ExchangeService",
    )


def test_non_loopback_listen_with_auth_off_refuses_to_start(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--listen", "0.0.0.0:0"]) == 2
    err = capsys.readouterr().err
    assert "authentication off" in err
    assert "auth_tokens_file" in err
    assert "allow_anonymous" in err


def test_unreadable_tokens_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOLDAU_AUTH_TOKENS_FILE", str(tmp_path / "missing.toml"))
    assert main(["--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "data")]) == 2
    assert "cannot read auth_tokens_file" in capsys.readouterr().err
