from typing import Any

def parse(raw: bytes, packed_type: type, any: int, no_stream: int,
          stream_exists: int, /) -> list[Any] | None: ...
