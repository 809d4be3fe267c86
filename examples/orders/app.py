"""Runs the shop: declares the topology, places five orders, waits for every saga to end,
and prints what happened (run from this directory: ``python app.py``)."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from history import Place, open_history
from report import order_report, report
from shop import PAYMENT_ATTEMPTS, Saga, Shop, build_worker, declare_topology, place_order

from moldau import Producer, Queues
from moldau.projections import ProjectionRunner

ORDERS: list[dict[str, Any]] = [
    {"id": "1001", "region": "eu", "sku": "kettle", "quantity": 1, "card": "ok",
     "shipping": "standard"},
    {"id": "1002", "region": "us", "sku": "teapot", "quantity": 2, "card": "ok",
     "shipping": "express"},
    {"id": "1003", "region": "eu", "sku": "kettle", "quantity": 3, "card": "declined",
     "shipping": "express"},
    {"id": "1004", "region": "eu.north", "sku": "teapot", "quantity": 1, "card": "flaky",
     "shipping": "standard"},
    {"id": "1005", "region": "us", "sku": "mug", "quantity": 4, "card": "declined",
     "shipping": "standard"},
]
STOCK = {"kettle": 10, "teapot": 10, "mug": 10}


def run(server: str, orders: list[dict[str, Any]] = ORDERS, timeout_s: float = 60.0) -> Shop:
    """Run the shop until every order is shipped or cancelled (and compensated)."""
    declare_topology(server)
    shop = Shop(stock=dict(STOCK))
    with shop.lock:
        shop.sagas.update({o["id"]: Saga(o) for o in orders})
    store, history = open_history(server)
    with store, Producer(server) as producer:
        worker = build_worker(server, shop, producer, history)
        worker.start()
        try:
            for order in orders:
                history.dispatch(Place(order))
                place_order(producer, order)
            producer.flush()
            deadline = time.monotonic() + timeout_s
            with shop.finished:
                while not _done(shop):
                    if not shop.finished.wait(max(0.0, deadline - time.monotonic())):
                        raise TimeoutError(f"orders still open: {shop.sagas}")
        finally:
            worker.stop()
    ProjectionRunner(order_report, server).run(until_caught_up=True)
    return shop


def _done(shop: Shop) -> bool:
    """Under the lock: every saga ended, shipped ones arrived, stock restored for the rest."""
    for order_id, saga in shop.sagas.items():
        if saga.outcome == "pending" or (saga.reserved and saga.payment is False):
            return False
        if saga.outcome == "shipping" and order_id not in shop.shipped:
            return False
    reserved = sum(s.order["quantity"] for s in shop.sagas.values() if s.outcome == "shipping")
    return sum(shop.stock.values()) + reserved == sum(STOCK.values())


def main(server: str) -> None:
    shop = run(server)
    for order_id, _saga in sorted(shop.sagas.items()):
        method = shop.shipped.get(order_id)
        ending = f"shipped ({method})" if method else "cancelled, stock released"
        print(f"order {order_id}: {ending}; gateway calls {shop.gateway_calls.get(order_id)}")
    print(f"stock: {shop.stock}")
    for row in report():
        print(f"report {row['order_id']}: {row['status']}, payment {row['payment']} after "
              f"{row['payment_attempts']}, stock {row['stock']}, {row['events']} events")
    with Queues(server) as queues:
        for letter in queues.dead_letters(queue="payments-work"):
            print(f"dead letter {letter.dlq_offset}: {letter.value!r} after {letter.attempts}"
                  f" of {PAYMENT_ATTEMPTS} attempts: {letter.last_error}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("MOLDAU_SERVER",
                                                                "127.0.0.1:7654"))
