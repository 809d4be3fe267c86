"""The order's history, event-sourced: each step the services take is an event of the order's
stream (``order-<id>`` in the ``order-history`` topic).

The services run concurrently and may see a message twice (queues deliver at least once),
so every step goes through a :class:`moldau.aggregate.CommandBus`: it loads the order, lets
:class:`OrderHistory` decide, and appends with the loaded version as the expected version.
Two services writing the same order at once cannot both act on stale state (the loser is
reloaded and decides again), and a step already taken records nothing, so a redelivered
message leaves the history as it was.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from moldau import EventStore, TopicExistsError
from moldau.aggregate import Aggregate, CommandBus, applies

TOPIC = "order-history"


class OrderHistory(Aggregate):
    """One order as the saga sees it: placed, paid or not, stock held or not, how it ended."""

    category = "order"

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.status = "new"  # new, placed, shipped, cancelled
        self.payment = "pending"  # pending, paid, failed
        self.stock = "none"  # none, reserved, released

    def place(self, order: dict[str, Any]) -> None:
        if self.status == "new":
            self.record("OrderPlaced", {key: order[key] for key in
                                        ("sku", "quantity", "region", "shipping")})

    def payment_result(self, ok: bool, attempts: int, error: str) -> None:
        if self.payment == "pending":
            self.record("PaymentSucceeded" if ok else "PaymentFailed",
                        {"attempts": attempts, "error": error})

    def stock_reserved(self) -> None:
        if self.stock == "none":
            self.record("StockReserved", {})

    def stock_released(self) -> None:
        if self.stock == "reserved":
            self.record("StockReleased", {})

    def shipped(self, method: str) -> None:
        if self.status != "shipped":
            self.record("OrderShipped", {"method": method})

    def cancelled(self, reason: str) -> None:
        if self.status not in ("shipped", "cancelled"):
            self.record("OrderCancelled", {"reason": reason})

    @applies("OrderPlaced")
    def _placed(self, data: dict[str, Any]) -> None:
        self.status = "placed"

    @applies("PaymentSucceeded")
    def _paid(self, data: dict[str, Any]) -> None:
        self.payment = "paid"

    @applies("PaymentFailed")
    def _payment_failed(self, data: dict[str, Any]) -> None:
        self.payment = "failed"

    @applies("StockReserved")
    def _reserved(self, data: dict[str, Any]) -> None:
        self.stock = "reserved"

    @applies("StockReleased")
    def _released(self, data: dict[str, Any]) -> None:
        self.stock = "released"

    @applies("OrderShipped")
    def _shipped(self, data: dict[str, Any]) -> None:
        self.status = "shipped"

    @applies("OrderCancelled")
    def _cancelled(self, data: dict[str, Any]) -> None:
        self.status = "cancelled"


@dataclass(frozen=True)
class Place:
    order: dict[str, Any]


@dataclass(frozen=True)
class PaymentResult:
    order_id: str
    ok: bool
    attempts: int = 0
    error: str = ""


@dataclass(frozen=True)
class StockReserved:
    order_id: str


@dataclass(frozen=True)
class StockReleased:
    order_id: str


@dataclass(frozen=True)
class Shipped:
    order_id: str
    method: str


@dataclass(frozen=True)
class Cancelled:
    order_id: str
    reason: str


def open_history(server: str) -> tuple[EventStore, CommandBus]:
    """The event store client (close it when done) and the bus that writes order histories."""
    store = EventStore(server, topic=TOPIC)
    with contextlib.suppress(TopicExistsError):
        store.create_store_topic(TOPIC, partitions=2)
    bus = CommandBus(store, topic=TOPIC, retries=20)
    bus.register(Place, OrderHistory, lambda o, c: o.place(c.order),
                 id_of=lambda c: str(c.order["id"]))
    bus.register(PaymentResult, OrderHistory,
                 lambda o, c: o.payment_result(c.ok, c.attempts, c.error),
                 id_of=lambda c: str(c.order_id))
    bus.register(StockReserved, OrderHistory, lambda o, c: o.stock_reserved(),
                 id_of=lambda c: str(c.order_id))
    bus.register(StockReleased, OrderHistory, lambda o, c: o.stock_released(),
                 id_of=lambda c: str(c.order_id))
    bus.register(Shipped, OrderHistory, lambda o, c: o.shipped(c.method),
                 id_of=lambda c: str(c.order_id))
    bus.register(Cancelled, OrderHistory, lambda o, c: o.cancelled(c.reason),
                 id_of=lambda c: str(c.order_id))
    return store, bus
