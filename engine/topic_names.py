"""Which strings may name a topic: Kafka's rules, plus a reserved prefix for internal topics.

A legal name is 1 to 249 characters of ASCII letters, digits, ``.``, ``_`` and ``-``, and is
not ``.`` or ``..``. The limit and the alphabet come from Kafka: a topic name becomes a
directory name (``<topic>-<partition>``, see :mod:`engine.log.files`), so it must be safe in a
path on every file system, and 249 leaves six of the usual 255 bytes of a file name for the
``-`` and the partition number. Names starting with ``__`` belong to the broker
(``__consumer_offsets`` and the views' state topics).
"""

from __future__ import annotations

import re

from engine.errors import InvalidTopicError

__all__ = ["INTERNAL_TOPIC_PREFIX", "MAX_TOPIC_NAME_LENGTH", "is_internal", "validate_topic_name"]

MAX_TOPIC_NAME_LENGTH = 249
INTERNAL_TOPIC_PREFIX = "__"

_LEGAL = re.compile(r"[A-Za-z0-9._-]+")
_ALLOWED = "ASCII letters, digits, '.', '_' and '-'"


def is_internal(name: str) -> bool:
    """True for names reserved to the broker."""
    return name.startswith(INTERNAL_TOPIC_PREFIX)


def validate_topic_name(name: str, allow_internal: bool = False) -> None:
    """Accept ``name`` or raise saying what to change.

    Args:
        name: the proposed topic name.
        allow_internal: let the broker itself create ``__``-prefixed topics.

    Raises:
        InvalidTopicError: empty, too long, ``.``/``..``, characters outside the alphabet, or
            an internal name without ``allow_internal``.
    """
    if not name:
        raise InvalidTopicError(f"a topic name cannot be empty; use 1 to 249 {_ALLOWED}")
    if len(name) > MAX_TOPIC_NAME_LENGTH:
        raise InvalidTopicError(
            f"topic name is {len(name)} characters long; the maximum is "
            f"{MAX_TOPIC_NAME_LENGTH}: shorten it (it starts {name[:40]!r})"
        )
    if name in (".", ".."):
        raise InvalidTopicError(
            f"{name!r} cannot name a topic (it means a directory); add letters or digits"
        )
    if not _LEGAL.fullmatch(name):
        bad = sorted({c for c in name if not _LEGAL.fullmatch(c)})
        shown = ", ".join(repr(c) for c in bad)
        raise InvalidTopicError(f"topic name {name!r} contains {shown}; use only {_ALLOWED}")
    if is_internal(name) and not allow_internal:
        raise InvalidTopicError(
            f"topic name {name!r} starts with {INTERNAL_TOPIC_PREFIX!r}, which is reserved for "
            "the broker's internal topics; choose a name without that prefix"
        )
