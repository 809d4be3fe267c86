"""Topic name rules: Kafka's alphabet and length, plus the reserved internal prefix."""

from __future__ import annotations

import pytest

from engine.errors import InvalidTopicError, TopicError
from engine.topic_names import (
    INTERNAL_TOPIC_PREFIX,
    MAX_TOPIC_NAME_LENGTH,
    is_internal,
    validate_topic_name,
)


@pytest.mark.parametrize(
    "name",
    [
        "orders",
        "a",
        "A.b_c-d",
        "orders.v2",
        "0",
        "...",
        "-",
        "_private",
        "x" * MAX_TOPIC_NAME_LENGTH,
        "orders.retry",
        "orders.dlq",
    ],
)
def test_valid_names(name: str) -> None:
    validate_topic_name(name)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "cannot be empty"),
        (".", "'.' cannot name a topic"),
        ("..", "'..' cannot name a topic"),
        ("x" * 250, "250 characters long; the maximum is 249"),
        ("a/b", "contains '/'"),
        ("../etc", "contains '/'"),
        ("my topic", "contains ' '"),
        (" orders", "contains ' '"),
        ("naïve", "contains 'ï'"),
        ("caf\u00e9", "contains 'é'"),
        ("emoji-\U0001f600", "contains '\U0001f600'"),
        ("bad\udcff", "contains '\\udcff'"),  # undecodable byte smuggled in by surrogateescape
        ("tab\there", "contains '\\t'"),
        ("nul\x00", "contains '\\x00'"),
        ("a:b", "contains ':'"),
        ("a*b?c", "contains '*', '?'"),
        ("\uff4f\uff52\uff44\uff45\uff52\uff53", "use only ASCII letters, digits"),  # fullwidth
    ],
)
def test_invalid_names_say_what_to_fix(name: str, message: str) -> None:
    with pytest.raises(InvalidTopicError) as caught:
        validate_topic_name(name)
    assert message in str(caught.value)
    assert isinstance(caught.value, TopicError)


def test_internal_names_are_reserved() -> None:
    with pytest.raises(InvalidTopicError, match="reserved for the broker's internal topics"):
        validate_topic_name("__consumer_offsets")
    validate_topic_name("__consumer_offsets", allow_internal=True)
    validate_topic_name("_single_underscore")
    assert is_internal("__consumer_offsets")
    assert not is_internal("_x")


def test_internal_names_still_follow_the_alphabet() -> None:
    with pytest.raises(InvalidTopicError, match="contains '/'"):
        validate_topic_name("__a/b", allow_internal=True)


def test_constants() -> None:
    assert MAX_TOPIC_NAME_LENGTH == 249
    assert INTERNAL_TOPIC_PREFIX == "__"
