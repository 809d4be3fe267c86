"""grpc_api.auth and grpc_api.quotas without a server: tokens, identity, rules, buckets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pool

from grpc_api import auth_rules
from grpc_api.auth import Security, TokenTable, _RefusalError, hash_token
from grpc_api.config import ConfigError, ServerConfig
from grpc_api.quotas import QuotaKind, Quotas, TokenBucket
from grpc_api.server import SERVICE_NAMES


def tokens_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tokens.toml"
    path.write_text(text)
    return path


def test_hash_token_format() -> None:
    assert hash_token("abc") == (
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def test_token_table_lookup(tmp_path: Path) -> None:
    table = TokenTable.load(tokens_file(
        tmp_path, f'[tokens]\nalice = "{hash_token("a")}"\nbob = "{hash_token("b")}"\n'))
    assert table.lookup("a") == "User:alice"
    assert table.lookup("b") == "User:bob"
    assert table.lookup("c") is None
    assert table.lookup("") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[tokens]\nalice = "plain-token"\n', "sha256:<64 hex digits>"),
        ('[tokens]\nalice = "sha256:abcd"\n', "sha256:<64 hex digits>"),
        ('alice = "x"\n', "one \\[tokens\\] table"),
        ("[tokens\n", "not valid TOML"),
    ],
)
def test_token_table_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TokenTable.load(tokens_file(tmp_path, text))


class _Context:
    def __init__(self, metadata: tuple[tuple[str, str], ...] = (),
                 auth: dict[str, list[bytes]] | None = None) -> None:
        self._metadata = metadata
        self._auth = auth or {}

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth


def _security(tmp_path: Path, **config: Any) -> Security:
    path = tokens_file(tmp_path, f'[tokens]\nalice = "{hash_token("a")}"\n')
    server_config = ServerConfig(auth_tokens_file=str(path), **config)
    return Security.from_config(server_config)


def test_identify_token_certificate_anonymous(tmp_path: Path) -> None:
    security = _security(tmp_path, allow_anonymous="true")
    assert security.identify(_Context((("authorization", "Bearer a"),))).principal == \
        "User:alice"
    assert security.identify(_Context((("authorization", "bearer a"),))).method == "token"
    cert = _Context(auth={"x509_common_name": [b"svc"]})
    assert security.identify(cert).principal == "User:svc"
    assert security.identify(_Context()).principal == "User:ANONYMOUS"
    with pytest.raises(_RefusalError, match="token is not valid"):
        security.identify(_Context((("authorization", "Bearer nope"),)))


def test_anonymous_refused_unless_allowed(tmp_path: Path) -> None:
    with pytest.raises(_RefusalError, match="requires authentication"):
        _security(tmp_path, allow_anonymous="false").identify(_Context())
    # auto: allowed on loopback only
    assert _security(tmp_path).identify(_Context()).principal == "User:ANONYMOUS"
    with pytest.raises(_RefusalError):
        _security(tmp_path, listen="10.1.2.3:7654").identify(_Context())


def test_interceptor_only_when_auth_or_quotas_are_on(tmp_path: Path) -> None:
    assert Security(ServerConfig()).interceptors() == []
    assert Security.from_config(ServerConfig()).interceptors() == []
    assert len(Security.from_config(ServerConfig(quota_requests_per_sec=5)).interceptors()) == 1
    assert len(_security(tmp_path).interceptors()) == 1


def test_every_moldau_method_has_a_rule() -> None:
    pool = descriptor_pool.Default()
    missing = [f"/{name}/{m.name}" for name in SERVICE_NAMES
               for m in pool.FindServiceByName(name).methods
               if auth_rules.rule_for(f"/{name}/{m.name}") is None]
    assert missing == []
    assert auth_rules.rule_for("/moldau.v1.NewService/Anything") is None
    assert auth_rules.rule_for("/grpc.health.v1.Health/Check") is not None


def test_config_security_validation() -> None:
    with pytest.raises(ConfigError, match="go together"):
        ServerConfig(tls_cert_file="c.pem")
    with pytest.raises(ConfigError, match="needs TLS"):
        ServerConfig(tls_client_ca_file="ca.pem")
    with pytest.raises(ConfigError, match="allow_anonymous"):
        ServerConfig(allow_anonymous="maybe")
    with pytest.raises(ConfigError, match="super_users"):
        ServerConfig(super_users="admin")
    with pytest.raises(ConfigError, match="quota_fetch_bytes_per_sec"):
        ServerConfig(quota_fetch_bytes_per_sec=-1)
    assert ServerConfig(listen="0.0.0.0:1").exposure_problem() is not None
    assert ServerConfig(listen="0.0.0.0:1", allow_anonymous="true").exposure_problem() is None
    assert ServerConfig(listen="0.0.0.0:1", auth_tokens_file="t").exposure_problem() is None
    assert ServerConfig(listen="[::1]:1").exposure_problem() is None
    assert ServerConfig(listen="localhost:1").exposure_problem() is None


# ---------------------------------------------------------------------------- quotas


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_one_request_into_debt_then_waits() -> None:
    bucket = TokenBucket(1000, now=0.0, burst_s=0.25)
    assert bucket.capacity == 250
    assert bucket.delay_s(0.0) == 0
    bucket.debit(1250, 0.0)  # larger than the bucket: passes once
    assert bucket.delay_s(0.0) == pytest.approx(1.0)
    assert bucket.delay_s(0.5) == pytest.approx(0.5)
    assert bucket.delay_s(1.0) == 0


def test_produce_quota_refuses_with_retry_delay_and_is_per_principal() -> None:
    clock = FakeClock()
    quotas = Quotas(produce_bytes_per_sec=1000, clock=clock)
    assert quotas.admit("User:a", produce_bytes=600) is None  # 250 banked: into debt
    throttle = quotas.admit("User:a", produce_bytes=10)
    assert throttle is not None
    assert throttle.kind is QuotaKind.PRODUCE
    assert throttle.retry_after_ms == 350
    assert "retry in 350 ms" in throttle.message("User:a")
    assert quotas.admit("User:b", produce_bytes=600) is None  # another principal
    clock.now += 0.351
    assert quotas.admit("User:a", produce_bytes=10) is None


def test_fetch_quota_is_debited_after_the_response() -> None:
    clock = FakeClock()
    quotas = Quotas(fetch_bytes_per_sec=1000, clock=clock)
    assert quotas.admit("User:a", fetch=True) is None
    quotas.debit_fetch("User:a", 2250)
    throttle = quotas.admit("User:a", fetch=True)
    assert throttle is not None
    assert throttle.delay_s == pytest.approx(2.0)
    assert quotas.admit("User:a") is None  # not a fetch call: no fetch quota


def test_request_quota_and_long_run_rate() -> None:
    clock = FakeClock()
    quotas = Quotas(requests_per_sec=10, clock=clock)
    admitted = 0
    for _ in range(1000):  # 10 s of tries every 10 ms
        if quotas.admit("User:a") is None:
            admitted += 1
        clock.now += 0.01
    assert 100 <= admitted <= 100 + 2.5 + 1
