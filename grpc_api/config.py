"""Server configuration: defaults, then a TOML file, then ``MOLDAU_*`` variables, then flags.

A TOML file uses the field names of :class:`ServerConfig` at the top level, plus an optional
``[topic_defaults]`` table of topic config overrides applied to every new topic::

    listen = "0.0.0.0:7654"
    data_dir = "/var/lib/moldau"
    max_batch_bytes = 8388608

    [topic_defaults]
    "retention.ms" = "604800000"

Every field can also be set as ``MOLDAU_<FIELD>`` (``MOLDAU_LISTEN``, ``MOLDAU_DATA_DIR``,
``MOLDAU_MAX_FETCH_BYTES`` ...); ``MOLDAU_CONFIG`` names the TOML file when ``--config`` is not
given. Unknown keys in the file are errors (a typo must not silently fall back to a default);
unknown ``MOLDAU_*`` variables are ignored because clients use that prefix too.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from engine.config import TopicConfig
from engine.errors import InvalidConfigError

__all__ = ["ConfigError", "ServerConfig", "load_config", "parse_listen"]

_MIB = 1024 * 1024
_ENV_PREFIX = "MOLDAU_"
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ConfigError(Exception):
    """A configuration value is missing, unknown or out of range; the message names it."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything the server needs to start; immutable once loaded.

    Attributes:
        listen: ``HOST:PORT`` to bind; port 0 picks a free port (printed when serving).
        data_dir: The broker's data directory (created if missing).
        max_request_bytes: Largest gRPC message accepted (``grpc.max_receive_message_length``).
        max_batch_bytes: Largest record batch accepted by Produce, pre-encoded or encoded here.
        max_fetch_bytes: Largest ``max_bytes`` a Fetch may ask for and largest Subscribe push.
        default_fetch_bytes: ``max_bytes`` of a Fetch that leaves it 0.
        max_fetch_records: Most records one decoded Fetch returns.
        max_wait_ms: Longest long-poll; longer waits are shortened to this.
        produce_stream_window: Requests in flight per ProduceStream before the server stops
            reading (back-pressure instead of an unbounded queue).
        worker_threads: Threads running blocking engine calls (appends wait for fsync there).
        shutdown_grace_ms: How long in-flight calls may take to finish on SIGTERM.
        log_level: Python logging level name.
        metrics_listen: ``HOST:PORT`` of the Prometheus ``/metrics`` endpoint; empty (the
            default) serves none.
        topic_defaults: Config overrides applied to every topic unless the topic sets its own.
    """

    listen: str = "127.0.0.1:7654"
    data_dir: str = "./moldau-data"
    max_request_bytes: int = 16 * _MIB
    max_batch_bytes: int = 8 * _MIB
    max_fetch_bytes: int = 16 * _MIB
    default_fetch_bytes: int = 1 * _MIB
    max_fetch_records: int = 10_000
    max_wait_ms: int = 30_000
    produce_stream_window: int = 64
    worker_threads: int = 16
    shutdown_grace_ms: int = 10_000
    log_level: str = "INFO"
    metrics_listen: str = ""
    topic_defaults: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        parse_listen(self.listen)
        if self.metrics_listen:
            try:
                parse_listen(self.metrics_listen)
            except ConfigError as exc:
                raise ConfigError(f"metrics_listen: {exc}") from None
        if not self.data_dir:
            raise ConfigError("data_dir must not be empty")
        for name in ("max_request_bytes", "max_batch_bytes", "max_fetch_bytes",
                     "default_fetch_bytes", "max_fetch_records", "produce_stream_window",
                     "worker_threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_wait_ms", "shutdown_grace_ms"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.log_level.upper() not in _LOG_LEVELS:
            raise ConfigError(
                f"log_level must be one of {', '.join(_LOG_LEVELS)}, got {self.log_level!r}"
            )
        if self.default_fetch_bytes > self.max_fetch_bytes:
            raise ConfigError(
                f"default_fetch_bytes ({self.default_fetch_bytes}) must not exceed "
                f"max_fetch_bytes ({self.max_fetch_bytes})"
            )
        try:
            TopicConfig.from_dict(self.topic_defaults)
        except InvalidConfigError as exc:
            raise ConfigError(f"topic_defaults: {exc}") from exc
        if self.max_batch_bytes > self.max_request_bytes:
            raise ConfigError(
                f"max_batch_bytes ({self.max_batch_bytes}) must not exceed max_request_bytes "
                f"({self.max_request_bytes}): such a batch could never arrive"
            )

    @property
    def host(self) -> str:
        return parse_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return parse_listen(self.listen)[1]


def parse_listen(listen: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:7654`` for IPv6) and check the port."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ConfigError(f"listen must be HOST:PORT (e.g. 127.0.0.1:7654), got {listen!r}")
    port = int(port_text)
    if port > 65535:
        raise ConfigError(f"listen port must be 0..65535, got {port}")
    return host.strip("[]"), port


_FIELDS = {f.name: f for f in fields(ServerConfig)}


def _coerce(name: str, value: Any, source: str) -> Any:
    """Convert a raw file/env value to the field's type, naming the source on failure."""
    if name == "topic_defaults":
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: topic_defaults must be a table of key = \"value\"")
        return {str(k): str(v) for k, v in value.items()}
    default = _FIELDS[name].default
    if isinstance(default, int):
        if isinstance(value, bool):
            raise ConfigError(f"{source}: {name} must be an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: {name} must be an integer, got {value!r}") from None
    if not isinstance(value, str):
        raise ConfigError(f"{source}: {name} must be a string, got {value!r}")
    return value


def _from_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    unknown = sorted(set(raw) - set(_FIELDS))
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown keys {', '.join(unknown)}; known keys are "
            f"{', '.join(sorted(_FIELDS))}"
        )
    return {k: _coerce(k, v, str(path)) for k, v in raw.items()}


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in _FIELDS:
        if name == "topic_defaults":
            continue
        key = _ENV_PREFIX + name.upper()
        if key in environ:
            values[name] = _coerce(name, environ[key], key)
    return values


def load_config(
    config_file: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ServerConfig:
    """Merge the sources, highest last: defaults, file, environment, explicit overrides.

    Args:
        config_file: A TOML file; when None, ``MOLDAU_CONFIG`` from ``environ`` if set.
        environ: The environment to read (``os.environ`` by the caller; injectable for tests).
        overrides: Values from command-line flags; None values are ignored.

    Raises:
        ConfigError: A value is unknown, of the wrong type or out of range.
    """
    environ = environ or {}
    values: dict[str, Any] = {}
    path = config_file if config_file is not None else environ.get(_ENV_PREFIX + "CONFIG")
    if path:
        values.update(_from_file(Path(path)))
    values.update(_from_env(environ))
    for name, value in (overrides or {}).items():
        if name not in _FIELDS:
            raise ConfigError(f"unknown setting {name!r}")
        if value is not None:
            values[name] = _coerce(name, value, "command line")
    return ServerConfig(**values)
