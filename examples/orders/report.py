"""The read side: an order report in SQLite, folded from the order histories.

A projection of the ``order-*`` streams of ``order-history``: one row per order with its
status, payment, stock and shipping. The checkpoint is committed in the same SQLite
transaction as the rows, so a restarted projection neither skips nor repeats an event.
Rebuild it from the whole history at any time (from this directory)::

    moldau replay --projection report:order_report
"""

from __future__ import annotations

import json
import os
import sqlite3
from typing import Any

from history import TOPIC

from moldau.projections import Projection, SQLiteStore

DB_PATH = os.environ.get("ORDER_REPORT_DB", "order-report.db")

order_report = Projection("order-report", TOPIC, category="order",
                          store=SQLiteStore(DB_PATH))


@order_report.init
def _schema(db: sqlite3.Connection) -> None:
    db.execute("""CREATE TABLE order_report (
        order_id TEXT PRIMARY KEY, sku TEXT NOT NULL, quantity INTEGER NOT NULL,
        status TEXT NOT NULL, payment TEXT NOT NULL DEFAULT 'pending',
        payment_attempts INTEGER NOT NULL DEFAULT 0, stock TEXT NOT NULL DEFAULT 'none',
        shipping TEXT, events INTEGER NOT NULL DEFAULT 1)""")


def _order_id(event: Any) -> str:
    return str(event.stream).removeprefix("order-")


def _set(db: sqlite3.Connection, event: Any, column: str, value: Any) -> None:
    # column names come from this module only, never from event data
    db.execute(f"UPDATE order_report SET {column} = ?, events = events + 1 WHERE order_id = ?",
               (value, _order_id(event)))


@order_report.on("OrderPlaced")
def _placed(db: sqlite3.Connection, event: Any) -> None:
    data = json.loads(event.data)
    db.execute("INSERT INTO order_report (order_id, sku, quantity, status) "
               "VALUES (?, ?, ?, 'placed')", (_order_id(event), data["sku"], data["quantity"]))


@order_report.on("PaymentSucceeded", "PaymentFailed")
def _payment(db: sqlite3.Connection, event: Any) -> None:
    attempts = json.loads(event.data)["attempts"]
    db.execute("UPDATE order_report SET payment = ?, payment_attempts = ?, events = events + 1 "
               "WHERE order_id = ?",
               ("paid" if event.type == "PaymentSucceeded" else "failed", attempts,
                _order_id(event)))


@order_report.on("StockReserved", "StockReleased")
def _stock(db: sqlite3.Connection, event: Any) -> None:
    _set(db, event, "stock", "reserved" if event.type == "StockReserved" else "released")


@order_report.on("OrderShipped")
def _shipped(db: sqlite3.Connection, event: Any) -> None:
    db.execute("UPDATE order_report SET status = 'shipped', shipping = ?, events = events + 1 "
               "WHERE order_id = ?", (json.loads(event.data)["method"], _order_id(event)))


@order_report.on("OrderCancelled")
def _cancelled(db: sqlite3.Connection, event: Any) -> None:
    _set(db, event, "status", "cancelled")


def report(path: str = DB_PATH) -> list[dict[str, Any]]:
    """Every order's row, by order id (eventually consistent with the histories)."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        db.row_factory = sqlite3.Row
        return [dict(row) for row in db.execute("SELECT * FROM order_report ORDER BY order_id")]
