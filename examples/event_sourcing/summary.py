"""The read side: an order-summary projection in SQLite, and the queries that read it.

The projection folds the ``order-*`` streams of the ``shop-orders`` topic into one row per
order. Its checkpoint commits in the same SQLite transaction as the rows, so a restart
continues exactly where it stopped. Rebuild it from the whole history at any time with::

    moldau replay --projection summary:order_summary

(run from this directory, so ``summary`` is importable), which builds a fresh file beside
the old one and renames it over the old one when it is complete.
"""

from __future__ import annotations

import json
import os
import sqlite3
from typing import Any

from orders import TOPIC

from moldau.projections import Projection, SQLiteStore

DB_PATH = os.environ.get("ORDER_SUMMARY_DB", "order-summary.db")

order_summary = Projection("order-summary", TOPIC, category="order",
                           store=SQLiteStore(DB_PATH))


@order_summary.init
def _schema(db: sqlite3.Connection) -> None:
    db.execute("""CREATE TABLE order_summary (
        order_id TEXT PRIMARY KEY, customer TEXT NOT NULL, status TEXT NOT NULL,
        items INTEGER NOT NULL DEFAULT 0, total_cents INTEGER NOT NULL DEFAULT 0,
        version INTEGER NOT NULL)""")


def _order_id(event: Any) -> str:
    return str(event.stream).removeprefix("order-")


@order_summary.on("OrderPlaced")
def _placed(db: sqlite3.Connection, event: Any) -> None:
    data = json.loads(event.data)
    db.execute("INSERT INTO order_summary (order_id, customer, status, version) "
               "VALUES (?, ?, 'placed', ?)", (_order_id(event), data["customer"], event.version))


@order_summary.on("ItemAdded")
def _item(db: sqlite3.Connection, event: Any) -> None:
    data = json.loads(event.data)
    db.execute("UPDATE order_summary SET items = items + ?, total_cents = total_cents + ?, "
               "version = ? WHERE order_id = ?",
               (data["quantity"], data["quantity"] * data["price_cents"], event.version,
                _order_id(event)))


@order_summary.on("OrderPaid", "OrderCancelled")
def _status(db: sqlite3.Connection, event: Any) -> None:
    status = "paid" if event.type == "OrderPaid" else "cancelled"
    db.execute("UPDATE order_summary SET status = ?, version = ? WHERE order_id = ?",
               (status, event.version, _order_id(event)))


# ---------------------------------------------------------------------------- queries


def orders_of(customer: str, path: str = DB_PATH) -> list[dict[str, Any]]:
    """A customer's orders, newest version first (the read model is eventually consistent)."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute("SELECT * FROM order_summary WHERE customer = ? ORDER BY order_id",
                          (customer,))
        return [dict(row) for row in rows]


def revenue_cents(path: str = DB_PATH) -> int:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        row = db.execute("SELECT COALESCE(SUM(total_cents), 0) FROM order_summary "
                         "WHERE status = 'paid'").fetchone()
        return int(row[0])
