"""Disk full on a real filesystem (RELIABILITY-PLAN T10 b): a size-limited tmpfs, a real server.

The data directory lives on an 8 MiB tmpfs that also holds a filler file. Producing until the
filesystem is full must:

- fail appends with RESOURCE_EXHAUSTED and a message saying the disk is full;
- keep the server up, every acknowledged record readable and the log end offset unchanged by
  the refused appends (no partial batch stored);
- resume by itself, without a restart, once the filler is deleted;
- survive a kill -9 and a restart while the disk is still full, losing no acknowledged record.

Needs root (``mount -t tmpfs``), as CI runs. Where mounting is impossible the test FAILS with
the reason (never skips), so a CI runner that cannot run it is noticed.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from grpc_api.testing import ServerProcess
from moldau.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    fetch_pb2,
    fetch_pb2_grpc,
    produce_pb2,
    produce_pb2_grpc,
)

SIZE = "8m"
VALUE_BYTES = 16 * 1024
FILLER_BYTES = 2 * 1024 * 1024
RESUME_WITHIN_S = 5.0


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "small-fs"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(mount_point)],
        capture_output=True, text=True, check=False,
    )
    if done.returncode != 0:
        pytest.fail(
            f"cannot mount a {SIZE} tmpfs at {mount_point} ({done.stderr.strip()}); this test "
            "needs root or CAP_SYS_ADMIN (CI runs as root on Debian) - run it there"
        )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


class Client:
    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)
        self.produce = produce_pb2_grpc.ProduceServiceStub(self.channel)
        self.fetch = fetch_pb2_grpc.FetchServiceStub(self.channel)

    def send(self, value: bytes) -> int:
        reply = self.produce.Produce(produce_pb2.ProduceRequest(
            topic="df", partition=0,
            records=produce_pb2.RecordList(records=[common_pb2.Record(value=value)]),
        ), timeout=10)
        return int(reply.results[0].base_offset)

    def log_end(self) -> int:
        reply = self.admin.ListOffsets(admin_pb2.ListOffsetsRequest(
            topic="df", spec=common_pb2.OffsetSpec(kind=common_pb2.OffsetSpec.LATEST)
        ), timeout=10)
        return int(reply.offsets[0].high_watermark)

    def read_all(self) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        offset = 0
        end = self.log_end()
        while offset < end:
            reply = self.fetch.Fetch(fetch_pb2.FetchRequest(
                topic="df", partition=0, offset=offset, decoded=True, max_records=50
            ), timeout=10)
            for record in reply.records:
                out[record.offset] = record.value
            offset = reply.next_offset
        return out

    def close(self) -> None:
        self.channel.close()


def _fill(client: Client, acked: dict[int, bytes], tag: str) -> grpc.RpcError:
    """Produce until an append is refused; return the refusal."""
    for n in range(10_000):
        value = f"{tag}:{n}:".encode().ljust(VALUE_BYTES, b"x")
        try:
            acked[client.send(value)] = value
        except grpc.RpcError as error:
            return error
    raise AssertionError("the 8 MiB filesystem never filled")


def _assert_all_readable(client: Client, acked: dict[int, bytes]) -> None:
    stored = client.read_all()
    missing = [o for o, v in acked.items() if stored.get(o) != v]
    assert not missing, f"acknowledged records lost or changed at offsets {missing[:10]}"


def test_disk_full_refuses_cleanly_and_resumes(small_fs: Path) -> None:
    filler = small_fs / "filler"
    filler.write_bytes(b"\0" * FILLER_BYTES)
    server = ServerProcess(small_fs / "data", env={"MOLDAU_LOG_LEVEL": "WARNING"})
    server.start()
    client = Client(server.address)
    acked: dict[int, bytes] = {}
    try:
        client.admin.CreateTopic(admin_pb2.CreateTopicRequest(
            name="df", partitions=1, configs={"segment.bytes": str(1024 * 1024)}
        ))
        error = _fill(client, acked, "a")
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
        assert "disk full" in (error.details() or ""), error.details()
        assert len(acked) > 100
        end = client.log_end()
        for _ in range(5):  # refused again and again: nothing partial is stored
            with pytest.raises(grpc.RpcError) as refused:
                client.send(b"refused".ljust(VALUE_BYTES, b"r"))
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert client.log_end() == end
        assert server.process is not None
        assert server.process.poll() is None
        _assert_all_readable(client, acked)

        filler.unlink()  # free space: writes resume without a restart
        freed_at = time.monotonic()
        value = b"after-free".ljust(VALUE_BYTES, b"f")
        refusals: list[grpc.StatusCode] = []
        while time.monotonic() - freed_at < RESUME_WITHIN_S:
            try:
                acked[client.send(value)] = value
                break
            except grpc.RpcError as retry:
                refusals.append(retry.code())
                time.sleep(0.1)
        assert value in acked.values(), f"writes did not resume within {RESUME_WITHIN_S} s"
        assert set(refusals) <= {grpc.StatusCode.RESOURCE_EXHAUSTED}, refusals
        _assert_all_readable(client, acked)

        # full again, then kill -9 and restart while still full
        error = _fill(client, acked, "b")
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
        client.close()
        server.kill()
        server = ServerProcess(small_fs / "data", env={"MOLDAU_LOG_LEVEL": "WARNING"})
        server.start()
        client = Client(server.address)
        _assert_all_readable(client, acked)
    finally:
        client.close()
        log = server.log_text()
        server.stop()
    assert "Traceback" not in log, log[-3000:]
