"""ACL administration and WhoAmI, mixed into :class:`~moldau.AsyncAdmin` and :class:`~moldau.Admin`.

Every method is one AclService call (see docs/security.md for the model). Like
:mod:`moldau._group_admin`, :class:`AsyncAclAdminMixin` needs its host to provide
:meth:`_acl_call`, and :class:`AclAdminMixin` needs ``_async`` and ``_thread``.

Values are the lower-case words of the API: resource types ``topic``, ``group``, ``queue``,
``exchange``, ``stream``, ``cluster``; pattern types ``literal`` and ``prefixed``; operations
``read``, ``write``, ``create``, ``delete``, ``alter``, ``describe``, ``all``; permissions
``allow`` and ``deny``. A malformed binding is refused with ``InvalidRequestError``; a caller
without cluster ALTER (create, delete) or DESCRIBE (list) gets code PERMISSION_DENIED.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from moldau._runtime import LoopThread
from moldau.v1 import security_pb2

__all__ = ["Acl", "AclAdminMixin", "AsyncAclAdminMixin", "WhoAmI"]


@dataclass(frozen=True, slots=True)
class Acl:
    """One ACL binding: ``permission`` for ``principal`` to do ``operation`` on a resource.

    ``created_ms`` is set in answers (when the server stored it) and ignored in requests.
    """

    principal: str
    resource_type: str
    resource_name: str
    operation: str
    permission: str = "allow"
    pattern_type: str = "literal"
    created_ms: int = 0

    def to_message(self) -> security_pb2.AclBinding:
        return security_pb2.AclBinding(
            principal=self.principal, resource_type=self.resource_type,
            pattern_type=self.pattern_type, resource_name=self.resource_name,
            operation=self.operation, permission=self.permission,
        )

    @classmethod
    def from_message(cls, message: security_pb2.AclBinding) -> Acl:
        return cls(message.principal, message.resource_type, message.resource_name,
                   message.operation, message.permission, message.pattern_type,
                   message.created_ms)


@dataclass(frozen=True, slots=True)
class WhoAmI:
    """The caller as the server sees it."""

    principal: str
    #: "token", "certificate" or "anonymous".
    method: str
    super_user: bool
    auth_enabled: bool


def acl_filter(
    principal: str | None = None,
    resource_type: str | None = None,
    resource_name: str | None = None,
    operation: str | None = None,
    permission: str | None = None,
    pattern_type: str | None = None,
) -> security_pb2.AclFilter:
    """A filter message; None fields match every value."""
    return security_pb2.AclFilter(
        principal=principal or "", resource_type=resource_type or "",
        resource_name=resource_name or "", operation=operation or "",
        permission=permission or "", pattern_type=pattern_type or "",
    )


class AsyncAclAdminMixin:
    """The asyncio ACL methods of :class:`~moldau.AsyncAdmin`."""

    async def _acl_call(self, name: str, request: object) -> Any:
        raise NotImplementedError  # provided by AsyncAdmin

    async def create_acls(self, acls: Iterable[Acl]) -> list[Acl]:
        """Store the bindings (fsynced); returns those that did not exist before."""
        request = security_pb2.CreateAclsRequest(acls=[acl.to_message() for acl in acls])
        reply = await self._acl_call("CreateAcls", request)
        return [Acl.from_message(m) for m in reply.created]

    async def delete_acls(self, **filter_fields: str | None) -> list[Acl]:
        """Delete every binding matching the filter (``principal=``, ``resource_type=``,
        ``resource_name=``, ``operation=``, ``permission=``, ``pattern_type=``; omitted fields
        match all); returns the deleted bindings."""
        request = security_pb2.DeleteAclsRequest(filters=[acl_filter(**filter_fields)])
        reply = await self._acl_call("DeleteAcls", request)
        return [Acl.from_message(m) for m in reply.deleted]

    async def list_acls(self, **filter_fields: str | None) -> list[Acl]:
        """Bindings matching the filter (same keywords as :meth:`delete_acls`), sorted."""
        request = security_pb2.ListAclsRequest(filter=acl_filter(**filter_fields))
        reply = await self._acl_call("ListAcls", request)
        return [Acl.from_message(m) for m in reply.acls]

    async def whoami(self) -> WhoAmI:
        """The principal this client authenticated as (to debug credentials)."""
        reply = await self._acl_call("WhoAmI", security_pb2.WhoAmIRequest())
        return WhoAmI(reply.principal, reply.method, reply.super_user, reply.auth_enabled)


class AclAdminMixin:
    """The blocking ACL methods of :class:`~moldau.Admin`."""

    _async: Any
    _thread: LoopThread

    def create_acls(self, acls: Iterable[Acl]) -> list[Acl]:
        result: list[Acl] = self._thread.run(self._async.create_acls(list(acls)))
        return result

    def delete_acls(self, **filter_fields: str | None) -> list[Acl]:
        result: list[Acl] = self._thread.run(self._async.delete_acls(**filter_fields))
        return result

    def list_acls(self, **filter_fields: str | None) -> list[Acl]:
        result: list[Acl] = self._thread.run(self._async.list_acls(**filter_fields))
        return result

    def whoami(self) -> WhoAmI:
        result: WhoAmI = self._thread.run(self._async.whoami())
        return result
