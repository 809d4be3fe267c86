"""Authorizer rules: deny overrides, literal vs prefix, wildcards, implied describe, the cache."""

from __future__ import annotations

import pytest

from engine.errors import InvalidAclError
from engine.security import (
    ANONYMOUS,
    AclBinding,
    AclFilter,
    Authorizer,
    InMemoryAcls,
    Operation,
    ResourceType,
)
from engine.security.acls import decode_binding, encode_binding

TOPIC, GROUP = ResourceType.TOPIC, ResourceType.GROUP
READ, WRITE, DESCRIBE = Operation.READ, Operation.WRITE, Operation.DESCRIBE


def acl(principal: str, name: str, operation: str, *, pattern: str = "literal",
        permission: str = "allow", resource: str = "topic") -> AclBinding:
    return AclBinding.of(principal, resource, pattern, name, operation, permission)


def make(*bindings: AclBinding, super_users: tuple[str, ...] = ()) -> tuple[Authorizer,
                                                                            InMemoryAcls]:
    source = InMemoryAcls(bindings)
    return Authorizer(source, super_users), source


def test_deny_by_default() -> None:
    authorizer, _ = make()
    assert not authorizer.authorize("User:alice", TOPIC, "orders", READ)


def test_literal_does_not_match_look_alikes() -> None:
    authorizer, _ = make(acl("User:alice", "orders", "read"))
    assert authorizer.authorize("User:alice", TOPIC, "orders", READ)
    assert not authorizer.authorize("User:alice", TOPIC, "orders2", READ)
    assert not authorizer.authorize("User:alice", TOPIC, "order", READ)
    assert not authorizer.authorize("User:alice", TOPIC, "orders", WRITE)
    assert not authorizer.authorize("User:alice", GROUP, "orders", READ)  # another type


def test_prefixed_matches_by_startswith_only() -> None:
    authorizer, _ = make(acl("User:p", "orders.", "write", pattern="prefixed"))
    assert authorizer.authorize("User:p", TOPIC, "orders.eu", WRITE)
    assert authorizer.authorize("User:p", TOPIC, "orders.", WRITE)
    assert not authorizer.authorize("User:p", TOPIC, "orders", WRITE)
    assert not authorizer.authorize("User:p", TOPIC, "orders2", WRITE)
    assert not authorizer.authorize("User:p", TOPIC, "xorders.eu", WRITE)


def test_literal_star_matches_every_name() -> None:
    authorizer, _ = make(acl("User:a", "*", "read"))
    assert authorizer.authorize("User:a", TOPIC, "anything", READ)
    # a prefixed "*" is only a prefix: it matches names starting with "*"
    authorizer, _ = make(acl("User:a", "*", "read", pattern="prefixed"))
    assert not authorizer.authorize("User:a", TOPIC, "anything", READ)


def test_deny_overrides_allow() -> None:
    authorizer, _ = make(
        acl("User:a", "orders", "all", pattern="prefixed"),
        acl("User:a", "orders.secret", "read", permission="deny"),
    )
    assert authorizer.authorize("User:a", TOPIC, "orders.public", READ)
    assert not authorizer.authorize("User:a", TOPIC, "orders.secret", READ)
    assert authorizer.authorize("User:a", TOPIC, "orders.secret", WRITE)  # deny is per op
    # a DENY of read does not deny describe; a DENY of all denies everything
    assert authorizer.authorize("User:a", TOPIC, "orders.secret", DESCRIBE)
    authorizer, _ = make(acl("User:a", "*", "read"),
                         acl("User:*", "x", "all", permission="deny"))
    assert not authorizer.authorize("User:a", TOPIC, "x", READ)
    assert authorizer.authorize("User:a", TOPIC, "y", READ)


@pytest.mark.parametrize("operation", ["read", "write", "delete", "alter", "all"])
def test_allow_implies_describe(operation: str) -> None:
    authorizer, _ = make(acl("User:a", "t", operation))
    assert authorizer.authorize("User:a", TOPIC, "t", DESCRIBE)


def test_create_does_not_imply_describe() -> None:
    authorizer, _ = make(acl("User:a", "t", "create"))
    assert not authorizer.authorize("User:a", TOPIC, "t", DESCRIBE)


def test_all_matches_every_operation() -> None:
    authorizer, _ = make(acl("User:a", "t", "all"))
    for operation in Operation:
        assert authorizer.authorize("User:a", TOPIC, "t", operation)


def test_wildcard_principal_matches_authenticated_not_anonymous() -> None:
    authorizer, _ = make(acl("User:*", "public", "read"))
    assert authorizer.authorize("User:bob", TOPIC, "public", READ)
    assert not authorizer.authorize(ANONYMOUS, TOPIC, "public", READ)
    authorizer, _ = make(acl(ANONYMOUS, "public", "read"))
    assert authorizer.authorize(ANONYMOUS, TOPIC, "public", READ)
    assert not authorizer.authorize("User:bob", TOPIC, "public", READ)


def test_super_users_bypass_acls() -> None:
    authorizer, _ = make(acl("User:root", "*", "all", permission="deny"),
                         super_users=("User:root",))
    assert authorizer.authorize("User:root", ResourceType.CLUSTER, "cluster", Operation.ALTER)


def test_cache_is_invalidated_on_every_change() -> None:
    authorizer, source = make()
    assert not authorizer.authorize("User:a", TOPIC, "t", READ)
    source.add([acl("User:a", "t", "read")])
    assert authorizer.authorize("User:a", TOPIC, "t", READ)
    source.add([acl("User:a", "t", "read", permission="deny")])
    assert not authorizer.authorize("User:a", TOPIC, "t", READ)
    source.remove(AclFilter(permission=AclBinding.of("User:a", "topic", "", "t", "read",
                                                     "deny").permission))
    assert authorizer.authorize("User:a", TOPIC, "t", READ)
    source.remove(AclFilter(principal="User:a"))
    assert not authorizer.authorize("User:a", TOPIC, "t", READ)


def test_cache_is_bounded() -> None:
    authorizer = Authorizer(InMemoryAcls([acl("User:a", "*", "read")]), max_cache_entries=10)
    for i in range(100):
        assert authorizer.authorize("User:a", TOPIC, f"t{i}", READ)
    assert len(authorizer._cache) <= 10


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (("alice", "topic", "literal", "t", "read", "allow"), "User:<name>"),
        (("User:", "topic", "literal", "t", "read", "allow"), "User:<name>"),
        (("User:a", "table", "literal", "t", "read", "allow"), "resource_type"),
        (("User:a", "topic", "glob", "t", "read", "allow"), "pattern_type"),
        (("User:a", "topic", "literal", "", "read", "allow"), "resource_name"),
        (("User:a", "topic", "literal", "t", "fly", "allow"), "operation"),
        (("User:a", "topic", "literal", "t", "read", "maybe"), "permission"),
        (("User:a", "cluster", "literal", "kafka", "alter", "allow"), "cluster"),
    ],
)
def test_invalid_bindings_name_the_field(fields: tuple[str, ...], message: str) -> None:
    with pytest.raises(InvalidAclError, match=message):
        AclBinding.of(*fields)


def test_key_encoding_round_trips_and_is_canonical() -> None:
    binding = acl("User:ü", "orders.", "write", pattern="prefixed")
    key = encode_binding(binding)
    assert decode_binding(key) == binding
    assert encode_binding(acl("User:ü", "orders.", "write", pattern="prefixed")) == key
    with pytest.raises(ValueError, match="trailing"):
        decode_binding(key + b"x")


def test_filters() -> None:
    a = acl("User:a", "t", "read")
    b = acl("User:b", "t", "write", permission="deny")
    assert AclFilter().matches(a)
    assert AclFilter.of(principal="User:a").matches(a)
    assert not AclFilter.of(principal="User:a").matches(b)
    assert AclFilter.of(permission="deny", resource_name="t").matches(b)
    assert AclFilter.exact(a).matches(a)
    assert not AclFilter.exact(a).matches(b)
