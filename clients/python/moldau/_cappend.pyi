from collections.abc import Sequence

def encode(correlation_id: int, topic: str, stream: str, expected_field: int,
           expected_value: int, events: Sequence[object], /) -> bytes | None: ...
