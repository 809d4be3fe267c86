"""Aggregate and CommandBus over a real server; snapshot + tail equals a full replay."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moldau import EventStore, WrongExpectedVersionError
from moldau.aggregate import Aggregate, CommandBus, applies

_names = itertools.count()


class Account(Aggregate):
    category = "account"

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.balance = 0
        self.history: list[int] = []
        self.frozen = False

    def deposit(self, amount: int) -> None:
        if self.frozen:
            raise ValueError("account frozen")
        self.record("Deposited", {"amount": amount})

    def withdraw(self, amount: int) -> None:
        if amount > self.balance:
            raise ValueError("insufficient funds")
        self.record("Withdrawn", {"amount": amount})

    @applies("Deposited")
    def _deposited(self, data: dict[str, Any]) -> None:
        self.balance += data["amount"]
        self.history.append(data["amount"])

    @applies("Withdrawn")
    def _withdrawn(self, data: dict[str, Any]) -> None:
        self.balance -= data["amount"]
        self.history.append(-data["amount"])

    @applies("Frozen")
    def _frozen(self, data: dict[str, Any]) -> None:
        self.frozen = True


@pytest.fixture(scope="module")
def store(address: str) -> Iterator[EventStore]:
    with EventStore(address, topic=f"bank-{next(_names)}") as client:
        client.create_store_topic(partitions=2, configs={"durability": "async"})
        yield client


def _state(account: Account) -> tuple[int, list[int], bool, int]:
    return account.balance, account.history, account.frozen, account.version


operations = st.lists(st.tuples(st.sampled_from(["deposit", "withdraw", "freeze"]),
                                st.integers(1, 50)), min_size=1, max_size=25)


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(operations, min_size=1, max_size=5), every=st.integers(1, 6))
def test_snapshot_plus_tail_equals_full_replay(store: EventStore, batches: list[Any],
                                               every: int) -> None:
    account_id = f"p{next(_names)}"
    for batch in batches:
        account = Account.load(store, account_id)
        for operation, amount in batch:
            try:
                if operation == "deposit":
                    account.deposit(amount)
                elif operation == "withdraw":
                    account.withdraw(amount)
                else:
                    account.record("Frozen", {})
            except ValueError:
                continue
        account.save(store, snapshot_every=every)
    from_snapshot = Account.load(store, account_id)
    replayed = Account.load(store, account_id, use_snapshot=False)
    assert _state(from_snapshot) == _state(replayed)
    recorded = len(store.read_stream(replayed.stream)) if replayed.version >= 0 else 0
    assert from_snapshot.version == recorded - 1
    snapshot = store.load_snapshot(replayed.stream)
    if replayed.version + 1 >= every:
        assert snapshot is not None
        assert snapshot.version <= replayed.version


def test_save_uses_the_loaded_version(store: EventStore) -> None:
    first = Account.load(store, "race")
    second = Account.load(store, "race")
    first.deposit(10)
    first.save(store)
    second.deposit(5)
    with pytest.raises(WrongExpectedVersionError) as conflict:
        second.save(store)
    assert conflict.value.current_version == 0
    assert Account.load(store, "race").balance == 10
    assert first.pending_events == []
    assert first.version == 0


@dataclass(frozen=True)
class Deposit:
    account: str
    amount: int


def test_command_bus_retries_conflicts(address: str, store: EventStore) -> None:
    bus = CommandBus(store, retries=20)

    @bus.handler(Deposit, Account, id_of=lambda command: command.account)
    def deposit(account: Account, command: Deposit) -> None:
        account.deposit(command.amount)

    def client(n: int) -> None:
        with EventStore(address, topic=store.topic) as own:
            own_bus = CommandBus(own, retries=50)
            own_bus.register(Deposit, Account, deposit, id_of=lambda c: c.account)
            for _ in range(10):
                own_bus.dispatch(Deposit("shared", n))

    threads = [threading.Thread(target=client, args=(n,)) for n in (1, 2, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    bus.dispatch(Deposit("shared", 100))
    final = Account.load(store, "shared")
    assert final.balance == 10 * (1 + 2 + 3) + 100
    assert final.version == 30
    with pytest.raises(KeyError):
        bus.dispatch("not a command")
