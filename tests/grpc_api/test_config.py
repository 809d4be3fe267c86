"""ServerConfig loading: defaults < TOML file < MOLDAU_* environment < flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from grpc_api.config import ConfigError, ServerConfig, load_config, parse_listen


def test_defaults_listen_on_loopback_with_a_local_data_dir() -> None:
    config = load_config(environ={})
    assert config == ServerConfig()
    assert config.listen == "127.0.0.1:7654"
    assert config.data_dir == "./moldau-data"
    assert (config.host, config.port) == ("127.0.0.1", 7654)


def test_precedence_file_then_environment_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "moldau.toml"
    path.write_text(
        'listen = "0.0.0.0:9000"\ndata_dir = "/from/file"\nmax_fetch_records = 5\n'
        '[topic_defaults]\n"retention.ms" = 1000\n'
    )
    env = {"MOLDAU_DATA_DIR": "/from/env", "MOLDAU_MAX_FETCH_RECORDS": "7"}
    config = load_config(path, environ=env, overrides={"max_fetch_records": 9, "listen": None})
    assert config.listen == "0.0.0.0:9000"  # file (the None override is ignored)
    assert config.data_dir == "/from/env"  # environment over file
    assert config.max_fetch_records == 9  # flag over environment
    assert config.topic_defaults == {"retention.ms": "1000"}


def test_config_file_named_by_environment(tmp_path: Path) -> None:
    path = tmp_path / "moldau.toml"
    path.write_text('data_dir = "/x"\n')
    assert load_config(environ={"MOLDAU_CONFIG": str(path)}).data_dir == "/x"


def test_unknown_moldau_variables_are_ignored() -> None:
    assert load_config(environ={"MOLDAU_BOOTSTRAP": "x:1"}) == ServerConfig()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('listne = "x:1"\n', "unknown keys listne"),
        ("max_batch_bytes = 'big'\n", "max_batch_bytes must be an integer"),
        ("max_batch_bytes = true\n", "max_batch_bytes must be an integer"),
        ("data_dir = 3\n", "data_dir must be a string"),
        ("max_fetch_records = 0\n", "max_fetch_records must be at least 1"),
        ("max_batch_bytes = 99999999999\n", "must not exceed max_request_bytes"),
        ("default_fetch_bytes = 99999999999\n", "must not exceed max_fetch_bytes"),
        ('log_level = "LOUD"\n', "log_level must be one of"),
        ("topic_defaults = 3\n", "topic_defaults must be a table"),
        ('[topic_defaults]\n"retention.mss" = "1"\n', "topic_defaults: .*retention.mss"),
        ("= nonsense\n", "not valid TOML"),
    ],
)
def test_bad_file_values_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path, environ={})


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.toml", environ={})


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="MOLDAU_MAX_WAIT_MS"):
        load_config(environ={"MOLDAU_MAX_WAIT_MS": "soon"})


def test_unknown_override_is_rejected() -> None:
    with pytest.raises(ConfigError, match="unknown setting"):
        load_config(environ={}, overrides={"colour": "blue"})


@pytest.mark.parametrize(
    ("listen", "expected"),
    [("127.0.0.1:7654", ("127.0.0.1", 7654)), ("[::1]:0", ("::1", 0)), ("h:1", ("h", 1))],
)
def test_parse_listen(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["7654", ":7654", "host:", "host:port", "host:70000"])
def test_parse_listen_rejects(listen: str) -> None:
    with pytest.raises(ConfigError, match="listen"):
        parse_listen(listen)


def test_metrics_listen_is_off_by_default_and_checked() -> None:
    assert load_config(environ={}).metrics_listen == ""
    config = load_config(environ={"MOLDAU_METRICS_LISTEN": "127.0.0.1:9654"})
    assert config.metrics_listen == "127.0.0.1:9654"
    with pytest.raises(ConfigError, match="metrics_listen"):
        load_config(overrides={"metrics_listen": "nonsense"})


def test_security_settings_from_file_and_env(tmp_path: Path) -> None:
    path = tmp_path / "moldau.toml"
    path.write_text(
        'tls_cert_file = "s.pem"\ntls_key_file = "s.key"\nallow_anonymous = false\n'
        'super_users = ["User:admin", "User:ops"]\nquota_produce_bytes_per_sec = 1048576\n'
    )
    config = load_config(path, environ={"MOLDAU_AUTH_TOKENS_FILE": "t.toml",
                                        "MOLDAU_QUOTA_REQUESTS_PER_SEC": "50"})
    assert config.tls_enabled
    assert config.auth_enabled
    assert config.allow_anonymous == "false"
    assert not config.anonymous_allowed
    assert config.super_user_set == {"User:admin", "User:ops"}
    assert config.quota_produce_bytes_per_sec == 1048576
    assert config.quota_requests_per_sec == 50
    assert config.quotas_enabled


def test_auth_is_off_and_anonymous_allowed_on_loopback_by_default() -> None:
    config = load_config(environ={})
    assert not config.auth_enabled
    assert config.anonymous_allowed
    assert config.exposure_problem() is None
    exposed = load_config(environ={"MOLDAU_LISTEN": "0.0.0.0:7654"})
    assert "refusing to listen on 0.0.0.0:7654" in (exposed.exposure_problem() or "")
    assert load_config(environ={"MOLDAU_LISTEN": "0.0.0.0:7654",
                                "MOLDAU_ALLOW_ANONYMOUS": "TRUE"}).exposure_problem() is None


def test_tcp_listen_is_checked_and_counts_for_exposure() -> None:
    assert ServerConfig(tcp_listen="127.0.0.1:0").listens_on_loopback
    with pytest.raises(ConfigError, match="tcp_listen"):
        ServerConfig(tcp_listen="nowhere")
    exposed = ServerConfig(tcp_listen="0.0.0.0:7655")
    assert not exposed.listens_on_loopback
    assert not exposed.anonymous_allowed  # auto: only when both ports are on loopback
    problem = exposed.exposure_problem()
    assert problem is not None
    assert "0.0.0.0:7655" in problem
    assert ServerConfig(tcp_listen="0.0.0.0:7655", allow_anonymous="true").exposure_problem() \
        is None
    assert load_config(environ={"MOLDAU_TCP_LISTEN": "127.0.0.1:9"}).tcp_listen == "127.0.0.1:9"
