"""The ACL model: who (principal) may do what (operation) to which resource, and the authorizer.

An :class:`AclBinding` allows or denies one principal one operation on resources named
literally or by prefix. :class:`Authorizer` decides a request from the bindings an
:class:`AclSource` holds (the persistent :class:`~engine.security.store.AclStore`, or
:class:`InMemoryAcls` in tests), with Kafka's rules:

1. super users (from the server config) may do everything;
2. a matching DENY wins over any ALLOW;
3. otherwise a matching ALLOW permits; nothing matching means denied (deny by default);
4. an ALLOW of read, write, delete or alter also allows describe; ``all`` matches every
   operation (a DENY of read does not deny describe);
5. a binding's principal matches the caller's exactly; ``User:*`` matches every authenticated
   principal (not ``User:ANONYMOUS``);
6. a literal name matches only itself (``orders`` never matches ``orders2``), the literal name
   ``*`` matches every name, and a prefixed name matches every name that starts with it.

Principals are ``User:<name>``: from a bearer token's name, an mTLS certificate's common name,
or ``User:ANONYMOUS`` for a caller with neither.

Concurrency: :meth:`Authorizer.authorize` may be called from any thread. It caches decisions
per (principal, resource type, name, operation) and drops the cache whenever the source's
``version`` changes (every add or remove), so a revoked ACL takes effect on the next call.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, TypeVar

from engine.errors import InvalidAclError

__all__ = [
    "ANONYMOUS",
    "ANY_USER",
    "CLUSTER_NAME",
    "WILDCARD_NAME",
    "AclBinding",
    "AclFilter",
    "AclSource",
    "Authorizer",
    "InMemoryAcls",
    "Operation",
    "PatternType",
    "Permission",
    "ResourceType",
    "decode_binding",
    "encode_binding",
    "validate_principal",
]


class ResourceType(StrEnum):
    TOPIC = "topic"
    GROUP = "group"
    QUEUE = "queue"
    EXCHANGE = "exchange"
    #: An event-store stream, named ``<store topic>/<stream id>``; a category is the prefix
    #: ``<store topic>/<category>-``.
    STREAM = "stream"
    #: The broker itself (ACL administration); its only name is :data:`CLUSTER_NAME`.
    CLUSTER = "cluster"


class Operation(StrEnum):
    READ = "read"
    WRITE = "write"
    CREATE = "create"
    DELETE = "delete"
    ALTER = "alter"
    DESCRIBE = "describe"
    ALL = "all"


class PatternType(StrEnum):
    LITERAL = "literal"
    PREFIXED = "prefixed"


class Permission(StrEnum):
    ALLOW = "allow"
    DENY = "deny"


ANONYMOUS = "User:ANONYMOUS"
ANY_USER = "User:*"
CLUSTER_NAME = "cluster"
WILDCARD_NAME = "*"
_USER_PREFIX = "User:"
_E = TypeVar("_E", bound=StrEnum)
_MAX_TEXT_BYTES = 1024
#: Operations whose ALLOW implies DESCRIBE (Kafka's rule).
_IMPLIES_DESCRIBE = frozenset(
    {Operation.READ, Operation.WRITE, Operation.DELETE, Operation.ALTER, Operation.ALL}
)


@dataclass(frozen=True, slots=True, order=True)
class AclBinding:
    """One rule: ``permission`` for ``principal`` to do ``operation`` on matching resources.

    Construct with :meth:`of` to validate and convert plain strings.
    """

    principal: str
    resource_type: ResourceType
    pattern_type: PatternType
    resource_name: str
    operation: Operation
    permission: Permission

    @classmethod
    def of(
        cls,
        principal: str,
        resource_type: str,
        pattern_type: str,
        resource_name: str,
        operation: str,
        permission: str,
    ) -> AclBinding:
        """A validated binding from strings (as the API and the CLI carry them).

        Raises:
            InvalidAclError: the message names the field and what is allowed.
        """
        binding = cls(
            validate_principal(principal),
            _enum(ResourceType, "resource_type", resource_type),
            _enum(PatternType, "pattern_type", pattern_type or PatternType.LITERAL),
            resource_name,
            _enum(Operation, "operation", operation),
            _enum(Permission, "permission", permission or Permission.ALLOW),
        )
        binding.validate()
        return binding

    def validate(self) -> None:
        """Raises InvalidAclError unless every field is usable."""
        validate_principal(self.principal)
        if not self.resource_name:
            raise InvalidAclError("resource_name must not be empty (use '*' for every name)")
        if len(self.resource_name.encode()) > _MAX_TEXT_BYTES:
            raise InvalidAclError(f"resource_name is longer than {_MAX_TEXT_BYTES} bytes")
        if self.resource_type is ResourceType.CLUSTER and (
            self.pattern_type is not PatternType.LITERAL
            or self.resource_name not in (CLUSTER_NAME, WILDCARD_NAME)
        ):
            raise InvalidAclError(
                f"a cluster ACL names the literal resource {CLUSTER_NAME!r}, got "
                f"{self.pattern_type} {self.resource_name!r}"
            )

    def matches_resource(self, name: str) -> bool:
        """Whether this binding's resource pattern covers ``name``."""
        if self.pattern_type is PatternType.PREFIXED:
            return name.startswith(self.resource_name)
        return self.resource_name in (name, WILDCARD_NAME)

    def __str__(self) -> str:
        return (
            f"{self.permission} {self.principal} {self.operation} on {self.resource_type} "
            f"{self.pattern_type} {self.resource_name!r}"
        )


@dataclass(frozen=True, slots=True)
class AclFilter:
    """Selects bindings: each field that is not None must equal the binding's."""

    principal: str | None = None
    resource_type: ResourceType | None = None
    pattern_type: PatternType | None = None
    resource_name: str | None = None
    operation: Operation | None = None
    permission: Permission | None = None

    @classmethod
    def of(
        cls,
        principal: str = "",
        resource_type: str = "",
        pattern_type: str = "",
        resource_name: str = "",
        operation: str = "",
        permission: str = "",
    ) -> AclFilter:
        """A filter from strings where "" means any value."""
        return cls(
            principal or None,
            _enum(ResourceType, "resource_type", resource_type) if resource_type else None,
            _enum(PatternType, "pattern_type", pattern_type) if pattern_type else None,
            resource_name or None,
            _enum(Operation, "operation", operation) if operation else None,
            _enum(Permission, "permission", permission) if permission else None,
        )

    @classmethod
    def exact(cls, binding: AclBinding) -> AclFilter:
        return cls(binding.principal, binding.resource_type, binding.pattern_type,
                   binding.resource_name, binding.operation, binding.permission)

    def matches(self, binding: AclBinding) -> bool:
        return all(
            wanted is None or wanted == actual
            for wanted, actual in (
                (self.principal, binding.principal),
                (self.resource_type, binding.resource_type),
                (self.pattern_type, binding.pattern_type),
                (self.resource_name, binding.resource_name),
                (self.operation, binding.operation),
                (self.permission, binding.permission),
            )
        )


def validate_principal(principal: str) -> str:
    """``principal`` if it is ``User:<name>``; InvalidAclError otherwise."""
    name = principal.removeprefix(_USER_PREFIX)
    if name == principal or not name or len(principal.encode()) > _MAX_TEXT_BYTES:
        raise InvalidAclError(
            f"principal must be User:<name> (e.g. User:alice, User:* or User:ANONYMOUS), "
            f"got {principal!r}"
        )
    return principal


def _enum(kind: type[_E], field: str, value: str) -> _E:
    try:
        return kind(value.lower())
    except ValueError:
        allowed = ", ".join(member.value for member in kind)
        raise InvalidAclError(f"{field} must be one of {allowed}; got {value!r}") from None


# ---------------------------------------------------------------------------- record key

_KEY_VERSION = 1
_INT16 = struct.Struct(">h")


def encode_binding(binding: AclBinding) -> bytes:
    """The canonical record key of a binding: int16 version 1, then the six fields in
    declaration order, each an int16 length and UTF-8 bytes. Equal bindings, equal keys."""
    parts = [_INT16.pack(_KEY_VERSION)]
    for text in (binding.principal, binding.resource_type, binding.pattern_type,
                 binding.resource_name, binding.operation, binding.permission):
        data = str(text).encode()
        parts += (_INT16.pack(len(data)), data)
    return b"".join(parts)


def decode_binding(data: bytes) -> AclBinding:
    """Inverse of :func:`encode_binding`; ValueError (or InvalidAclError) for anything else."""
    (version,) = _INT16.unpack_from(data, 0)
    if version != _KEY_VERSION:
        raise ValueError(f"unknown ACL key version {version}")
    position = 2
    texts: list[str] = []
    for _ in range(6):
        (length,) = _INT16.unpack_from(data, position)
        if length < 0 or position + 2 + length > len(data):
            raise ValueError("ACL key string overruns the key")
        texts.append(data[position + 2 : position + 2 + length].decode())
        position += 2 + length
    if position != len(data):
        raise ValueError("ACL key has trailing bytes")
    return AclBinding.of(*texts)


# ---------------------------------------------------------------------------- authorizer


class AclSource(Protocol):
    """Where the authorizer reads bindings; ``version`` changes whenever they do."""

    @property
    def version(self) -> int: ...

    def list(self, acl_filter: AclFilter | None = None) -> list[AclBinding]: ...


class InMemoryAcls:
    """An :class:`AclSource` kept in memory only (tests, and servers without storage)."""

    def __init__(self, bindings: Iterable[AclBinding] = ()) -> None:
        self._bindings: set[AclBinding] = set(bindings)
        self._version = 0
        self._lock = threading.Lock()

    @property
    def version(self) -> int:
        return self._version

    def add(self, bindings: Iterable[AclBinding]) -> list[AclBinding]:
        with self._lock:
            added = sorted(set(bindings) - self._bindings)
            self._bindings.update(added)
            self._version += 1
        return added

    def remove(self, acl_filter: AclFilter) -> list[AclBinding]:
        with self._lock:
            removed = sorted(b for b in self._bindings if acl_filter.matches(b))
            self._bindings.difference_update(removed)
            self._version += 1
        return removed

    def list(self, acl_filter: AclFilter | None = None) -> list[AclBinding]:
        with self._lock:
            return sorted(b for b in self._bindings if acl_filter is None or acl_filter.matches(b))


_CacheKey = tuple[str, ResourceType, str, Operation]


class Authorizer:
    """Decides requests from an :class:`AclSource` (see the module docstring for the rules).

    Args:
        source: The bindings.
        super_users: Principals that bypass ACLs entirely.
        max_cache_entries: The decision cache is emptied when it grows past this (names come
            from requests, so an unbounded cache would be a memory leak under fuzzing).
    """

    def __init__(
        self,
        source: AclSource,
        super_users: Iterable[str] = (),
        *,
        max_cache_entries: int = 65_536,
    ) -> None:
        self._source = source
        self.super_users = frozenset(super_users)
        self._max_cache_entries = max_cache_entries
        self._lock = threading.Lock()
        self._version = -1
        self._by_type: dict[ResourceType, list[AclBinding]] = {}
        self._cache: dict[_CacheKey, bool] = {}

    def authorize(
        self, principal: str, resource_type: ResourceType, name: str, operation: Operation
    ) -> bool:
        """Whether ``principal`` may do ``operation`` on the resource ``resource_type``/``name``."""
        if principal in self.super_users:
            return True
        if self._source.version != self._version:
            self._reload()
        key = (principal, resource_type, name, operation)
        decision = self._cache.get(key)
        if decision is None:
            decision = self._decide(principal, resource_type, name, operation)
            if len(self._cache) >= self._max_cache_entries:
                self._cache = {}
            self._cache[key] = decision
        return decision

    def _reload(self) -> None:
        with self._lock:
            version = self._source.version  # read before listing: a change after it reloads
            by_type: dict[ResourceType, list[AclBinding]] = {}
            for binding in self._source.list():
                by_type.setdefault(binding.resource_type, []).append(binding)
            self._by_type = by_type
            self._cache = {}
            self._version = version

    def _decide(
        self, principal: str, resource_type: ResourceType, name: str, operation: Operation
    ) -> bool:
        principals = {principal} if principal == ANONYMOUS else {principal, ANY_USER}
        allowed = False
        for binding in self._by_type.get(resource_type, ()):
            if binding.principal not in principals or not binding.matches_resource(name):
                continue
            if binding.permission is Permission.DENY:
                if binding.operation in (operation, Operation.ALL):
                    return False
            elif binding.operation in (operation, Operation.ALL) or (
                operation is Operation.DESCRIBE and binding.operation in _IMPLIES_DESCRIBE
            ):
                allowed = True
        return allowed
