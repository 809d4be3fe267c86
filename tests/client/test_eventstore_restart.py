"""The stream index after kill -9 of the server: rebuilt from the log, same versions."""

from __future__ import annotations

from pathlib import Path

from grpc_api.testing import ServerProcess
from moldau import ANY, NO_STREAM, EventData, EventStore


def test_index_rebuild_after_kill_gives_the_same_versions(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data")
    address = server.start()
    try:
        with EventStore(address, topic="ledger") as client:
            client.create_store_topic(partitions=3)
            for n in range(60):
                client.append_to_stream(f"acct-{n % 7}", ANY, EventData.json("Moved", {"n": n}))
            pipelined = client.append_many(
                [(f"acct-{s}", ANY, [EventData.json("Moved", {"p": s})]) for s in range(7)])
            assert not [o for o in pipelined if isinstance(o, Exception)]
            client.delete_stream("acct-6")
            client.truncate_stream("acct-5", 3)
            before = {s.stream: s for s in client.list_streams(include_deleted=True)}
            contents = {name: [(e.version, e.event_id) for e in client.read_stream(name)]
                        for name in before if not before[name].deleted}
            retried = EventData.json("Moved", {"retry": True})
            first = client.append_to_stream("acct-0", before["acct-0"].last_version, retried)
    finally:
        server.kill()  # SIGKILL: no clean shutdown, no final index checkpoint
    address = server.start()
    try:
        with EventStore(address, topic="ledger") as client:
            after = {s.stream: s for s in client.list_streams(include_deleted=True)}
            before["acct-0"] = after["acct-0"]  # it took one more event, checked below
            assert after == before
            for name, events in contents.items():
                versions = [(e.version, e.event_id) for e in client.read_stream(name)]
                if name == "acct-0":
                    versions = versions[:-1]
                assert versions == events
            again = client.append_to_stream("acct-0", first.last_version - 1, retried)
            assert again.duplicate
            assert again.last_version == first.last_version
            assert client.append_to_stream("acct-6", NO_STREAM, EventData("Reopened", b"")
                                           ).first_version == before["acct-6"].last_version + 1
    finally:
        server.stop()
