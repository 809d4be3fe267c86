"""The __acls store: durability across reopen, tombstones, filters."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.broker import Broker
from engine.clock import ManualClock
from engine.errors import InvalidAclError
from engine.security import ACLS_TOPIC, AclBinding, AclFilter, AclStore, Authorizer
from engine.security.acls import Operation, ResourceType

T0 = 1_700_000_000_000


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(now_ms=T0)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def broker(data_dir: Path, clock: ManualClock) -> Iterator[Broker]:
    broker = Broker.open(data_dir, background=False, clock=clock)
    yield broker
    broker.close()


def binding(principal: str, name: str, operation: str = "read", **kw: str) -> AclBinding:
    return AclBinding.of(principal, kw.get("resource", "topic"), kw.get("pattern", "literal"),
                         name, operation, kw.get("permission", "allow"))


def test_topic_is_internal_compacted_and_one_partition(broker: Broker, clock: ManualClock
                                                        ) -> None:
    AclStore.open(broker, clock)
    info = broker.describe_topic(ACLS_TOPIC)
    assert info.partitions == 1
    assert info.config.compact


def test_add_list_remove(broker: Broker, clock: ManualClock) -> None:
    store = AclStore.open(broker, clock)
    a, b = binding("User:a", "t"), binding("User:b", "g", resource="group")
    assert store.add([a, b, a]) == sorted([a, b])
    assert store.add([a]) == []  # already present
    assert store.list() == sorted([a, b])
    assert store.list(AclFilter.of(resource_type="group")) == [b]
    assert store.created_ms(a) == T0
    assert store.remove(AclFilter.exact(a)) == [a]
    assert store.remove(AclFilter.exact(a)) == []
    assert store.list() == [b]


def test_invalid_binding_stores_nothing(broker: Broker, clock: ManualClock) -> None:
    store = AclStore.open(broker, clock)
    bad = AclBinding("nobody", ResourceType.TOPIC, binding("User:a", "t").pattern_type, "t",
                     Operation.READ, binding("User:a", "t").permission)
    with pytest.raises(InvalidAclError):
        store.add([binding("User:a", "t"), bad])
    assert store.list() == []
    assert broker.partition(ACLS_TOPIC, 0).high_watermark == 0


def test_persists_across_reopen(data_dir: Path, clock: ManualClock) -> None:
    kept = binding("User:a", "orders.", "write", pattern="prefixed")
    removed = binding("User:b", "x")
    with Broker.open(data_dir, background=False, clock=clock) as broker:
        store = AclStore.open(broker, clock)
        store.add([kept, removed])
        store.remove(AclFilter(principal="User:b"))
    with Broker.open(data_dir, background=False, clock=clock) as broker:
        store = AclStore.open(broker, clock)
        assert store.list() == [kept]
        assert store.created_ms(kept) == T0
        authorizer = Authorizer(store)
        assert authorizer.authorize("User:a", ResourceType.TOPIC, "orders.eu", Operation.WRITE)
        assert not authorizer.authorize("User:b", ResourceType.TOPIC, "x", Operation.READ)


def test_authorizer_sees_store_changes(broker: Broker, clock: ManualClock) -> None:
    store = AclStore.open(broker, clock)
    authorizer = Authorizer(store)
    assert not authorizer.authorize("User:a", ResourceType.TOPIC, "t", Operation.READ)
    store.add([binding("User:a", "t")])
    assert authorizer.authorize("User:a", ResourceType.TOPIC, "t", Operation.READ)
    store.remove(AclFilter(principal="User:a"))
    assert not authorizer.authorize("User:a", ResourceType.TOPIC, "t", Operation.READ)
