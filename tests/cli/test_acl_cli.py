"""``moldau acl``, ``moldau whoami``, ``moldau token`` and the credential flags, against a
broker with token authentication on."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from grpc_api.auth import hash_token as server_hash_token
from moldau.cli import EXIT_OK, EXIT_SERVER, EXIT_USAGE, main
from moldau.testing import RunningBroker, broker
from tests.cli.conftest import Result, Run

ADMIN, ALICE = "admin-secret", "alice-secret"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBroker]:
    root = tmp_path_factory.mktemp("acl-cli")
    tokens = root / "tokens.toml"
    tokens.write_text(f'[tokens]\nadmin = "{server_hash_token(ADMIN)}"\n'
                      f'alice = "{server_hash_token(ALICE)}"\n')
    env = {"MOLDAU_AUTH_TOKENS_FILE": str(tokens), "MOLDAU_SUPER_USERS": "User:admin",
           "MOLDAU_ALLOW_ANONYMOUS": "false"}
    with broker(data_dir=root / "data", env=env) as running:
        yield running


@pytest.fixture
def run(secured: RunningBroker, monkeypatch: pytest.MonkeyPatch) -> Run:
    monkeypatch.setenv("MOLDAU_SERVER", secured.address)
    monkeypatch.delenv("MOLDAU_TOKEN", raising=False)

    def run(*argv: str, stdin: str = "") -> Result:
        out, err = io.StringIO(), io.StringIO()
        code = main(list(argv), stdin=io.StringIO(stdin), stdout=out, stderr=err)
        return Result(code, out.getvalue(), err.getvalue())

    return run


def test_token_hash_matches_the_server_and_reads_stdin(run: Run) -> None:
    result = run("token", "hash", "s3cret")
    assert result.out.strip() == server_hash_token("s3cret")
    assert run("token", "hash", stdin="s3cret\n").out.strip() == \
        server_hash_token("s3cret")
    assert run("token", "hash", stdin="").code == EXIT_USAGE


def test_token_new_prints_a_token_and_its_line(run: Run) -> None:
    result = run("token", "new", "--name", "bob")
    token = result.out.splitlines()[0].removeprefix("token: ")
    assert f'bob = "{server_hash_token(token)}"' in result.out
    assert len(token) >= 32


def test_whoami_with_flag_env_and_nothing(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    result = run("whoami", "--token", ADMIN)
    assert result.code == EXIT_OK, result.err
    assert result.out.startswith("User:admin (by token, super user")
    monkeypatch.setenv("MOLDAU_TOKEN", ALICE)
    result = run("whoami", "--output", "json")
    assert json.loads(result.out)["principal"] == "User:alice"
    monkeypatch.delenv("MOLDAU_TOKEN")
    result = run("whoami")
    assert result.code == EXIT_SERVER
    assert "UNAUTHENTICATED" in result.err
    result = run("whoami", "--token", "wrong")
    assert "the token is not valid" in result.err


def test_acl_add_list_remove_and_enforcement(run: Run) -> None:
    assert run("topics", "create", "orders.eu", "--token", ADMIN).code == EXIT_OK
    denied = run("topics", "describe", "orders.eu", "--token", ALICE)
    assert denied.code == EXIT_SERVER
    assert "PERMISSION_DENIED" in denied.err
    assert "User:alice may not describe topic 'orders.eu'" in denied.err
    added = run("acl", "add", "--allow", "User:alice", "--operation", "write",
              "--operation", "read", "--topic", "orders.", "--prefixed", "--token", ADMIN)
    assert added.code == EXIT_OK, added.err
    assert added.out.count("added: allow User:alice") == 2
    again = run("acl", "add", "--allow", "User:alice", "--operation", "read",
              "--topic", "orders.", "--prefixed", "--token", ADMIN)
    assert "already present" in again.out
    assert run("topics", "describe", "orders.eu", "--token", ALICE).code == EXIT_OK
    produced = run("produce", "orders.eu", "--token", ALICE, stdin="hello\n")
    assert produced.code == EXIT_OK, produced.err
    listing = run("acl", "list", "--principal", "User:alice", "--output", "json",
                "--token", ADMIN)
    rows = json.loads(listing.out)
    assert {(a["operation"], a["pattern_type"], a["resource_name"]) for a in rows} == {
        ("read", "prefixed", "orders."), ("write", "prefixed", "orders.")}
    table = run("acl", "list", "--token", ADMIN)
    assert "PRINCIPAL" in table.out
    assert "User:alice" in table.out
    # alice may not administer ACLs
    assert run("acl", "list", "--token", ALICE).code == EXIT_SERVER
    removed = run("acl", "remove", "--principal", "User:alice", "--operation", "write",
                "--token", ADMIN)
    assert removed.out.startswith("removed 1 ACL(s)")
    refused = run("produce", "orders.eu", "--token", ALICE, stdin="again\n")
    assert refused.code == EXIT_SERVER


def test_acl_usage_errors(run: Run) -> None:
    no_filter = run("acl", "remove", "--token", ADMIN)
    assert no_filter.code == EXIT_USAGE
    assert "--all" in no_filter.err
    no_resource = run("acl", "add", "--allow", "User:a", "--operation", "read")
    assert no_resource.code == EXIT_USAGE
    bad_principal = run("acl", "add", "--allow", "alice", "--operation", "read",
                      "--topic", "t", "--token", ADMIN)
    assert bad_principal.code == EXIT_SERVER
    assert "User:<name>" in bad_principal.err


def test_cluster_acl(run: Run, tmp_path: Path) -> None:
    added = run("acl", "add", "--allow", "User:alice", "--operation", "describe",
              "--cluster", "--token", ADMIN)
    assert added.code == EXIT_OK, added.err
    assert run("acl", "list", "--token", ALICE).code == EXIT_OK
    assert run("acl", "remove", "--principal", "User:alice", "--cluster",
             "--token", ADMIN).code == EXIT_OK
