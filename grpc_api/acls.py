"""AclService: create, delete and list ACL bindings; WhoAmI.

Who may call these is decided by the interceptor (:mod:`grpc_api.auth`; cluster ALTER to change,
cluster DESCRIBE to list). ACL changes append to ``__acls`` and wait for its fsync, so they run
on worker threads. With auth off the bindings are stored and listed but not enforced.
"""

from __future__ import annotations

from typing import Any

from engine.security import AclBinding, AclFilter, AclStore
from grpc_api.auth import Security
from grpc_api.errors import InvalidRequestError, NotReadyError, unary_errors
from grpc_api.runtime import Runtime
from moldau.v1 import security_pb2, security_pb2_grpc

__all__ = ["AclServicer"]


def _binding(message: security_pb2.AclBinding) -> AclBinding:
    return AclBinding.of(message.principal, message.resource_type, message.pattern_type,
                         message.resource_name, message.operation, message.permission)


def _filter(message: security_pb2.AclFilter) -> AclFilter:
    return AclFilter.of(message.principal, message.resource_type, message.pattern_type,
                        message.resource_name, message.operation, message.permission)


def _message(store: AclStore, binding: AclBinding) -> security_pb2.AclBinding:
    return security_pb2.AclBinding(
        principal=binding.principal,
        resource_type=binding.resource_type.value,
        pattern_type=binding.pattern_type.value,
        resource_name=binding.resource_name,
        operation=binding.operation.value,
        permission=binding.permission.value,
        created_ms=store.created_ms(binding) or 0,
    )


class AclServicer(security_pb2_grpc.AclServiceServicer):
    """Translates AclService calls into :class:`~engine.security.AclStore` operations."""

    def __init__(self, runtime: Runtime, security: Security) -> None:
        self._runtime = runtime
        self._security = security

    def _store(self) -> AclStore:
        self._runtime.broker()  # UNAVAILABLE while opening or closing
        store = self._security.acl_store
        if store is None:
            raise NotReadyError("the ACL store is still opening; retry shortly")
        return store

    @unary_errors
    async def CreateAcls(  # noqa: N802  (the RPC name from the proto)
        self, request: security_pb2.CreateAclsRequest, context: object
    ) -> security_pb2.CreateAclsResponse:
        if not request.acls:
            raise InvalidRequestError("acls is empty; send at least one binding")
        bindings = [_binding(message) for message in request.acls]
        store = self._store()
        created = await self._runtime.run(store.add, bindings)
        return security_pb2.CreateAclsResponse(created=[_message(store, b) for b in created])

    @unary_errors
    async def DeleteAcls(  # noqa: N802  (the RPC name from the proto)
        self, request: security_pb2.DeleteAclsRequest, context: object
    ) -> security_pb2.DeleteAclsResponse:
        if not request.filters:
            raise InvalidRequestError(
                "filters is empty; send at least one (an empty filter deletes every binding)"
            )
        filters = [_filter(message) for message in request.filters]
        store = self._store()
        deleted: list[security_pb2.AclBinding] = []
        for acl_filter in filters:
            # the message is built before the tombstone removes the creation time
            doomed = [_message(store, b) for b in store.list(acl_filter)]
            removed = set(await self._runtime.run(store.remove, acl_filter))
            deleted += [m for m in doomed if _binding(m) in removed]
        return security_pb2.DeleteAclsResponse(deleted=deleted)

    @unary_errors
    async def ListAcls(  # noqa: N802  (the RPC name from the proto)
        self, request: security_pb2.ListAclsRequest, context: object
    ) -> security_pb2.ListAclsResponse:
        acl_filter = _filter(request.filter)
        store = self._store()
        return security_pb2.ListAclsResponse(
            acls=[_message(store, b) for b in store.list(acl_filter)]
        )

    @unary_errors
    async def WhoAmI(  # noqa: N802  (the RPC name from the proto)
        self, request: security_pb2.WhoAmIRequest, context: Any
    ) -> security_pb2.WhoAmIResponse:
        identity = self._security.identify(context)  # the interceptor already accepted it
        return security_pb2.WhoAmIResponse(
            principal=identity.principal,
            method=identity.method,
            super_user=identity.principal in self._security.super_users,
            auth_enabled=self._security.auth_enabled,
        )
