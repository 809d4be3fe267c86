"""Access control: ACL bindings, their persistent store and the authorizer (no gRPC here).

- :mod:`engine.security.acls`: the model (resource types, operations, bindings, filters) and
  :class:`Authorizer` with Kafka's rules.
- :mod:`engine.security.store`: :class:`AclStore`, bindings kept in the compacted internal
  topic ``__acls`` and replayed on open.

Authentication (tokens, certificates) and the per-RPC rules live in ``grpc_api.auth``.
"""

from engine.security.acls import (
    ANONYMOUS,
    ANY_USER,
    CLUSTER_NAME,
    WILDCARD_NAME,
    AclBinding,
    AclFilter,
    AclSource,
    Authorizer,
    InMemoryAcls,
    Operation,
    PatternType,
    Permission,
    ResourceType,
    validate_principal,
)
from engine.security.store import ACLS_TOPIC, AclStore

__all__ = [
    "ACLS_TOPIC",
    "ANONYMOUS",
    "ANY_USER",
    "CLUSTER_NAME",
    "WILDCARD_NAME",
    "AclBinding",
    "AclFilter",
    "AclSource",
    "AclStore",
    "Authorizer",
    "InMemoryAcls",
    "Operation",
    "PatternType",
    "Permission",
    "ResourceType",
    "validate_principal",
]
