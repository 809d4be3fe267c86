from collections.abc import Callable
from typing import Any

def decode(
    buf: bytes,
    pos: int,
    limit: int,
    count: int,
    base_offset: int,
    base_ts: int,
    append_time: int | None,
    topic: str,
    partition: int,
    first_offset: int,
    out: list[Any],
    matcher: Callable[[str], bool] | None,
    event_type: type[tuple[Any, ...]],
) -> int: ...
