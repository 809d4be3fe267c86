"""Authentication, authorisation and quotas for every RPC, in one server interceptor.

Who is calling (:meth:`Security.identify`), in order:

1. ``authorization: Bearer <token>`` metadata: the token's SHA-256 is compared with every entry
   of the tokens file (``[tokens]`` table of ``name = "sha256:<hex>"``; only hashes are stored)
   using ``hmac.compare_digest`` against all of them, so the time taken does not depend on
   which entry matches. A match is ``User:<name>``; no match is UNAUTHENTICATED. The file is
   re-read when it changes (checked at most once a second), so removing a line revokes a token
   without a restart;
2. else the verified mTLS client certificate's common name: ``User:<CN>``;
3. else ``User:ANONYMOUS``, refused with UNAUTHENTICATED unless anonymous callers are allowed
   (``allow_anonymous``: ``auto`` allows them only on a loopback listen).

What the caller may do comes from the rule of the method (:mod:`grpc_api.auth_rules`) and the
ACLs (:class:`~engine.security.Authorizer`): a refusal is PERMISSION_DENIED naming the
principal, the operation and the resource; a method without a rule is refused as a bug.

The interceptor is installed only when auth or a quota is on (:meth:`Security.interceptors`):
with both off the server runs exactly as before. It wraps each method handler, keeping its
(de)serializers, so hand-written ones such as FetchService's stay in place.

Concurrency: event loop thread only, except the authorizer (thread-safe).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import ssl
import time
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import grpc

from engine.security import ANONYMOUS, AclStore, Authorizer, Operation, ResourceType
from grpc_api.auth_rules import Access, Requirement, Rule, rule_for
from grpc_api.config import ConfigError, ServerConfig
from grpc_api.errors import ERROR_METADATA_KEY, NotReadyError, observe_refusal
from grpc_api.quotas import QuotaKind, Quotas, Throttle
from grpc_api.wire import RawBatches

__all__ = [
    "AuthInterceptor",
    "Identity",
    "Security",
    "TokenTable",
    "hash_token",
]

log = logging.getLogger(__name__)

_HASH_PREFIX = "sha256:"
_BEARER = "bearer "
_RELOAD_CHECK_S = 1.0
_S = grpc.StatusCode
_BAD_TOKEN = (
    "the token is not valid; check MOLDAU_TOKEN or --token (it may have been revoked), and "
    "compare 'moldau token hash' of it with the server's tokens file"
)
_NEED_CREDENTIALS = (
    "this server requires authentication: pass a bearer token (MOLDAU_TOKEN or --token) or a "
    "client certificate (MOLDAU_TLS_CERT_FILE and MOLDAU_TLS_KEY_FILE)"
)


def hash_token(token: str) -> str:
    """The tokens-file form of ``token``: ``sha256:`` and the hex SHA-256 of its UTF-8."""
    return _HASH_PREFIX + hashlib.sha256(token.encode()).hexdigest()


class TokenTable:
    """Token digests by principal, from a TOML tokens file (see the module docstring)."""

    def __init__(self, digests: dict[str, bytes], path: Path | None = None) -> None:
        self._entries = sorted(digests.items())
        self._path = path
        self._mtime = _mtime(path) if path is not None else None
        self._checked = time.monotonic()

    @classmethod
    def load(cls, path: str | Path) -> TokenTable:
        """Read and check the file; ConfigError names what is wrong."""
        path = Path(path)
        try:
            with path.open("rb") as handle:
                raw = tomllib.load(handle)
        except OSError as exc:
            raise ConfigError(f"cannot read auth_tokens_file {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"auth_tokens_file {path} is not valid TOML: {exc}") from exc
        tokens = raw.get("tokens")
        if not isinstance(tokens, dict) or set(raw) - {"tokens"}:
            raise ConfigError(
                f'auth_tokens_file {path} must hold one [tokens] table of name = "sha256:<hex>"'
            )
        digests: dict[str, bytes] = {}
        for name, value in tokens.items():
            hex_digest = value.removeprefix(_HASH_PREFIX) if isinstance(value, str) else ""
            try:
                digest = bytes.fromhex(hex_digest)
            except ValueError:
                digest = b""
            if not name or len(digest) != hashlib.sha256().digest_size or hex_digest == value:
                raise ConfigError(
                    f"auth_tokens_file {path}: token {name!r} must be \"sha256:<64 hex digits>\" "
                    "(print it with 'moldau token hash'; plain tokens are never stored)"
                )
            digests[f"User:{name}"] = digest
        return cls(digests, path)

    def lookup(self, token: str) -> str | None:
        """The principal whose digest matches ``token``; every entry is compared."""
        self._maybe_reload()
        digest = hashlib.sha256(token.encode()).digest()
        found = None
        for principal, expected in self._entries:
            if hmac.compare_digest(digest, expected):  # no early exit: constant per table
                found = principal
        return found

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if self._path is None or now - self._checked < _RELOAD_CHECK_S:
            return
        self._checked = now
        mtime = _mtime(self._path)
        if mtime == self._mtime:
            return
        try:
            fresh = TokenTable.load(self._path)
        except ConfigError as exc:  # keep serving with the tokens we have
            log.error("tokens file not reloaded: %s", exc)
            self._mtime = mtime
            return
        self._entries, self._mtime = fresh._entries, mtime
        log.info("reloaded %d tokens from %s", len(self._entries), self._path)


def _mtime(path: Path) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


@dataclass(frozen=True, slots=True)
class Identity:
    principal: str
    #: "token", "certificate" or "anonymous".
    method: str


class _RefusalError(Exception):
    def __init__(self, code: Any, message: str, reason: str,
                 metadata: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.metadata = ((ERROR_METADATA_KEY, reason), *metadata)


class Security:
    """Credentials, the authorizer and the quotas of one server; see the module docstring."""

    def __init__(
        self, config: ServerConfig, tokens: TokenTable | None = None,
        quotas: Quotas | None = None,
    ) -> None:
        self.config = config
        self.auth_enabled = config.auth_enabled
        self.anonymous_allowed = config.anonymous_allowed
        self.super_users = config.super_user_set
        self.tokens = tokens
        self.quotas = quotas if quotas is not None and quotas.enabled else None
        self.acl_store: AclStore | None = None
        self.authorizer: Authorizer | None = None

    @classmethod
    def from_config(cls, config: ServerConfig) -> Security:
        """Load the tokens file named by ``config``; ConfigError when it is unusable."""
        tokens = TokenTable.load(config.auth_tokens_file) if config.auth_tokens_file else None
        quotas = Quotas(config.quota_produce_bytes_per_sec, config.quota_fetch_bytes_per_sec,
                        config.quota_requests_per_sec)
        return cls(config, tokens, quotas)

    def set_store(self, store: AclStore) -> None:
        """Called once the broker is open: ACL decisions become possible."""
        self.acl_store = store
        self.authorizer = Authorizer(store, self.super_users)

    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        """The interceptor when auth or a quota is on; none otherwise (zero overhead)."""
        if self.auth_enabled or self.quotas is not None:
            return [AuthInterceptor(self)]
        return []

    def server_credentials(self) -> Any:
        """``grpc.ssl_server_credentials`` for a TLS listen, None for plaintext."""
        config = self.config
        if not config.tls_enabled:
            return None
        try:
            key = Path(config.tls_key_file).read_bytes()
            cert = Path(config.tls_cert_file).read_bytes()
            ca = Path(config.tls_client_ca_file).read_bytes() if config.tls_client_ca_file else None
        except OSError as exc:
            raise ConfigError(f"cannot read {exc.filename}: {exc.strerror}") from exc
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        """The same TLS setup for the TCP port (None for plaintext)."""
        config = self.config
        if not config.tls_enabled:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(config.tls_cert_file, config.tls_key_file)
            if config.tls_client_ca_file:
                context.load_verify_locations(config.tls_client_ca_file)
                context.verify_mode = ssl.CERT_REQUIRED
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the TLS files: {exc}") from exc
        return context

    # ------------------------------------------------------------------ decisions

    def identify(self, context: Any) -> Identity:
        """The caller's identity; raises _RefusalError (UNAUTHENTICATED) for bad credentials."""
        token = None
        for key, value in context.invocation_metadata() or ():
            if (key == "authorization" and isinstance(value, str)
                    and value[: len(_BEARER)].lower() == _BEARER):
                token = value[len(_BEARER):].strip()
        if token is not None and self.tokens is not None:
            principal = self.tokens.lookup(token)
            if principal is None:
                raise _RefusalError(_S.UNAUTHENTICATED, _BAD_TOKEN, "InvalidTokenError")
            return Identity(principal, "token")
        if token is not None and self.auth_enabled:
            raise _RefusalError(_S.UNAUTHENTICATED,
                           "this server does not accept tokens; authenticate with a client "
                           "certificate", "InvalidTokenError")
        common_names = (context.auth_context() or {}).get("x509_common_name")
        if common_names:
            return Identity("User:" + bytes(common_names[0]).decode("utf-8", "replace"),
                            "certificate")
        if self.auth_enabled and not self.anonymous_allowed:
            raise _RefusalError(_S.UNAUTHENTICATED, _NEED_CREDENTIALS,
                                "AuthenticationRequiredError")
        return Identity(ANONYMOUS, "anonymous")

    def allowed(self, principal: str, resource_type: ResourceType, name: str,
                operation: Operation) -> bool:
        """The ACL decision; everything is allowed with auth off."""
        if not self.auth_enabled or principal in self.super_users:
            return True
        authorizer = self.authorizer
        if authorizer is None:
            raise NotReadyError("the ACLs are still loading (the broker is opening); retry")
        return authorizer.authorize(principal, resource_type, name, operation)

    def require(self, identity: Identity, requirements: Iterable[Requirement]) -> None:
        for resource_type, operation, name in requirements:
            if not self.allowed(identity.principal, resource_type, name, operation):
                raise _RefusalError(
                    _S.PERMISSION_DENIED,
                    f"{identity.principal} may not {operation} {resource_type} {name!r}: no ACL "
                    f"allows it (or one denies it); an admin can grant it with 'moldau acl add "
                    f"--allow {identity.principal} --operation {operation} --{resource_type} "
                    f"{name}'",
                    "PermissionDeniedError",
                )


def _throttled(principal: str, throttle: Throttle) -> _RefusalError:
    return _RefusalError(_S.RESOURCE_EXHAUSTED, throttle.message(principal), "QuotaExceededError",
                    (("retry-after-ms", str(throttle.retry_after_ms)),))


def _response_bytes(response: Any) -> int:
    if isinstance(response, RawBatches):
        return len(response.record_batches) + 32
    return int(response.ByteSize())


async def _abort(context: Any, refusal: _RefusalError, method: str) -> NoReturn:
    # counted here: a refused call never reaches the servicer's decorators, which count the rest
    observe_refusal(method, str(refusal.code.name))
    await context.abort(refusal.code, refusal.message, trailing_metadata=refusal.metadata)
    raise AssertionError("context.abort returned")  # pragma: no cover


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # untyped base
    """Wraps every method handler with :class:`Security`'s checks (see the module docstring)."""

    def __init__(self, security: Security) -> None:
        self._security = security
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                handler_call_details: Any) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(method, handler, rule_for(method))
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, method: str, handler: Any, rule: Rule | None) -> Any:
        if rule is not None and rule.access is Access.OPEN:
            return handler
        gate = _Gate(self._security, method, rule)
        serializers = {"request_deserializer": handler.request_deserializer,
                       "response_serializer": handler.response_serializer}
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(gate.unary_unary(handler.unary_unary),
                                                       **serializers)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(gate.unary_stream(handler.unary_stream),
                                                        **serializers)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(gate.stream_unary(handler.stream_unary),
                                                        **serializers)
        return grpc.stream_stream_rpc_method_handler(gate.stream_stream(handler.stream_stream),
                                                     **serializers)


class _Gate:
    """The checks of one method, applied around its handler."""

    def __init__(self, security: Security, method: str, rule: Rule | None) -> None:
        self._security = security
        self._method = method
        self._rule = rule
        self._quotas = security.quotas
        self._fetch = rule is not None and rule.quota is QuotaKind.FETCH
        self._produce = rule is not None and rule.quota is QuotaKind.PRODUCE

    def _enter(self, context: Any) -> Identity:
        """Identify the caller and apply the rule's access level (not the ACL checks)."""
        rule = self._rule
        if rule is None:
            raise _RefusalError(_S.PERMISSION_DENIED,
                           f"no authorisation rule for {self._method}; this is a bug",
                           "PermissionDeniedError")
        identity = self._security.identify(context)
        if rule.access is Access.AUTHENTICATED and identity.principal == ANONYMOUS:
            raise _RefusalError(_S.UNAUTHENTICATED, _NEED_CREDENTIALS,
                                "AuthenticationRequiredError")
        return identity

    def _check(self, identity: Identity, request: Any) -> None:
        rule = self._rule
        if rule is not None and rule.checks is not None:
            self._security.require(identity, rule.checks(request))

    def _admit(self, identity: Identity, request: Any) -> None:
        """Unary calls: refuse when over quota."""
        if self._quotas is None:
            return
        size = int(request.ByteSize()) if self._produce else 0
        throttle = self._quotas.admit(identity.principal, produce_bytes=size, fetch=self._fetch)
        if throttle is not None:
            raise _throttled(identity.principal, throttle)

    async def _wait_admitted(self, identity: Identity, request: Any) -> None:
        """Stream messages: wait until within quota (refusing would end the stream)."""
        if self._quotas is None:
            return
        size = int(request.ByteSize()) if self._produce else 0
        while (throttle := self._quotas.admit(identity.principal, produce_bytes=size,
                                              fetch=self._fetch)) is not None:
            await asyncio.sleep(throttle.delay_s)

    async def _paced(self, identity: Identity, responses: AsyncIterator[Any]
                     ) -> AsyncIterator[Any]:
        """Server-stream responses of a fetch call: debit each, wait out the debt before the
        next (the stream slows down to the quota)."""
        quotas = self._quotas
        async for response in responses:
            if quotas is not None and self._fetch:
                while (throttle := quotas.admit(identity.principal, fetch=True)) is not None:
                    await asyncio.sleep(throttle.delay_s)
            yield response
            if quotas is not None and self._fetch:
                quotas.debit_fetch(identity.principal, _response_bytes(response))

    def _finish(self, identity: Identity, response: Any) -> Any:
        rule = self._rule
        if rule is not None and rule.filter is not None:
            principal = identity.principal
            rule.filter(response,
                        lambda t, name, op: self._security.allowed(principal, t, name, op))
        if self._fetch and self._quotas is not None:
            self._quotas.debit_fetch(identity.principal, _response_bytes(response))
        return response

    def unary_unary(self, behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        async def checked(request: Any, context: Any) -> Any:
            try:
                identity = self._enter(context)
                self._check(identity, request)
                self._admit(identity, request)
            except _RefusalError as refusal:
                await _abort(context, refusal, self._method)
            except NotReadyError as exc:
                await context.abort(_S.UNAVAILABLE, str(exc))
            return self._finish(identity, await behavior(request, context))

        return checked

    def _streamed(self, responses: AsyncIterator[Any], identity: Identity,
                  context: Any) -> AsyncIterator[Any]:
        """The servicer's own response generator, wrapped only when a fetch quota paces it
        (every layer of async generator costs on the hot path). Paced responses must all
        pass here, so the TCP port's direct writes (``write_now``) are turned off then."""
        if self._fetch and self._quotas is not None:
            if hasattr(context, "direct_writes"):
                context.direct_writes = False
            return self._paced(identity, responses)
        return responses

    def unary_stream(self, behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., Any]:
        # gRPC tells streaming handlers by their function kind: this must be an async generator
        async def checked(request: Any, context: Any) -> AsyncIterator[Any]:
            try:
                identity = self._enter(context)
                self._check(identity, request)
                self._admit(identity, request)
            except _RefusalError as refusal:
                await _abort(context, refusal, self._method)
            except NotReadyError as exc:
                await context.abort(_S.UNAVAILABLE, str(exc))
            async for response in self._streamed(behavior(request, context), identity, context):
                yield response

        return checked

    async def _requests(self, identity: Identity, requests: AsyncIterator[Any], context: Any
                        ) -> AsyncIterator[Any]:
        """The client stream with its checks: the first message (or each) must be allowed.

        Requirements already allowed on this stream are not checked again (ProduceStream names
        its topic in every message); ACL changes apply to streams opened after them.
        """
        rule = self._rule
        checks = rule.checks if rule is not None else None
        every = rule is not None and rule.every_message
        quotas = self._quotas
        allowed: set[Requirement] = set()
        first = True
        async for request in requests:
            if checks is not None and (first or every):
                for requirement in checks(request):
                    if requirement not in allowed:
                        try:
                            self._security.require(identity, (requirement,))
                        except _RefusalError as refusal:
                            await _abort(context, refusal, self._method)
                        allowed.add(requirement)
                first = False
            if quotas is not None:
                await self._wait_admitted(identity, request)
            yield request

    def stream_unary(self, behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        async def checked(requests: AsyncIterator[Any], context: Any) -> Any:
            try:
                identity = self._enter(context)
            except _RefusalError as refusal:
                await _abort(context, refusal, self._method)
            response = await behavior(self._requests(identity, requests, context), context)
            return self._finish(identity, response)

        return checked

    def stream_stream(self, behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., Any]:
        async def checked(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
            try:
                identity = self._enter(context)
            except _RefusalError as refusal:
                await _abort(context, refusal, self._method)
            responses = behavior(self._requests(identity, requests, context), context)
            async for response in self._streamed(responses, identity, context):
                yield response

        return checked
