"""Sends notifications through the headers exchange and prints each channel's metrics
(run from this directory: ``python app.py [COUNT]``)."""

from __future__ import annotations

import asyncio
import os
import sys

from notify import run

from moldau import Queues


def main(server: str, count: int = 2_000) -> None:
    report = asyncio.run(run(server, count=count))
    print(f"{report.notifications} notifications in {report.seconds:.2f} s "
          f"({report.per_second:,.0f}/s end to end)")
    for channel, metrics in report.channels.items():
        print(f"{channel:>5}: {metrics.summary()}")
    with Queues(server) as queues:
        letters = queues.dead_letters(queue="send-sms", limit=3)
    for letter in letters:
        print(f"dead letter {letter.dlq_topic}@{letter.dlq_offset}: {letter.last_error} "
              f"(after {letter.attempts} attempts)")


if __name__ == "__main__":
    main(os.environ.get("MOLDAU_SERVER", "127.0.0.1:7654"),
         int(sys.argv[1]) if len(sys.argv) > 1 else 2_000)
