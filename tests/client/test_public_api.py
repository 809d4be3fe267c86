"""The package's public names are exactly what __all__ says, and each resolves."""

from __future__ import annotations

from typing import Any

import pytest

import moldau
import moldau.errors


def test_all_is_exact_and_sorted() -> None:
    public = {name for name in vars(moldau) if not name.startswith("_")}
    modules = {"admin", "consumer", "errors", "producer", "testing", "v1", "cli", "eventstore",
               "aggregate", "projections", "queues", "exchanges", "worker"}
    assert set(moldau.__all__) == public - modules
    assert moldau.__all__ == sorted(moldau.__all__, key=lambda n: (not n.isupper(), n))


def test_every_error_descends_from_moldau_error() -> None:
    for name in moldau.errors.__all__:
        value = getattr(moldau.errors, name)
        if isinstance(value, type):
            assert issubclass(value, moldau.MoldauError)


def test_status_codes_map_to_the_tree() -> None:
    import grpc

    from moldau.errors import error_from_status

    codes = grpc.StatusCode
    assert isinstance(error_from_status(codes.NOT_FOUND, "topic 'x' does not exist"),
                      moldau.TopicNotFoundError)
    assert isinstance(error_from_status(5, "topic 'x' has partitions 0..0; partition 3 ..."),
                      moldau.PartitionNotFoundError)
    assert isinstance(error_from_status(codes.RESOURCE_EXHAUSTED, "batch is 9 bytes, over 8"),
                      moldau.RecordTooLargeError)
    assert isinstance(error_from_status(codes.UNAVAILABLE, "failed to connect to all addresses"),
                      moldau.ConnectionFailedError)
    unknown = error_from_status(codes.DATA_LOSS, "damaged")
    assert isinstance(unknown, moldau.ServerError)
    assert unknown.code == codes.DATA_LOSS
    assert isinstance(error_from_status(codes.UNAUTHENTICATED, "unknown token"),
                      moldau.AuthenticationError)
    assert isinstance(error_from_status(codes.PERMISSION_DENIED, "User:x may not READ"),
                      moldau.PermissionDeniedError)


def test_the_request_id_travels_with_the_error(tmp_path: Any) -> None:
    from moldau.testing import broker

    with (
        broker(data_dir=tmp_path / "data") as running,
        moldau.Admin(running.address) as admin,
        pytest.raises(moldau.TopicNotFoundError) as missing,
    ):
        admin.describe_topic("nope")
    assert len(missing.value.request_id) == 16  # made up by the server, as in its log lines
    int(missing.value.request_id, 16)


def test_the_server_error_class_decides_over_the_message() -> None:
    import grpc

    from moldau.errors import error_from_status

    codes = grpc.StatusCode
    cases = {
        "UnknownGroupError": moldau.GroupNotFoundError,
        "GroupNotEmptyError": moldau.GroupNotEmptyError,
        "StaleGenerationError": moldau.StaleGenerationError,
        "NotPartitionOwnerError": moldau.CommitFailedError,
        "InconsistentAssignorError": moldau.GroupMembershipError,
        "UnknownPartitionError": moldau.PartitionNotFoundError,
    }
    for reason, cls in cases.items():
        assert type(error_from_status(codes.FAILED_PRECONDITION, "any words", reason)) is cls
    # an unknown reason falls back to the status code and the wording
    assert isinstance(error_from_status(codes.NOT_FOUND, "topic 'x'", "NewError"),
                      moldau.TopicNotFoundError)
