"""Which destinations a record goes to: the four exchange types' matching rules.

Routing key: a record's routing key is the value of its ``routing-key`` header when it has one
(the last such header; a null value is the empty key), otherwise its key (a null key is the
empty key). The header lets a producer partition by one key (an order id, for ordering) and
route by another (``eu.order.created``). Keys are compared as bytes: UTF-8 text matches the
UTF-8 of a pattern, and keys that are not UTF-8 still route (to direct bindings with the same
bytes, or to topic patterns by their words).

Rules (RabbitMQ's):

- direct: the routing key equals the binding key, byte for byte.
- fanout: every binding matches every record.
- topic: the routing key and the pattern are split at ``.`` into words (``a..b`` has three
  words, the middle one empty; the empty key has none). A pattern word ``*`` matches exactly
  one word (an empty one too), ``#`` matches zero or more words, any other word matches only
  itself. So ``#`` matches every key including the empty one, ``a.#`` matches ``a`` and
  ``a.b.c``, ``a.#.b`` matches ``a.b`` and ``a.x.y.b``, ``#.#`` is ``#``, and the empty pattern
  matches only the empty key. ``*`` and ``#`` are wildcards only as whole words (``a*`` is a
  literal word).
- headers: a binding lists header arguments and ``all`` or ``any``. An argument
  ``(key, value)`` matches when the record has a header ``key`` with exactly ``value``; an
  argument whose value is None matches when the record has a header ``key`` at all, whatever
  its value (RabbitMQ's ``void`` argument). A header present without value (null) matches
  only such presence arguments. With ``all`` every argument must match (no arguments: every
  record), with ``any`` at least one (no arguments: none). Repeated record headers match when
  any of them does.

Topic matching is a trie over pattern words: one walk per routing key visits only the branches
its words and the wildcards allow, so the cost grows with the key's words and the patterns that
share its prefixes, not with the number of bindings. A walk state is (trie node, words
consumed); states are visited once, so even ``#.#.#`` patterns stay linear in the key length.
Results are memoised per routing key (up to ``MEMO_ENTRIES`` keys; the memo is dropped whole
when full or when a binding changes), because a stream's keys repeat.

Concurrency: matchers are not thread-safe. The exchange registry changes them and the router
uses them under the registry's lock.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from engine.records.record import Header
from engine.views.routing.types import Binding, ExchangeType, HeadersMatch

__all__ = [
    "MEMO_ENTRIES",
    "ROUTING_KEY_HEADER",
    "DirectMatcher",
    "FanoutMatcher",
    "HeadersMatcher",
    "Matcher",
    "TopicMatcher",
    "new_matcher",
    "routing_key",
    "split_words",
]

ROUTING_KEY_HEADER = "routing-key"
MEMO_ENTRIES = 65_536
_STAR = b"*"
_HASH = b"#"
_NOTHING: frozenset[str] = frozenset()


def routing_key(key: bytes | None, headers: Sequence[Header]) -> bytes:
    """The routing key of a record with ``key`` and ``headers`` (see the module docstring)."""
    for header in reversed(headers):
        if header.key == ROUTING_KEY_HEADER:
            return header.value or b""
    return key or b""


def split_words(key: bytes) -> list[bytes]:
    """Words of a routing key or pattern: RabbitMQ splits ``""`` into no words at all."""
    return key.split(b".") if key else []


class Matcher(Protocol):
    """The bindings of one exchange, as a function from a record to destination topics."""

    def add(self, binding: Binding) -> None:
        """Add ``binding`` (already validated by the registry; adding twice is harmless)."""
        ...

    def remove(self, binding: Binding) -> None:
        """Remove ``binding``; removing an absent binding does nothing."""
        ...

    def match(self, key: bytes, headers: Sequence[Header]) -> frozenset[str]:
        """Destinations for a record with routing key ``key`` and ``headers``."""
        ...


class DirectMatcher:
    """Exact routing keys: one dict lookup per record."""

    def __init__(self) -> None:
        self._routes: dict[bytes, frozenset[str]] = {}

    def add(self, binding: Binding) -> None:
        key = binding.pattern.encode()
        self._routes[key] = self._routes.get(key, _NOTHING) | {binding.destination}

    def remove(self, binding: Binding) -> None:
        key = binding.pattern.encode()
        remaining = self._routes.get(key, _NOTHING) - {binding.destination}
        if remaining:
            self._routes[key] = remaining
        else:
            self._routes.pop(key, None)

    def match(self, key: bytes, headers: Sequence[Header]) -> frozenset[str]:
        return self._routes.get(key, _NOTHING)


class FanoutMatcher:
    """Every destination, whatever the record."""

    def __init__(self) -> None:
        self._destinations: frozenset[str] = _NOTHING

    def add(self, binding: Binding) -> None:
        self._destinations = self._destinations | {binding.destination}

    def remove(self, binding: Binding) -> None:
        self._destinations = self._destinations - {binding.destination}

    def match(self, key: bytes, headers: Sequence[Header]) -> frozenset[str]:
        return self._destinations


class _Node:
    """A trie node: the patterns that share the words leading here."""

    __slots__ = ("destinations", "hash", "star", "words")

    def __init__(self) -> None:
        self.words: dict[bytes, _Node] = {}
        self.star: _Node | None = None
        self.hash: _Node | None = None
        self.destinations: frozenset[str] = _NOTHING  # of the patterns that end here

    def child(self, word: bytes) -> _Node | None:
        if word == _STAR:
            return self.star
        if word == _HASH:
            return self.hash
        return self.words.get(word)

    def add_child(self, word: bytes) -> _Node:
        node = self.child(word)
        if node is None:
            node = _Node()
            if word == _STAR:
                self.star = node
            elif word == _HASH:
                self.hash = node
            else:
                self.words[word] = node
        return node

    def drop_child(self, word: bytes) -> None:
        if word == _STAR:
            self.star = None
        elif word == _HASH:
            self.hash = None
        else:
            del self.words[word]

    def is_empty(self) -> bool:
        return not (self.destinations or self.words or self.star or self.hash)


class TopicMatcher:
    """Topic patterns in a word trie, with memoised results per routing key."""

    def __init__(self, memo_entries: int = MEMO_ENTRIES) -> None:
        self._root = _Node()
        self._memo: dict[bytes, frozenset[str]] = {}
        self._memo_entries = memo_entries
        self._bindings = 0

    def __len__(self) -> int:
        return self._bindings

    def add(self, binding: Binding) -> None:
        node = self._root
        for word in split_words(binding.pattern.encode()):
            node = node.add_child(word)
        if binding.destination not in node.destinations:
            node.destinations = node.destinations | {binding.destination}
            self._bindings += 1
        self._memo.clear()

    def remove(self, binding: Binding) -> None:
        path: list[tuple[_Node, bytes]] = []
        node = self._root
        for word in split_words(binding.pattern.encode()):
            child = node.child(word)
            if child is None:
                return
            path.append((node, word))
            node = child
        if binding.destination not in node.destinations:
            return
        node.destinations = node.destinations - {binding.destination}
        self._bindings -= 1
        self._memo.clear()
        for parent, word in reversed(path):  # prune the branch the pattern no longer needs
            child = parent.child(word)
            if child is None or not child.is_empty():
                break
            parent.drop_child(word)

    def match(self, key: bytes, headers: Sequence[Header] = ()) -> frozenset[str]:
        found = self._memo.get(key)
        if found is None:
            found = self._walk(split_words(key))
            if len(self._memo) >= self._memo_entries:
                self._memo.clear()  # cheap and thread-agnostic; hot keys come straight back
            self._memo[key] = found
        return found

    def _walk(self, words: list[bytes]) -> frozenset[str]:
        """Every pattern matching ``words``: a depth-first walk over (node, words consumed)."""
        count = len(words)
        result: set[str] = set()
        stack: list[tuple[_Node, int]] = [(self._root, 0)]
        seen: set[tuple[int, int]] = set()
        while stack:
            node, index = stack.pop()
            state = (id(node), index)
            if state in seen:
                continue
            seen.add(state)
            hash_node = node.hash
            if hash_node is not None:  # '#' consumes words index..j-1, for every j >= index
                stack.extend((hash_node, j) for j in range(index, count + 1))
            if index == count:
                result.update(node.destinations)
                continue
            literal = node.words.get(words[index])
            if literal is not None:
                stack.append((literal, index + 1))
            if node.star is not None:
                stack.append((node.star, index + 1))
        return frozenset(result)


class HeadersMatcher:
    """Headers bindings, each tested against the record's headers (RabbitMQ is linear too)."""

    def __init__(self) -> None:
        self._bindings: dict[Binding, None] = {}  # insertion-ordered set

    def add(self, binding: Binding) -> None:
        self._bindings[binding] = None

    def remove(self, binding: Binding) -> None:
        self._bindings.pop(binding, None)

    def match(self, key: bytes, headers: Sequence[Header]) -> frozenset[str]:
        values: dict[str, set[bytes | None]] = {}
        for header in headers:
            values.setdefault(header.key, set()).add(header.value)
        found = set()
        for binding in self._bindings:
            if binding.destination not in found and _headers_match(binding, values):
                found.add(binding.destination)
        return frozenset(found)


def _headers_match(binding: Binding, values: dict[str, set[bytes | None]]) -> bool:
    def matches(argument: tuple[str, bytes | None]) -> bool:
        present = values.get(argument[0])
        if present is None:
            return False
        return argument[1] is None or argument[1] in present

    if binding.match is HeadersMatch.ALL:
        return all(map(matches, binding.arguments))
    return any(map(matches, binding.arguments))


def new_matcher(exchange_type: ExchangeType) -> Matcher:
    """An empty matcher for ``exchange_type``."""
    if exchange_type is ExchangeType.DIRECT:
        return DirectMatcher()
    if exchange_type is ExchangeType.FANOUT:
        return FanoutMatcher()
    if exchange_type is ExchangeType.TOPIC:
        return TopicMatcher()
    return HeadersMatcher()
