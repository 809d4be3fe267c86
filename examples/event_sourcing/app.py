"""A small end-to-end run: commands in, projection built, queries out.

    moldau serve &                       # a broker on 127.0.0.1:7654
    cd examples/event_sourcing && python app.py
"""

from __future__ import annotations

import contextlib
import os

from orders import TOPIC, AddItem, CancelOrder, PayOrder, PlaceOrder, command_bus
from summary import order_summary, orders_of, revenue_cents

from moldau import EventStore, TopicExistsError
from moldau.projections import ProjectionRunner


def main(server: str | None = None) -> None:
    server = server or os.environ.get("MOLDAU_SERVER")
    with EventStore(server, topic=TOPIC) as store:
        with contextlib.suppress(TopicExistsError):
            store.create_store_topic(TOPIC, partitions=2)
        bus = command_bus(store)
        for command in (
            PlaceOrder("1001", "ann"),
            AddItem("1001", "tea", 2, 450),
            PayOrder("1001"),
            PlaceOrder("1002", "ann"),
            AddItem("1002", "mug", 1, 1200),
            CancelOrder("1002", "changed my mind"),
        ):
            bus.dispatch(command)
    ProjectionRunner(order_summary, server).run(until_caught_up=True)
    for row in orders_of("ann"):
        print(row)
    print("revenue:", revenue_cents() / 100)


if __name__ == "__main__":
    main()
