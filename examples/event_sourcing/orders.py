"""The write side: an event-sourced Order aggregate and the command bus that drives it.

``Order`` extends :class:`moldau.aggregate.Aggregate`: command methods check the state and
``record`` new events; ``@applies`` methods are the only place state changes, for new and
stored events alike, so loading the stream rebuilds exactly the state that was saved.

The bus (:class:`moldau.aggregate.CommandBus`) routes each command to its order: load the
stream, run the command, append the new events with the loaded version as the expected
version. If another writer appended in between, the store refuses the append
(``WrongExpectedVersionError``) and the bus runs the command again on the fresh state, so two
concurrent commands never both act on stale state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from moldau import EventStore
from moldau.aggregate import Aggregate, CommandBus, applies

TOPIC = "shop-orders"


class OrderRejectedError(Exception):
    """The command is not allowed in the order's current state."""


class Order(Aggregate):
    """One order; its stream is ``order-<id>``."""

    category = "order"

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.status = "new"
        self.customer = ""
        self.items: dict[str, int] = {}  # sku -> quantity
        self.total_cents = 0

    # ------------------------------------------------------------------ decisions

    def place(self, customer: str) -> None:
        if self.status != "new":
            raise OrderRejectedError(f"order {self.id} was already placed")
        self.record("OrderPlaced", {"customer": customer})

    def add_item(self, sku: str, quantity: int, price_cents: int) -> None:
        if self.status != "placed":
            raise OrderRejectedError(f"order {self.id} is {self.status}; items go on placed "
                                     "orders")
        if quantity <= 0:
            raise OrderRejectedError("quantity must be positive")
        self.record("ItemAdded", {"sku": sku, "quantity": quantity, "price_cents": price_cents})

    def pay(self) -> None:
        if self.status != "placed" or not self.items:
            raise OrderRejectedError(f"order {self.id} cannot be paid while {self.status} with "
                                     f"{len(self.items)} items")
        self.record("OrderPaid", {"amount_cents": self.total_cents})

    def cancel(self, reason: str) -> None:
        if self.status not in ("placed", "paid"):
            raise OrderRejectedError(f"order {self.id} is {self.status}; nothing to cancel")
        self.record("OrderCancelled", {"reason": reason})

    # ------------------------------------------------------------------ state changes

    @applies("OrderPlaced")
    def _placed(self, data: dict[str, Any]) -> None:
        self.status, self.customer = "placed", data["customer"]

    @applies("ItemAdded")
    def _item_added(self, data: dict[str, Any]) -> None:
        self.items[data["sku"]] = self.items.get(data["sku"], 0) + data["quantity"]
        self.total_cents += data["quantity"] * data["price_cents"]

    @applies("OrderPaid")
    def _paid(self, data: dict[str, Any]) -> None:
        self.status = "paid"

    @applies("OrderCancelled")
    def _cancelled(self, data: dict[str, Any]) -> None:
        self.status = "cancelled"


# ---------------------------------------------------------------------------- commands


@dataclass(frozen=True)
class PlaceOrder:
    order_id: str
    customer: str


@dataclass(frozen=True)
class AddItem:
    order_id: str
    sku: str
    quantity: int
    price_cents: int


@dataclass(frozen=True)
class PayOrder:
    order_id: str


@dataclass(frozen=True)
class CancelOrder:
    order_id: str
    reason: str


def command_bus(store: EventStore) -> CommandBus:
    """The shop's bus: each command type routed to an Order method."""
    bus = CommandBus(store, topic=TOPIC, retries=10)

    def order_id(command: Any) -> str:
        return str(command.order_id)

    bus.register(PlaceOrder, Order, lambda o, c: o.place(c.customer), id_of=order_id)
    bus.register(AddItem, Order, lambda o, c: o.add_item(c.sku, c.quantity, c.price_cents),
                 id_of=order_id)
    bus.register(PayOrder, Order, lambda o, c: o.pay(), id_of=order_id)
    bus.register(CancelOrder, Order, lambda o, c: o.cancel(c.reason), id_of=order_id)
    return bus
