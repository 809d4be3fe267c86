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

import ipaddress
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from engine.config import TopicConfig
from engine.errors import InvalidAclError, InvalidConfigError
from engine.security.acls import validate_principal

__all__ = ["ConfigError", "ServerConfig", "is_loopback", "load_config", "parse_listen"]

_MIB = 1024 * 1024
_GIB = 1024 * _MIB
_ENV_PREFIX = "MOLDAU_"
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_ANONYMOUS_CHOICES = ("auto", "true", "false")


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
        log_format: ``text`` (one readable line per event) or ``json`` (one JSON object per
            line, for log shippers); both carry the request id of the call that logged.
        max_connections: Client connections with calls in progress at once; a call from one
            more connection is refused with RESOURCE_EXHAUSTED (0 = no limit).
        max_in_flight_per_connection: Concurrent calls (HTTP/2 streams) one connection may
            open; the client queues the rest (``grpc.max_concurrent_streams``).
        max_topics: Topics the broker holds (internal topics not counted).
        max_partitions_per_topic: Partitions one topic may have.
        max_partitions: Partitions over all topics.
        tcp_listen: ``HOST:PORT`` of the TCP port (the same RPCs over plain frames, for
            latency; docs/tcp-port.md); empty (the default) opens none. Port 0 picks a free
            port, printed in the "serving on" line.
        metrics_listen: ``HOST:PORT`` of the Prometheus ``/metrics`` endpoint; empty (the
            default) serves none.
        disk_free_alert_bytes: Free space on the data directory's file system below which
            ``moldau_disk_low`` is 1 and a WARNING is logged (0: no byte threshold).
        disk_free_alert_percent: The same as a percentage of the file system's size; the
            larger of the two thresholds applies (0: no percentage threshold; both 0: off).
        topic_defaults: Config overrides applied to every topic unless the topic sets its own.
        tls_cert_file: PEM server certificate (chain); with ``tls_key_file`` the port speaks TLS.
        tls_key_file: PEM private key of ``tls_cert_file``.
        tls_client_ca_file: PEM CA bundle; when set, clients must present a certificate it
            signed (mTLS), its common name becomes the principal, and auth is on.
        auth_tokens_file: TOML file with a ``[tokens]`` table of ``name = "sha256:<hex>"``;
            when set, bearer tokens authenticate callers and auth is on (docs/security.md).
        allow_anonymous: ``auto`` (anonymous callers allowed only on a loopback listen),
            ``true`` or ``false``. With auth off, ``true`` is also what permits a non-loopback
            listen.
        super_users: Comma-separated principals (``User:admin,User:ops``) that bypass ACLs.
        quota_produce_bytes_per_sec: Produce request bytes per second per principal; 0 = no
            limit.
        quota_fetch_bytes_per_sec: Fetch response bytes per second per principal; 0 = no limit.
        quota_requests_per_sec: Calls (and stream messages) per second per principal; 0 = no
            limit.
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
    log_format: str = "text"
    max_connections: int = 1_000
    max_in_flight_per_connection: int = 1_000
    max_topics: int = 10_000
    max_partitions_per_topic: int = 10_000
    max_partitions: int = 100_000
    tcp_listen: str = ""
    metrics_listen: str = ""
    disk_free_alert_bytes: int = 1 * _GIB
    disk_free_alert_percent: float = 5.0
    topic_defaults: Mapping[str, str] = field(default_factory=dict)
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    auth_tokens_file: str = ""
    allow_anonymous: str = "auto"
    super_users: str = ""
    quota_produce_bytes_per_sec: int = 0
    quota_fetch_bytes_per_sec: int = 0
    quota_requests_per_sec: int = 0

    def __post_init__(self) -> None:
        parse_listen(self.listen)
        for name in ("tcp_listen", "metrics_listen"):
            if getattr(self, name):
                try:
                    parse_listen(getattr(self, name))
                except ConfigError as exc:
                    raise ConfigError(f"{name}: {exc}") from None
        if not self.data_dir:
            raise ConfigError("data_dir must not be empty")
        for name in ("max_request_bytes", "max_batch_bytes", "max_fetch_bytes",
                     "default_fetch_bytes", "max_fetch_records", "produce_stream_window",
                     "worker_threads", "max_in_flight_per_connection", "max_topics",
                     "max_partitions_per_topic", "max_partitions"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_wait_ms", "shutdown_grace_ms", "max_connections",
                     "disk_free_alert_bytes"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)}")
        if not 0 <= self.disk_free_alert_percent <= 100:  # NaN fails this too
            raise ConfigError("disk_free_alert_percent must be from 0 to 100, got "
                              f"{self.disk_free_alert_percent}")
        if self.log_level.upper() not in _LOG_LEVELS:
            raise ConfigError(
                f"log_level must be one of {', '.join(_LOG_LEVELS)}, got {self.log_level!r}"
            )
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"log_format must be text or json, got {self.log_format!r}")
        if self.max_partitions_per_topic > self.max_partitions:
            raise ConfigError(
                f"max_partitions_per_topic ({self.max_partitions_per_topic}) must not exceed "
                f"max_partitions ({self.max_partitions})"
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

        self._check_security()

    def _check_security(self) -> None:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigError(
                "tls_cert_file and tls_key_file go together: set both to serve TLS, or neither"
            )
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ConfigError(
                "tls_client_ca_file (mTLS) needs TLS: also set tls_cert_file and tls_key_file"
            )
        if self.allow_anonymous not in _ANONYMOUS_CHOICES:
            raise ConfigError(
                f"allow_anonymous must be auto, true or false, got {self.allow_anonymous!r}"
            )
        for principal in self.super_user_set:
            try:
                validate_principal(principal)
            except InvalidAclError as exc:
                raise ConfigError(f"super_users: {exc}") from None
        for name in ("quota_produce_bytes_per_sec", "quota_fetch_bytes_per_sec",
                     "quota_requests_per_sec"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative (0 = no limit)")

    @property
    def auth_enabled(self) -> bool:
        """Auth is on when callers can prove who they are: a tokens file or a client CA."""
        return bool(self.auth_tokens_file or self.tls_client_ca_file)

    @property
    def tls_enabled(self) -> bool:
        return bool(self.tls_cert_file)

    @property
    def quotas_enabled(self) -> bool:
        return bool(self.quota_produce_bytes_per_sec or self.quota_fetch_bytes_per_sec
                    or self.quota_requests_per_sec)

    @property
    def listens_on_loopback(self) -> bool:
        """Whether every port serving calls (gRPC, and the TCP port when on) is loopback."""
        tcp_loopback = not self.tcp_listen or is_loopback(parse_listen(self.tcp_listen)[0])
        return is_loopback(self.host) and tcp_loopback

    @property
    def anonymous_allowed(self) -> bool:
        """Whether callers without credentials get in (as ``User:ANONYMOUS``)."""
        if self.allow_anonymous == "auto":
            return self.listens_on_loopback
        return self.allow_anonymous == "true"

    @property
    def super_user_set(self) -> frozenset[str]:
        return frozenset(p.strip() for p in self.super_users.split(",") if p.strip())

    def exposure_problem(self) -> str | None:
        """Why the server must not start as configured, or None.

        A server reachable from other hosts with auth off would let anyone read, write and
        delete everything; that needs ``allow_anonymous = "true"`` said explicitly.
        """
        if self.auth_enabled or self.listens_on_loopback or self.allow_anonymous == "true":
            return None
        return (
            f"refusing to listen on {self.exposed_listen} with authentication off: anyone who "
            "can reach it could read, write and delete everything. Set auth_tokens_file (bearer "
            "tokens) or tls_client_ca_file (mTLS) to turn authentication on, or set "
            'allow_anonymous = "true" (MOLDAU_ALLOW_ANONYMOUS=true) to accept that, or listen on '
            "127.0.0.1"
        )

    @property
    def exposed_listen(self) -> str:
        """The listen address reachable from other hosts (gRPC first)."""
        if not is_loopback(self.host) or not self.tcp_listen:
            return self.listen
        return self.tcp_listen

    @property
    def host(self) -> str:
        return parse_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return parse_listen(self.listen)[1]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an IP address or ``localhost``) only accepts local connections."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


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
    if name == "allow_anonymous":
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value).strip().lower()
    if name == "super_users" and isinstance(value, list):
        return ",".join(str(item) for item in value)
    default = _FIELDS[name].default
    if isinstance(default, float):
        if isinstance(value, bool):
            raise ConfigError(f"{source}: {name} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: {name} must be a number, got {value!r}") from None
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
