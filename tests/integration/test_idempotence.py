"""T5, the idempotent producer over gRPC: duplicates, gaps, fencing, kill -9, and volume.

Moldau has no InitProducerId RPC: a producer picks its own id (the Python client draws a random
63-bit one, epoch 0) and the broker follows (producerId, producerEpoch, baseSequence) from the
RecordBatch headers alone, remembering the last five batches per producer and partition
(``engine/log/producer_state.py``). These tests write those header fields themselves, with
fixed ids, and send the batches as ``record_batch`` bytes.

Outcomes checked (codes as ``grpc_api/errors.py`` maps them; the ``moldau-error`` trailing
metadata names the error class, which is what tells a gap from a fence):

- a resend of any of the last five batches: OK, ``duplicate``, the original offsets, nothing
  appended; a resend of an older one: FAILED_PRECONDITION / OutOfOrderSequenceError;
- a skipped or overlapping sequence: FAILED_PRECONDITION / OutOfOrderSequenceError;
- an epoch older than the newest seen: FAILED_PRECONDITION / ProducerFencedError;
- after kill -9 of a server that had written batches it may not have acknowledged, a restart
  on the same data directory and a resend: duplicates with the original offsets, because the
  state is rebuilt from the batch headers in the log (epochs and sequences alike);
- at least 10,000 resent batches (nightly: 100,000) over ProduceStream: 0 duplicates stored.

``MOLDAU_SEED`` replays the random choices of the volume test; its messages name the seed.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from engine.records.batch import decode_batches, encode_batch, parse_header
from engine.records.record import NewRecord
from grpc_api.errors import ERROR_METADATA_KEY
from grpc_api.testing import ServerProcess
from moldau.v1 import admin_pb2, fetch_pb2, produce_pb2
from tests.faults.harness import data_end
from tests.integration.support import LIMITS, Stubs, make_stubs

S = grpc.StatusCode
TS = 1_700_000_000_000
NIGHTLY = os.environ.get("MOLDAU_FAULTS", "").lower() == "nightly"
RETRIED_BATCHES = 100_000 if NIGHTLY else 10_000


# ---------------------------------------------------------------------------- producers


@dataclass
class Producer:
    """An idempotent producer's header fields; batches are the same bytes on every resend."""

    producer_id: int
    epoch: int = 0
    next_sequence: int = 0
    sent: list[bytes] = field(default_factory=list)

    def batch(self, records: int = 2, *, sequence: int | None = None) -> bytes:
        """A batch of ``records`` records starting at ``sequence`` (default: the next one)."""
        first = self.next_sequence if sequence is None else sequence
        values = [f"{self.producer_id}:{self.epoch}:{first + i}".encode() for i in range(records)]
        return encode_batch(
            [NewRecord(v) for v in values],
            producer_id=self.producer_id,
            producer_epoch=self.epoch,
            base_sequence=first,
            timestamp=TS,
        )

    def next_batch(self, records: int = 2) -> bytes:
        data = self.batch(records)
        self.next_sequence += records
        self.sent.append(data)
        return data


def produce(
    stubs: Stubs, topic: str, data: bytes, partition: int = 0
) -> produce_pb2.PartitionAppend:
    request = produce_pb2.ProduceRequest(topic=topic, partition=partition, record_batch=data)
    (result,) = stubs.produce.Produce(request).results
    return result


def refused(stubs: Stubs, topic: str, data: bytes) -> tuple[grpc.StatusCode, str, str]:
    """(code, error class, message) of a produce that must fail."""
    with pytest.raises(grpc.RpcError) as info:
        produce(stubs, topic, data)
    error = info.value
    metadata = dict(error.trailing_metadata() or ())  # type: ignore[attr-defined]
    return error.code(), metadata.get(ERROR_METADATA_KEY, ""), error.details() or ""  # type: ignore[attr-defined]


def log_end(stubs: Stubs, topic: str, partition: int = 0) -> int:
    described = stubs.admin.DescribeTopic(admin_pb2.DescribeTopicRequest(name=topic)).topic
    return described.partitions[partition].log_end_offset


def stored_values(stubs: Stubs, topic: str, partition: int = 0) -> list[tuple[int, bytes]]:
    """(offset, value) of every record of the partition, read back from the log."""
    out: list[tuple[int, bytes]] = []
    offset = 0
    end = log_end(stubs, topic, partition)
    while offset < end:
        reply = stubs.fetch.Fetch(
            fetch_pb2.FetchRequest(
                topic=topic, partition=partition, offset=offset, max_bytes=1 << 20
            )
        )
        records = [r for r in decode_batches(reply.record_batches) if r.offset >= offset]
        assert records, f"no progress at offset {offset} of {end}"
        out.extend((r.offset, r.value or b"") for r in records)
        offset = records[-1].offset + 1
    return out


def assert_stored_once(stubs: Stubs, topic: str, expected: list[bytes], partition: int = 0) -> None:
    """The partition holds ``expected`` values, each once, in order, at offsets 0, 1, 2..."""
    stored = stored_values(stubs, topic, partition)
    assert [offset for offset, _ in stored] == list(range(len(stored)))
    values = [value for _, value in stored]
    duplicates = len(values) - len(set(values))
    assert duplicates == 0, f"{duplicates} records stored twice"
    assert values == expected


def values_of(*batches: bytes) -> list[bytes]:
    return [r.value or b"" for r in decode_batches(b"".join(batches))]


# ---------------------------------------------------------------------------- shared server


@pytest.fixture(scope="module")
def idem_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("idempotence") / "data", env=LIMITS)
    process.start()
    yield process
    assert process.stop() == 0, process.log_text()
    assert "Traceback" not in process.log_text()


@pytest.fixture(scope="module")
def stubs(idem_server: ServerProcess) -> Iterator[Stubs]:
    with grpc.insecure_channel(idem_server.address) as channel:
        yield make_stubs(channel)


_topics = iter(range(1_000_000))


@pytest.fixture
def topic(stubs: Stubs) -> str:
    name = f"idem-{next(_topics)}"
    stubs.admin.CreateTopic(admin_pb2.CreateTopicRequest(name=name, partitions=1))
    return name


# ---------------------------------------------------------------------------- duplicates


@pytest.mark.parametrize("resent", [1, 2, 3, 4, 5])
def test_resending_any_of_the_last_five_batches_returns_the_original_offsets(
    stubs: Stubs, topic: str, resent: int
) -> None:
    producer = Producer(1001)
    # record counts differ so that no two batches share a sequence range by accident
    first = [produce(stubs, topic, producer.next_batch(n)) for n in (1, 3, 2, 4, 1)]
    end = log_end(stubs, topic)
    assert end == 11
    last = list(range(5 - resent, 5))
    for order in (last, last[::-1]):  # in the order sent, then backwards
        for index in order:
            again = produce(stubs, topic, producer.sent[index])
            original = first[index]
            assert (again.base_offset, again.last_offset, again.duplicate) == (
                original.base_offset, original.last_offset, True,
            )
            assert log_end(stubs, topic) == end  # nothing appended
    following = produce(stubs, topic, producer.next_batch(2))
    assert (following.base_offset, following.duplicate) == (end, False)
    assert_stored_once(stubs, topic, values_of(*producer.sent))


def test_a_batch_older_than_the_last_five_is_refused_not_appended(
    stubs: Stubs, topic: str
) -> None:
    producer = Producer(1002)
    for _ in range(6):
        produce(stubs, topic, producer.next_batch())
    end = log_end(stubs, topic)
    code, reason, message = refused(stubs, topic, producer.sent[0])
    assert (code, reason) == (S.FAILED_PRECONDITION, "OutOfOrderSequenceError"), message
    assert "producer 1002 sent sequence 0, expected 12" in message
    assert log_end(stubs, topic) == end
    assert produce(stubs, topic, producer.sent[1]).duplicate  # the fifth-last still is one


# ---------------------------------------------------------------------------- gaps


@pytest.mark.parametrize(
    ("sequence", "records"),
    [(5, 1), (6, 2), (2**31 - 1, 1), (3, 1), (0, 3), (2, 3)],
    ids=["skip-one", "skip-two", "far-ahead", "overlap-last", "overlap-first",
         "repeat-start-other-length"],
)
def test_a_skipped_or_overlapping_sequence_is_refused(
    stubs: Stubs, topic: str, sequence: int, records: int
) -> None:
    producer = Producer(1003)
    for _ in range(2):
        produce(stubs, topic, producer.next_batch(2))  # sequences 0-1 and 2-3
    end = log_end(stubs, topic)
    code, reason, message = refused(stubs, topic, producer.batch(records, sequence=sequence))
    assert (code, reason) == (S.FAILED_PRECONDITION, "OutOfOrderSequenceError"), message
    assert f"producer 1003 sent sequence {sequence}, expected 4" in message
    assert "resend the missing batches in order" in message
    assert log_end(stubs, topic) == end
    # the producer is not wedged: the expected sequence is still taken
    assert produce(stubs, topic, producer.next_batch(1)).base_offset == end
    assert_stored_once(stubs, topic, values_of(*producer.sent))


def test_sequences_wrap_from_int32_max_to_zero(stubs: Stubs, topic: str) -> None:
    producer = Producer(1004, next_sequence=2**31 - 2)
    produce(stubs, topic, producer.next_batch(2))  # 2**31-2 .. 2**31-1
    producer.next_sequence = 0
    result = produce(stubs, topic, producer.next_batch(2))
    assert (result.base_offset, result.duplicate) == (2, False)
    assert produce(stubs, topic, producer.sent[0]).duplicate


# ---------------------------------------------------------------------------- epochs


def test_a_stale_epoch_is_fenced(stubs: Stubs, topic: str) -> None:
    old = Producer(1005, epoch=0)
    produce(stubs, topic, old.next_batch())
    produce(stubs, topic, old.next_batch())
    new = Producer(1005, epoch=1)
    code, reason, message = refused(stubs, topic, new.batch(sequence=4))
    assert (code, reason) == (S.FAILED_PRECONDITION, "OutOfOrderSequenceError"), message
    assert "expected 0" in message  # a new epoch starts its sequences again at 0
    produce(stubs, topic, new.next_batch())
    end = log_end(stubs, topic)
    for data in (old.batch(), old.sent[-1]):  # the next batch, and a resend of the last
        code, reason, message = refused(stubs, topic, data)
        assert (code, reason) == (S.FAILED_PRECONDITION, "ProducerFencedError"), message
        assert "producer 1005 epoch 0 is fenced by epoch 1" in message
        assert "a newer instance of this producer is running" in message
    assert log_end(stubs, topic) == end
    assert_stored_once(stubs, topic, values_of(*old.sent, *new.sent))


def test_a_producer_id_without_a_sequence_is_refused_not_taken_for_a_duplicate(
    stubs: Stubs, topic: str
) -> None:
    """Regression: baseSequence -1 under a producer id used to be stored once, and every
    later such batch acknowledged as its duplicate and silently dropped."""
    for value in (b"first", b"second"):
        data = encode_batch([NewRecord(value)], producer_id=1006, producer_epoch=0, timestamp=TS)
        assert parse_header(data).base_sequence == -1
        code, reason, message = refused(stubs, topic, data)
        assert (code, reason) == (S.INVALID_ARGUMENT, "InvalidBatchError"), message
        assert "producerId 1006 is set but baseSequence -1 is negative" in message
    assert log_end(stubs, topic) == 0


# ---------------------------------------------------------------------------- kill -9


def _segment_bytes(data_dir: Path, topic: str) -> int:
    return sum(data_end(path) for path in (data_dir / f"{topic}-0").glob("*.log"))


def _wait_for_bytes(data_dir: Path, topic: str, size: int, server: ServerProcess) -> None:
    """Wait (up to 60 s) until the topic's segments hold ``size`` bytes: written, maybe unacked."""
    deadline = time.monotonic() + 60
    while _segment_bytes(data_dir, topic) < size:
        assert time.monotonic() < deadline, f"batches never reached the log:\n{server.log_text()}"
        time.sleep(0.001)


def _send_without_reading_acks(address: str, topic: str, batches: list[bytes]) -> threading.Event:
    """Stream ``batches`` in order and never read an acknowledgement; set the event to end."""
    release = threading.Event()
    channel = grpc.insecure_channel(address)
    started = threading.Event()

    def requests() -> Iterator[produce_pb2.ProduceRequest]:
        for i, data in enumerate(batches):
            yield produce_pb2.ProduceRequest(
                topic=topic, partition=0, record_batch=data, correlation_id=i
            )
        started.set()
        release.wait()

    call = make_stubs(channel).produce.ProduceStream(requests())

    def finish() -> None:
        release.wait()
        call.cancel()
        channel.close()

    threading.Thread(target=finish, daemon=True).start()
    assert started.wait(30), "the request stream did not start"
    return release


RESTARTS = ["kill", "kill", "stop", "kill"]  # SIGKILL, or SIGTERM (a clean shutdown)


def test_retries_after_a_restart_are_deduplicated_from_the_log(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = ServerProcess(data_dir, env=LIMITS)
    server.start()
    topic = "idem-restart"
    producer = Producer(2001)
    try:
        with grpc.insecure_channel(server.address) as channel:
            stubs = make_stubs(channel)
            stubs.admin.CreateTopic(admin_pb2.CreateTopicRequest(name=topic, partitions=1))
            for _ in range(3):
                produce(stubs, topic, producer.next_batch(3))
        for how in RESTARTS:
            start = log_end_of(server, topic)
            pending = [producer.next_batch(n) for n in (1, 2, 3, 2, 1)]  # five: all in the window
            size = _segment_bytes(data_dir, topic) + sum(len(b) for b in pending)
            release = _send_without_reading_acks(server.address, topic, pending)
            _wait_for_bytes(data_dir, topic, size, server)
            if how == "kill":
                server.kill()  # the broker wrote them; whether it acked them is irrelevant now
                release.set()
            else:
                release.set()  # a graceful stop would wait for the open stream
                assert server.stop() == 0
            server.start()
            with grpc.insecure_channel(server.address) as channel:
                stubs = make_stubs(channel)
                offset = start
                for data in pending:  # the producer never saw an ack: it resends everything
                    result = produce(stubs, topic, data)
                    count = parse_header(data).record_count
                    assert (result.base_offset, result.last_offset, result.duplicate) == (
                        offset, offset + count - 1, True,
                    ), f"after {how}: resend of sequence {parse_header(data).base_sequence}"
                    offset += count
                assert log_end(stubs, topic) == offset
                # the rebuilt state refuses gaps and knows the epoch
                code, reason, _ = refused(stubs, topic, producer.batch(sequence=10**6))
                assert (code, reason) == (S.FAILED_PRECONDITION, "OutOfOrderSequenceError")
        with grpc.insecure_channel(server.address) as channel:
            stubs = make_stubs(channel)
            newer = Producer(2001, epoch=1)
            produce(stubs, topic, newer.next_batch())
            server.kill()
            server.start()
        with grpc.insecure_channel(server.address) as channel:
            stubs = make_stubs(channel)
            code, reason, _ = refused(stubs, topic, producer.batch())
            assert (code, reason) == (S.FAILED_PRECONDITION, "ProducerFencedError")
            assert_stored_once(stubs, topic, values_of(*producer.sent, *newer.sent))
    finally:
        server.stop()
    assert "Traceback" not in server.log_text()


def log_end_of(server: ServerProcess, topic: str) -> int:
    with grpc.insecure_channel(server.address) as channel:
        return log_end(make_stubs(channel), topic)


# ---------------------------------------------------------------------------- volume


@dataclass
class _Sent:
    producer: int
    partition: int
    index: int  # the batch's position in its producer's list
    retry: bool


def test_ten_thousand_retried_batches_store_no_duplicates(stubs: Stubs) -> None:
    seed = int(os.environ.get("MOLDAU_SEED", str(random.randrange(2**32))))
    rng = random.Random(f"idempotence:{seed}")
    at = f"MOLDAU_SEED={seed}"
    topic = f"idem-volume-{seed}"
    partitions = 2
    stubs.admin.CreateTopic(admin_pb2.CreateTopicRequest(name=topic, partitions=partitions))
    producers = {
        (p, n): Producer(3000 + p) for p in range(3) for n in range(partitions)
    }  # three producers, each writing to both partitions
    plan: list[_Sent] = []
    retried = 0
    while retried < RETRIED_BATCHES:
        (pid, partition), producer = rng.choice(list(producers.items()))
        producer.next_batch(rng.randint(1, 3))
        index = len(producer.sent) - 1
        plan.append(_Sent(pid, partition, index, retry=False))
        window = list(range(max(0, index - 4), index + 1))  # the last five, this one included
        for resend in rng.sample(window, rng.randint(1, len(window))):
            plan.append(_Sent(pid, partition, resend, retry=True))
            retried += 1

    def requests() -> Iterator[produce_pb2.ProduceRequest]:
        for i, sent in enumerate(plan):
            data = producers[sent.producer, sent.partition].sent[sent.index]
            yield produce_pb2.ProduceRequest(
                topic=topic, partition=sent.partition, record_batch=data, correlation_id=i
            )

    first: dict[tuple[int, int, int], tuple[int, int]] = {}
    acks = sorted(stubs.produce.ProduceStream(requests()), key=lambda ack: ack.correlation_id)
    assert len(acks) == len(plan), at
    for sent, ack in zip(plan, acks, strict=True):
        assert ack.HasField("response"), f"{at}: {ack.error.message}"
        (result,) = ack.response.results
        key = (sent.producer, sent.partition, sent.index)
        offsets = (result.base_offset, result.last_offset)
        if sent.retry:
            assert result.duplicate, f"{at}: a resend of {key} was appended again at {offsets}"
            assert offsets == first[key], f"{at}: a resend of {key} got other offsets"
        else:
            assert not result.duplicate, f"{at}: the first send of {key} was taken as a resend"
            first[key] = offsets
    for partition in range(partitions):
        # the partition's records in offset order are its batches in the order first sent
        expected = [
            producers[s.producer, s.partition].sent[s.index]
            for s in plan
            if s.partition == partition and not s.retry
        ]
        assert_stored_once(stubs, topic, values_of(*expected), partition)
    print(f"{at}: {len(first)} batches, {retried} resent, 0 duplicates stored")
