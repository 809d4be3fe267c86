from collections.abc import Callable, Sequence
from typing import Any

def records(
    data: bytes,
    base_offset: int,
    base_timestamp: int,
    last_offset_delta: int,
    append_time: int | None,
    record_count: int,
    record_type: type[tuple[Any, ...]],
    headers: Callable[[bytes, int, int, int], tuple[Any, ...]],
    bad: Callable[[int, str], Exception],
    no_headers: bytes,
) -> list[Any]: ...
def encode(records: Sequence[tuple[Any, ...]]) -> tuple[bytes, int]: ...
