"""The Python examples of docs/tcp-port.md run as written (addresses swapped for a test broker)."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

from moldau.testing import broker

DOC = Path(__file__).resolve().parents[2] / "docs" / "tcp-port.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


def test_the_examples_of_the_tcp_port_page_run() -> None:
    blocks = _python_blocks()
    assert len(blocks) == 2  # the client example and the by-hand framing
    with broker(tcp=True) as running:
        host, port = running.tcp_address.rsplit(":", 1)
        outputs = []
        for block in blocks:
            code = (block.replace("127.0.0.1:7654", running.address)
                    .replace("127.0.0.1:7655", running.tcp_address)
                    .replace('("127.0.0.1", 7655)', f'("{host}", {port})'))
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                exec(compile(code, str(DOC), "exec"), {"__name__": "__doc_example__"})
            outputs.append(out.getvalue())
    client, framing = outputs
    assert "b'{\"id\": 1}'" in client  # the record sent, read back over the TCP port
    assert 'name: "orders"' in framing  # ListTopics over hand-written frames
    assert "status 0" in framing
