"""The shop: topology, the payment, inventory and shipping services, and the order saga.

Flow (every arrow is a topic, an exchange or a queue on the broker)::

    place_order --> [shop-orders: topic exchange] --order.placed.#--> payments  --> payments-work
                                                  \\--order.placed.#--> inventory --> inventory-work
    payments-work, inventory-work --> order-events --> saga (per-key ordered by order id)
    payments-work fails 3 times --> payments.dlq --> payments-dead --> order-events (failed)
    saga: both ok  --> [shipping: direct exchange] --standard|express--> shipping-<method>
    saga: payment failed --> inventory (command=release): the compensation

Each service is a handler of a :class:`moldau.Worker`; a handler that raises is retried with
backoff by the queue, and a payment that fails ``PAYMENT_ATTEMPTS`` times is dead-lettered.
The dead-letter topic is itself consumed by a queue, so the saga hears of the failure and
releases the reserved stock. The saga decides from its in-memory state; every step it learns
of is also written to the order's event-sourced history (:mod:`history`), from which the
order report (:mod:`report`) is built and can be rebuilt with ``moldau replay``.
"""

from __future__ import annotations

import contextlib
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from history import Cancelled, PaymentResult, Shipped, StockReleased, StockReserved

from moldau import Admin, Backoff, Exchanges, Message, Producer, Queues, RejectMessage, Worker
from moldau.aggregate import CommandBus
from moldau.errors import TopicExistsError

ORDERS_EXCHANGE = "shop-orders"
SHIPPING_EXCHANGE = "shipping"
TOPICS = ("payments", "inventory", "order-events", "payments.dlq", "shipping-standard",
          "shipping-express")
PAYMENT_ATTEMPTS = 3


class PaymentDeclinedError(Exception):
    """The card was refused (the gateway says so on every attempt)."""


class GatewayTimeoutError(Exception):
    """The gateway did not answer in time (transient: a retry usually works)."""


def declare_topology(server: str) -> None:
    """Topics, exchanges, bindings and queues; safe to run again."""
    with Admin(server) as admin:
        for topic in TOPICS:
            with contextlib.suppress(TopicExistsError):
                admin.create_topic(topic, 2 if topic in ("payments", "inventory") else 1)
    with Exchanges(server) as exchanges:
        exchanges.declare(ORDERS_EXCHANGE, "topic", partitions=2)
        exchanges.bind(ORDERS_EXCHANGE, "payments", pattern="order.placed.#")
        exchanges.bind(ORDERS_EXCHANGE, "inventory", pattern="order.placed.#")
        exchanges.declare(SHIPPING_EXCHANGE, "direct")
        exchanges.bind(SHIPPING_EXCHANGE, "shipping-standard", pattern="standard")
        exchanges.bind(SHIPPING_EXCHANGE, "shipping-express", pattern="express")
    with Queues(server) as queues:
        queues.declare("payments-work", "payments", max_deliveries=PAYMENT_ATTEMPTS,
                       backoff=Backoff(initial_ms=50, multiplier=2.0, max_ms=1_000))
        queues.declare("inventory-work", "inventory", ordering="per-key")
        queues.declare("payments-dead", "payments.dlq")
        queues.declare("saga", "order-events", ordering="per-key")
        queues.declare("ship-standard", "shipping-standard")
        queues.declare("ship-express", "shipping-express")


def place_order(producer: Producer, order: dict[str, Any]) -> None:
    """Publish an order to the topic exchange; the routing key carries the region."""
    producer.send(ORDERS_EXCHANGE, json.dumps(order).encode(), key=order["id"].encode(),
                  headers={"routing-key": f"order.placed.{order['region']}".encode()})


@dataclass
class Saga:
    """One order's progress: what each step reported and how it ended."""

    order: dict[str, Any]
    payment: bool | None = None
    reserved: bool = False
    outcome: str = "pending"


@dataclass
class Shop:
    """The running services' state: stock, sagas, shipments, gateway calls."""

    stock: dict[str, int]
    sagas: dict[str, Saga] = field(default_factory=dict)
    shipped: dict[str, str] = field(default_factory=dict)
    gateway_calls: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    finished: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self.finished = threading.Condition(self.lock)

    def outcomes(self) -> dict[str, str]:
        with self.lock:
            return {order_id: saga.outcome for order_id, saga in self.sagas.items()}


def _event(producer: Producer, order_id: str, step: str, ok: bool, **extra: Any) -> None:
    body = {"order": order_id, "step": step, "ok": ok, **extra}
    producer.send("order-events", json.dumps(body).encode(), key=order_id.encode()).result()


def build_worker(server: str, shop: Shop, producer: Producer, history: CommandBus) -> Worker:
    """A worker with every service's handler registered; ``history`` records each step."""
    worker = Worker(server, consumer="shop")

    @worker.handler("payments-work", concurrency=4)
    def charge(message: Message) -> None:
        order = json.loads(message.value or b"{}")
        with shop.lock:
            calls = shop.gateway_calls[order["id"]] = shop.gateway_calls.get(order["id"], 0) + 1
        if order["card"] == "declined":
            raise PaymentDeclinedError(f"card of order {order['id']} declined")
        if order["card"] == "flaky" and calls == 1:
            raise GatewayTimeoutError("payment gateway timed out")
        _event(producer, order["id"], "payment", True, attempts=message.delivery_count)

    @worker.handler("payments-dead")
    def payment_failed(message: Message) -> None:
        order = json.loads(message.value or b"{}")
        error = (message.header("moldau.dlq.last-error") or b"").decode()
        attempts = int(message.header("moldau.dlq.attempts") or b"0")
        _event(producer, order["id"], "payment", False, error=error, attempts=attempts)

    @worker.handler("inventory-work", concurrency=2)
    def inventory(message: Message) -> None:
        order = json.loads(message.value or b"{}")
        if message.header("command") == b"release":
            history.dispatch(StockReleased(order["id"]))
            with shop.lock:
                shop.stock[order["sku"]] += order["quantity"]
                shop.finished.notify_all()
            return
        with shop.lock:
            if shop.stock[order["sku"]] < order["quantity"]:
                raise RejectMessage(f"out of stock: {order['sku']}")
            shop.stock[order["sku"]] -= order["quantity"]
        _event(producer, order["id"], "inventory", True)

    @worker.handler("saga")
    def saga(message: Message) -> None:
        event = json.loads(message.value or b"{}")
        if event["step"] == "payment":
            history.dispatch(PaymentResult(event["order"], event["ok"], event.get("attempts", 0),
                                           event.get("error", "")))
        else:
            history.dispatch(StockReserved(event["order"]))
        with shop.lock:
            state = shop.sagas[event["order"]]
            if event["step"] == "payment":
                state.payment = event["ok"]
            else:
                state.reserved = True
            decision = _decide(state)
            cancelled = state.outcome == "cancelled"
        if cancelled:  # recorded once: the history ignores a second cancellation
            history.dispatch(Cancelled(state.order["id"], "payment failed"))
        if decision == "ship":
            order = state.order
            producer.send(SHIPPING_EXCHANGE, json.dumps(order).encode(),
                          key=order["shipping"].encode()).result()
        elif decision == "compensate":
            producer.send("inventory", json.dumps(state.order).encode(),
                          key=state.order["id"].encode(),
                          headers={"command": b"release"}).result()
        if decision:
            with shop.lock:
                shop.finished.notify_all()

    for method in ("standard", "express"):
        @worker.handler(f"ship-{method}")
        def ship(message: Message, method: str = method) -> None:
            order = json.loads(message.value or b"{}")
            history.dispatch(Shipped(order["id"], method))
            with shop.lock:
                shop.shipped[order["id"]] = method
                shop.finished.notify_all()

    return worker


def _decide(state: Saga) -> str:
    """The saga's step, under the shop lock: "ship", "compensate" or "" (wait)."""
    if state.outcome != "pending":
        if state.outcome == "cancelled" and state.reserved and state.payment is False:
            # the reservation arrived after the cancellation: release it as well
            state.reserved = False
            return "compensate"
        return ""
    if state.payment is False:
        state.outcome = "cancelled"
        if state.reserved:
            state.reserved = False
            return "compensate"
        return ""
    if state.payment and state.reserved:
        state.outcome = "shipping"
        return "ship"
    return ""
