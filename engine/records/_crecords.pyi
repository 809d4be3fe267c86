from collections.abc import Container

def murmur2(key: bytes | bytearray | memoryview, /) -> int: ...

def check(data: bytes | bytearray | memoryview, count: int, last_delta: int) -> bool: ...
def decode(
    data: bytes | bytearray | memoryview,
    count: int,
    base_offset: int,
    base_ts: int,
    last_delta: int,
    append_time: int | None,
    record_type: type,
    header_type: type,
    wanted: Container[int] | None = None,
    /,
) -> list[object] | None: ...
