"""The Postal-compatible HTTP API: C{/api/v1/send/message} and
C{/api/v1/send/raw}, feeding the same queue as SMTP, and
C{/api/v1/messages/message} and C{/api/v1/messages/deliveries}, which tell
a server what became of its own messages (L{mailgw.web.messages}). Every
route is authenticated by an C{api} credential's key in the
C{X-Server-API-Key} header.

Every answer to an API route is HTTP 200 with JSON
C{{"status": "success"|"error"|"parameter-error", "time", "flags", "data"}}
(errors carry C{data.code} and C{data.message}); the exceptions are an
unknown path (404) and a request body over the size limit (413, see
L{mailgw.web.limits}), both with the same JSON shape.

A request is answered only once its message is durably committed. The end of
the road is L{mailgw.submission.SubmissionCore}, as for SMTP: the same header
section rules, size, loop and From/Sender checks, holds and commit, so HTTP
mail differs from SMTP mail only in its Received line. This module only
words the core's refusals as API error codes.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import parse_qs

from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.web import server
from twisted.web.resource import Resource

from mailgw.auth.credentials import APIKey
from mailgw.auth.guard import LockedOut
from mailgw.config import HTTPAPIConfig
from mailgw.interfaces import IAPIClient, NotFound, StoreError
from mailgw.listeners import ListenerService
from mailgw.model import generate_token
from mailgw.submission import (
    QUEUE_ID_LENGTH, CredentialGone, HeaderSectionTooLarge, LoopDetected, MalformedBody,
    MalformedHeaderSection, MessageTooLarge, Refusal, SenderNotAuthorised, ServerSuspended,
    SpoolFailure,
)
from mailgw.web.compose import (
    APIError, ParameterError, compose_message, parse_params, raw_submission, too_large,
)
from mailgw.web.limits import APISite, http_listener
from mailgw.web.messages import (
    describe_deliveries, describe_message, header_section, message_reference, needs,
    requested_expansions,
)

log = Logger()

ROUTES = {b"/api/v1/send/message": "message", b"/api/v1/send/raw": "raw",
          b"/api/v1/messages/message": "lookup",
          b"/api/v1/messages/deliveries": "deliveries"}
#: the routes that submit mail; the others only read the store
SEND_ROUTES = frozenset({"message", "raw"})
#: request bodies from this size on are decoded and built on a worker thread
THREAD_THRESHOLD = 256 * 1024



def error_for(refusal: Refusal) -> APIError:
    """The API error that words one of the core's refusals."""
    if isinstance(refusal, MessageTooLarge):
        return too_large(refusal.max_size)
    if isinstance(refusal, HeaderSectionTooLarge):
        return APIError("HeaderSectionTooLarge", "Header section too large (maximum size "
                        f"{refusal.max_size // 1024}KB)")
    if isinstance(refusal, MalformedHeaderSection):
        return APIError("MalformedMessage", f"Header section not valid: {refusal.what}")
    if isinstance(refusal, MalformedBody):
        return APIError("MalformedMessage", "Message body contains a NUL byte")
    if isinstance(refusal, SpoolFailure):
        return APIError("TemporaryFailure")
    return APIError(_FIXED[type(refusal)])


_FIXED = {
    LoopDetected: "LoopDetected",
    SenderNotAuthorised: "UnauthenticatedFromAddress",
    ServerSuspended: "ServerSuspended",
    CredentialGone: "InvalidServerAPIKey",
}


@dataclass(frozen=True)
class APIRequest:
    """The mind of an API login: what the guard logs and counts by."""

    client_ip: str
    trace_id: str
    attempts: object


def client_ip(request) -> str:
    return getattr(request.getClientAddress(), "host", None) or ""


class SendAPI(Resource):
    """The one resource of the API site: routes by path, any method."""

    isLeaf = True
    #: False until the gateway's store is open
    ready = True

    def __init__(self, portal, core, config, clock, metrics=None, store=None):
        """
        @param store: the L{mailgw.interfaces.IStore} the message routes
            read; without one, they are unknown routes.
        """
        super().__init__()
        self._metrics = metrics
        self._store = store
        self._portal = portal
        self._core = core
        self._clock = clock
        self._hostname = config.hostname
        self._max_size = config.limits.max_message_size
        self._max_recipients = config.limits.max_recipients
        self._literals = config.limits.allow_address_literals
        self._threads = IReactorThreads.providedBy(clock)

    def render(self, request):
        started = self._clock.seconds()
        gone = []
        request.notifyFinish().addErrback(gone.append)
        d = self._answer(request)
        if ROUTES.get(request.path.rstrip(b"/")) in SEND_ROUTES:
            d.addCallback(self._count, request)
        d.addCallback(self._write, request, started, gone)
        d.addErrback(lambda f: log.failure("HTTP API: answer not written", f))
        return server.NOT_DONE_YET

    def _count(self, answer, request):
        """Submissions count in the same series as SMTP messages."""
        code, status, data = answer
        if self._metrics is not None and code == 200:
            if status == "success":
                self._metrics.messages_queued.inc()
            else:
                self._metrics.messages.labels("rejected", f"HTTP {data.get('code')}").inc()
        return answer

    def _write(self, answer, request, started, gone):
        if gone:
            return
        code, status, data = answer
        body = json.dumps({"status": status,
                           "time": round(max(0.0, self._clock.seconds() - started), 3),
                           "flags": {}, "data": data}).encode("utf-8")
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
        request.setHeader(b"Content-Length", b"%d" % len(body))
        request.setHeader(b"Cache-Control", b"no-store")
        request.write(body)
        request.finish()

    @defer.inlineCallbacks
    def _answer(self, request):
        """@return: Deferred firing with C{(http code, status, data)}; never fails."""
        kind = ROUTES.get(request.path.rstrip(b"/"))
        if kind is None or (kind not in SEND_ROUTES and self._store is None):
            return 404, "error", _error(APIError("RouteNotFound"))
        if not self.ready:  # the store is not open yet: come back shortly
            return 200, "error", _error(APIError("TemporaryFailure"))
        trace = generate_token(8)
        ip = client_ip(request)
        try:
            credential, server_ = yield self._authenticate(request, ip, trace)
            if kind in SEND_ROUTES:
                data = yield self._submit(request, kind, ip, trace, credential, server_)
            else:
                data = yield self._look_up(request, kind, server_)
        except APIError as e:
            return 200, "error", _error(e)
        except ParameterError as e:
            return 200, "parameter-error", {"code": "ParameterError", "message": e.message}
        except StoreError as e:
            log.error("[{trace}] store unavailable: {why}", trace=trace, why=str(e))
            return 200, "error", _error(APIError("TemporaryFailure"))
        except Exception:
            log.failure("[{trace}] internal error", trace=trace)
            return 200, "error", _error(APIError("TemporaryFailure"))
        return 200, "success", data

    # -- authentication ---------------------------------------------------------------

    @defer.inlineCallbacks
    def _authenticate(self, request, ip: str, trace: str):
        """Log in through the portal SMTP uses (its guard throttles both).

        @return: Deferred firing with C{(Credential, Server)}, or failing
            with the L{APIError} to answer.
        """
        guard = self._portal.guard
        raw = request.getHeader(b"x-server-api-key")
        if not raw:
            # No key at all: the keyless budget, which never locks out keys.
            if guard.anonymous_locked(ip) or guard.anonymous_failed(
                    ip, trace, "API call without X-Server-API-Key"):
                raise APIError("TooManyAuthenticationFailures")
            raise APIError("AccessDenied")
        try:
            key = raw.decode("ascii")
        except UnicodeDecodeError:
            key = ""  # matches no key: a failure like any wrong key
        # A request is its own connection: nothing can follow a failure in it.
        mind = APIRequest(ip, trace, guard.attempts(ip, trace, forgivable=0))
        try:
            _, client, _ = yield self._portal.login(APIKey(key), mind, IAPIClient)
        except LockedOut:
            raise APIError("TooManyAuthenticationFailures") from None
        except UnauthorizedLogin:
            raise APIError("InvalidServerAPIKey") from None
        identity = client.identity
        if identity.server.is_suspended:
            raise APIError("ServerSuspended")
        return identity.credential, identity.server

    # -- submission ---------------------------------------------------------------------

    @defer.inlineCallbacks
    def _submit(self, request, kind: str, ip: str, trace: str, credential, server_):
        token = generate_token(QUEUE_ID_LENGTH)
        message = self._core.open_message(self._core.received_header(
            "HTTP", token, client_ip=ip or None, privacy=server_.privacy_mode), token)
        content_type = (request.getHeader(b"content-type") or b"").decode("latin-1")
        form_value = (request.args or {}).get(b"params", [None])[0]
        try:
            submission = yield self._run(
                _body_size(request.content), self._prepare, kind, message,
                content_type, request.content, form_value)
        except BaseException:
            message.close()
            raise
        try:
            ids = yield self._core.finish(
                message, credential_id=credential.id, token=token,
                mail_from=submission.mail_from, recipients=submission.recipients,
                protocol="HTTP")
        except Refusal as refusal:
            log.info("[{trace}] HTTP {ip} {server}: message refused: {reason}", trace=trace,
                     ip=ip, server=server_.full_name, reason=refusal.reason)
            raise error_for(refusal) from None
        log.info("[{trace}] HTTP {ip} {server}: queued as {token} for {n} recipient(s)",
                 trace=trace, ip=ip, server=server_.full_name, token=token,
                 n=len(submission.recipients))
        message_id = submission.message_id or _message_id(message.fields)
        return {"message_id": message_id,
                "messages": {rcpt: {"id": ids[rcpt], "token": token}
                             for rcpt in submission.recipients}}

    def _run(self, size: int, fn, *args):
        """Big requests are decoded off the reactor thread."""
        if self._threads and size >= THREAD_THRESHOLD:
            return deferToThreadPool(self._clock, self._clock.getThreadPool(), fn, *args)
        return defer.maybeDeferred(fn, *args)

    def _prepare(self, kind, message, content_type, content, form_value):
        """Parse, validate and build; write the message into C{message} (the
        core's L{mailgw.submission.IncomingMessage}). Runs on any thread.

        @return: the L{mailgw.web.compose.Submission}.
        """
        params = _params(content_type, content, form_value)
        if kind == "message":
            submission = compose_message(params, hostname=self._hostname,
                                         now=self._clock.seconds(),
                                         max_recipients=self._max_recipients,
                                         allow_address_literals=self._literals)
        else:
            submission = raw_submission(params, max_size=self._max_size,
                                        max_recipients=self._max_recipients,
                                        allow_address_literals=self._literals)
        message.write(submission.message)
        return submission

    # -- a server's own messages ------------------------------------------------------

    @defer.inlineCallbacks
    def _look_up(self, request, kind: str, server_):
        """C{messages/message} or C{messages/deliveries} for C{server_}.

        @return: Deferred firing with the answer's C{data}, or failing with
            L{APIError} C{MessageNotFound} (another server's message too:
            its existence is not told) or a L{ParameterError}.
        """
        content_type = (request.getHeader(b"content-type") or b"").decode("latin-1")
        form_value = (request.args or {}).get(b"params", [None])[0]
        params = yield self._run(_body_size(request.content), _params, content_type,
                                 request.content, form_value)
        ref = message_reference(params)
        expansions = requested_expansions(params) if kind == "lookup" else frozenset()
        try:
            record = yield self._store.message_for_server(server_.id, ref)
        except NotFound:
            raise APIError("MessageNotFound") from None
        if kind == "deliveries":
            return describe_deliveries(record)
        # the server as authenticated now: privacy mode applies at once
        privacy = server_.privacy_mode
        wanted = needs(expansions, privacy)
        message_id = record.entries[0].message_id
        data = None
        if wanted == "body":
            data = yield self._store.read_body(message_id)
        elif wanted == "head":
            data = yield self._header_section(message_id)
        return (yield self._run(len(data or b""), describe_message, record, expansions,
                                privacy, data, isinstance(ref, str)))

    @defer.inlineCallbacks
    def _header_section(self, message_id):
        """The stored message's header section, read piece by piece until its
        empty line, so that details of a large message do not read it all."""
        data, seq = b"", 0
        while b"\r\n\r\n" not in data:
            chunk = yield self._store.read_body_chunk(message_id, seq)
            if not chunk:
                break
            data += chunk
            seq += 1
        return header_section(data)


def _params(content_type: str, content, form_value) -> dict:
    """The request's parameters: its JSON body, or the JSON of its C{params}
    field (in the query string or a form-encoded body)."""
    content.seek(0)
    body = content.read()
    if form_value is None and content_type.lower().startswith(
            "application/x-www-form-urlencoded"):
        form_value = parse_qs(body, keep_blank_values=True).get(b"params", [None])[0]
    return parse_params(content_type, body, form_value)


def _message_id(fields) -> str | None:
    """The Message-ID of a raw message, without angle brackets."""
    for name, value in fields:
        if name == "message-id":
            return value.strip().strip("<>").strip() or None
    return None


def _error(e: APIError) -> dict:
    return {"code": e.code, "message": e.message}


def _body_size(content) -> int:
    content.seek(0, 2)
    size = content.tell()
    content.seek(0)
    return size


def build_api_site(portal, core, config, clock, metrics=None, store=None) -> APISite:
    """The API as a twisted.web C{Site}, with the request size limit and the
    idle, header and body timeouts of C{config.http_api} (see
    L{mailgw.web.limits}).

    @param portal: the L{mailgw.auth.guard.GuardedPortal} SMTP logs in through.
    @param core: the L{mailgw.submission.SubmissionCore} SMTP uses too.
    @param config: the whole L{mailgw.config.Config}; without an
        C{[http_api]} table, the defaults of L{HTTPAPIConfig} apply.
    @param clock: the reactor (its thread pool decodes big requests), or
        any C{IReactorTime}; it also runs every timeout.
    @param metrics: the gateway's L{mailgw.metrics.Metrics}, or None.
    @param store: the L{mailgw.interfaces.IStore} the message routes read
        (C{messages/message}, C{messages/deliveries}); None leaves them out.
    """
    api = config.http_api or HTTPAPIConfig()
    site = APISite(SendAPI(portal, core, config, clock, metrics, store),
                   max_message_size=config.limits.max_message_size,
                   idle_timeout=api.idle_timeout, header_timeout=api.header_timeout,
                   body_timeout=api.body_timeout, metrics=metrics, reactor=clock)
    site.displayTracebacks = False
    site.noisy = False
    return site


def api_listener_service(site, config, tls_options, reactor,
                         metrics=None) -> ListenerService:
    """The service serving C{site} on C{config.http_api.endpoint}, as HTTPS
    with C{tls_options} (the L{mailgw.tls.TLSOptions} SMTP uses, so a renewed
    certificate is served to the next connection) when C{config.http_api.tls}.

    Connections over C{http_api.max_connections}, or over
    C{http_api.max_connections_per_ip} from one address, are closed before
    any TLS handshake (L{ConnectionCaps}).

    @param metrics: the gateway's L{mailgw.metrics.Metrics} (refused
        connections are counted there), or None.
    """
    api = config.http_api
    return http_listener(site, endpoint=api.endpoint, setting="http_api.endpoint",
                         tls=api.tls, tls_options=tls_options,
                         max_connections=api.max_connections,
                         max_connections_per_ip=api.max_connections_per_ip,
                         reactor=reactor, metrics=metrics, what="HTTP API")
