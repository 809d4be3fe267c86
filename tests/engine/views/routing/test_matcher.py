"""Matching rules: RabbitMQ's topic cases, a trie-vs-reference property, headers, direct, fanout."""

from __future__ import annotations

from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.records.record import Header
from engine.views.routing import (
    Binding,
    DirectMatcher,
    FanoutMatcher,
    HeadersMatch,
    HeadersMatcher,
    TopicMatcher,
    routing_key,
    split_words,
)

# RabbitMQ's own topic-exchange test (rabbit_exchange_type_topic, test_topic_matching):
# the same bindings and the queues each routing key must reach.
RABBIT_BINDINGS = [
    ("a.b.c", "t1"), ("a.*.c", "t2"), ("a.#.b", "t3"), ("a.b.b.c", "t4"), ("#", "t5"),
    ("#.#", "t6"), ("#.b", "t7"), ("*.*", "t8"), ("a.*", "t9"), ("*.b.c", "t10"),
    ("a.#", "t11"), ("a.#.#", "t12"), ("b.b.c", "t13"), ("a.b.b", "t14"), ("a.b", "t15"),
    ("b.c", "t16"), ("", "t17"), ("*.*.*", "t18"), ("vodka.martini", "t19"), ("a.b.c", "t20"),
    ("*.#", "t21"), ("#.*.#", "t22"), ("*.#.#", "t23"), ("#.#.#", "t24"), ("*", "t25"),
    ("#.b.#", "t26"),
]
RABBIT_CASES = [
    ("a.b.c", "t1 t2 t5 t6 t10 t11 t12 t18 t20 t21 t22 t23 t24 t26"),
    ("a.b", "t3 t5 t6 t7 t8 t9 t11 t12 t15 t21 t22 t23 t24 t26"),
    ("a.b.b", "t3 t5 t6 t7 t11 t12 t14 t18 t21 t22 t23 t24 t26"),
    ("", "t5 t6 t17 t24"),
    ("b.c.c", "t5 t6 t18 t21 t22 t23 t24 t26"),
    ("a.a.a.a.a", "t5 t6 t11 t12 t21 t22 t23 t24"),
    ("vodka.gin", "t5 t6 t8 t21 t22 t23 t24"),
    ("vodka.martini", "t5 t6 t8 t19 t21 t22 t23 t24"),
    ("b.b.c", "t5 t6 t10 t13 t18 t21 t22 t23 t24 t26"),
    ("nothing.here.at.all", "t5 t6 t21 t22 t23 t24"),
    ("oneword", "t5 t6 t21 t22 t23 t24 t25"),
]

# Single patterns: (pattern, routing key, matches?)
PATTERN_CASES = [
    ("a.*.b", "a.x.b", True),
    ("a.*.b", "a..b", True),  # '*' matches one empty word
    ("a..b", "a..b", True),  # empty words are words
    ("a..b", "a.b", False),
    ("a.*.b", "a.b", False),
    ("a.#.b", "a.b", True),  # '#' matches zero words
    ("a.#.b", "a.x.y.z.b", True),
    ("a.#.b", "a.x.y.z", False),
    ("#", "", True),  # '#' alone matches everything, the empty key included
    ("#", "a..b.", True),
    ("#.#", "", True),
    ("#.#", "a.b.c", True),
    ("#.#.a", "a", True),  # consecutive '#' may both match nothing
    ("a.#.#.b", "a.b", True),
    ("#.a", "a", True),  # leading '#'
    ("#.a", "x.y.a", True),
    ("#.a", "a.x", False),
    ("a.#", "a", True),  # trailing '#'
    ("a.#", "a.", True),  # 'a' and one empty word
    ("a.#", "ab", False),
    ("*", "", False),  # the empty key has no words
    ("*", ".", False),  # two empty words
    ("*.*", ".", True),
    ("a.*", "a.", True),
    ("a.*", "a", False),
    ("", "", True),  # the empty pattern matches only the empty key
    ("", "a", False),
    ("a*", "ab", False),  # wildcards only as whole words
    ("a*", "a*", True),
    ("*.b", "a.b.c", False),
    ("a.b", "a.b.c", False),
    ("#.b.#", "b", True),
    ("#.b.#", "a.c", False),
]


def _topic(*bindings: tuple[str, str]) -> TopicMatcher:
    matcher = TopicMatcher()
    for pattern, destination in bindings:
        matcher.add(Binding("x", destination, pattern))
    return matcher


@cache
def reference_match(pattern: tuple[bytes, ...], words: tuple[bytes, ...]) -> bool:
    """RabbitMQ's rules, recursively on word lists: the oracle for the trie."""
    if not pattern:
        return not words
    if pattern[0] == b"#":
        return reference_match(pattern[1:], words) or (
            bool(words) and reference_match(pattern, words[1:])
        )
    if not words:
        return False
    if pattern[0] in (b"*", words[0]):
        return reference_match(pattern[1:], words[1:])
    return False


def _reference(pattern: str, key: str) -> bool:
    return reference_match(tuple(split_words(pattern.encode())), tuple(split_words(key.encode())))


@pytest.mark.parametrize(("key", "expected"), RABBIT_CASES)
def test_rabbitmq_topic_cases(key: str, expected: str) -> None:
    matcher = _topic(*RABBIT_BINDINGS)
    assert matcher.match(key.encode()) == frozenset(expected.split())
    by_reference = {d for p, d in RABBIT_BINDINGS if _reference(p, key)}
    assert by_reference == set(expected.split())


@pytest.mark.parametrize(("pattern", "key", "expected"), PATTERN_CASES)
def test_topic_pattern(pattern: str, key: str, expected: bool) -> None:
    assert bool(_topic((pattern, "d")).match(key.encode())) is expected
    assert _reference(pattern, key) is expected


def test_split_words_follows_rabbitmq() -> None:
    assert split_words(b"") == []
    assert split_words(b"a..b") == [b"a", b"", b"b"]
    assert split_words(b".") == [b"", b""]


def test_remove_prunes_and_keeps_other_patterns() -> None:
    matcher = _topic(("a.#", "d1"), ("a.*", "d2"), ("a.*", "d3"))
    assert matcher.match(b"a.b") == {"d1", "d2", "d3"}  # memoised ...
    matcher.remove(Binding("x", "d2", "a.*"))
    assert matcher.match(b"a.b") == {"d1", "d3"}  # ... and the memo dropped on change
    matcher.remove(Binding("x", "d3", "a.*"))
    matcher.remove(Binding("x", "d3", "a.*"))  # absent: nothing happens
    matcher.remove(Binding("x", "d9", "q.r.s"))
    assert matcher.match(b"a.b") == {"d1"}
    assert len(matcher) == 1
    matcher.remove(Binding("x", "d1", "a.#"))
    assert matcher.match(b"a.b") == frozenset()
    assert len(matcher) == 0


def test_memo_is_bounded() -> None:
    matcher = TopicMatcher(memo_entries=4)
    matcher.add(Binding("x", "d", "k.*"))
    for i in range(20):
        assert matcher.match(b"k.%d" % i) == {"d"}
    assert len(matcher._memo) <= 4


_WORDS = st.sampled_from([b"a", b"b", b"", b"c"])
_PATTERN_WORDS = st.sampled_from([b"a", b"b", b"", b"*", b"#"])


@settings(max_examples=300, deadline=None)
@given(
    patterns=st.lists(st.lists(_PATTERN_WORDS, max_size=5), min_size=1, max_size=12),
    keys=st.lists(st.lists(_WORDS, max_size=6), min_size=1, max_size=12),
)
def test_trie_agrees_with_reference(patterns: list[list[bytes]], keys: list[list[bytes]]) -> None:
    matcher = TopicMatcher()
    for index, words in enumerate(patterns):
        matcher.add(Binding("x", f"d{index}", b".".join(words).decode()))
    for key_words in keys:
        key = b".".join(key_words)
        words = tuple(split_words(key))
        expected = {
            f"d{index}"
            for index, pattern in enumerate(patterns)
            if reference_match(tuple(split_words(b".".join(pattern))), words)
        }
        assert matcher.match(key) == expected, key


def _headers(**values: bytes | None) -> tuple[Header, ...]:
    return tuple(Header(k.replace("_", "-"), v) for k, v in values.items())


def test_headers_all_and_any() -> None:
    matcher = HeadersMatcher()
    arguments = (("format", b"pdf"), ("type", b"report"))
    matcher.add(Binding("x", "all", "", arguments, HeadersMatch.ALL))
    matcher.add(Binding("x", "any", "", arguments, HeadersMatch.ANY))
    assert matcher.match(b"", _headers(format=b"pdf", type=b"report")) == {"all", "any"}
    assert matcher.match(b"", _headers(format=b"pdf", type=b"log", extra=b"1")) == {"any"}
    assert matcher.match(b"", _headers(format=b"zip")) == frozenset()
    assert matcher.match(b"", ()) == frozenset()


def test_headers_presence_and_null_values() -> None:
    matcher = HeadersMatcher()
    matcher.add(Binding("x", "present", "", (("trace", None),), HeadersMatch.ALL))
    matcher.add(Binding("x", "valued", "", (("trace", b"on"),), HeadersMatch.ALL))
    assert matcher.match(b"", _headers(trace=b"on")) == {"present", "valued"}
    assert matcher.match(b"", _headers(trace=None)) == {"present"}  # present without value
    assert matcher.match(b"", _headers(other=b"on")) == frozenset()


def test_headers_repeated_header_matches_any_occurrence() -> None:
    matcher = HeadersMatcher()
    matcher.add(Binding("x", "d", "", (("tag", b"b"),), HeadersMatch.ALL))
    assert matcher.match(b"", (Header("tag", b"a"), Header("tag", b"b"))) == {"d"}


def test_headers_empty_arguments_follow_rabbitmq() -> None:
    matcher = HeadersMatcher()
    matcher.add(Binding("x", "all", "", (), HeadersMatch.ALL))
    matcher.add(Binding("x", "any", "", (), HeadersMatch.ANY))
    assert matcher.match(b"", _headers(a=b"1")) == {"all"}
    matcher.remove(Binding("x", "all", "", (), HeadersMatch.ALL))
    assert matcher.match(b"", ()) == frozenset()


def test_direct_is_exact() -> None:
    matcher = DirectMatcher()
    matcher.add(Binding("x", "d1", "eu.order"))
    matcher.add(Binding("x", "d2", "eu.order"))
    matcher.add(Binding("x", "d3", ""))
    assert matcher.match(b"eu.order", ()) == {"d1", "d2"}
    assert matcher.match(b"eu.orders", ()) == frozenset()
    assert matcher.match(b"", ()) == {"d3"}
    matcher.remove(Binding("x", "d1", "eu.order"))
    matcher.remove(Binding("x", "d3", ""))
    assert matcher.match(b"eu.order", ()) == {"d2"}
    assert matcher.match(b"", ()) == frozenset()


def test_fanout_matches_everything() -> None:
    matcher = FanoutMatcher()
    assert matcher.match(b"k", ()) == frozenset()
    matcher.add(Binding("x", "d1"))
    matcher.add(Binding("x", "d2"))
    assert matcher.match(b"", ()) == {"d1", "d2"}
    assert matcher.match(b"any.key", _headers(a=b"1")) == {"d1", "d2"}
    matcher.remove(Binding("x", "d1"))
    assert matcher.match(b"k", ()) == {"d2"}


def test_routing_key_prefers_the_header() -> None:
    assert routing_key(b"order-1", ()) == b"order-1"
    assert routing_key(None, ()) == b""
    assert routing_key(b"k", (Header("routing-key", b"eu.x"),)) == b"eu.x"
    assert routing_key(b"k", (Header("routing-key", b"a"), Header("routing-key", b"b"))) == b"b"
    assert routing_key(b"k", (Header("routing-key", None),)) == b""
    assert routing_key(b"k", (Header("other", b"z"),)) == b"k"
