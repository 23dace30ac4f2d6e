"""The HTTP API's request body limit, enforced while the body arrives.

twisted.web's C{Request} buffers a whole body (in memory, or in a temporary
file past 100 kB) before any resource sees it. L{LimitedRequest} refuses a body
larger than the site's limit before it is stored: from C{Content-Length} as
soon as the headers are in (so a client that sent C{Expect: 100-continue}
never sends it), or as soon as a chunked body passes the limit.

The refusal is an HTTP 413 whose body is the API's JSON error
(C{MessageTooLarge}). The connection then lingers, reading and discarding,
until the client has sent the rest of its request (or for at most
L{LINGER_SECONDS} / L{LINGER_BYTES}), and is closed: closing a socket with
unread data would reset it and the client might never read the 413.

The API listener's other limits live here too, so that a client cannot hold
connections it does not use (see the HTTP API section of the README):

  - L{ConnectionCaps} closes a connection at once when the API already has
    C{max_connections} open, or C{max_connections_per_ip} from its address;
  - L{DeadlineChannel} gives a request's headers C{header_timeout} seconds
    from its first byte and its body C{body_timeout} seconds from the end of
    the headers, however steadily the bytes trickle in; the idle time between
    requests is twisted.web's own C{Site} timeout (C{idle_timeout}).
"""
from __future__ import annotations

import io
import json
from collections import Counter

from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web import http, server

from mailgw.listeners import ListenerService, parse_endpoint
from mailgw.web.compose import APIError

log = Logger()

#: base64 costs 4/3 of the message; the rest of the request (JSON, other
#: fields) gets this much on top
REQUEST_OVERHEAD = 64 * 1024
#: how long a refused request may go on sending before it is cut off
LINGER_SECONDS = 10.0
#: how much more of a refused request is read (and dropped) before it is cut off
LINGER_BYTES = 4 * 1024 * 1024


def request_body_limit(max_message_size: int) -> int:
    """The largest JSON request body: a message of C{max_message_size} bytes
    in base64, plus room for the other parameters."""
    return max_message_size * 4 // 3 + REQUEST_OVERHEAD


def body_limit_for(base_limit: int, content_type: bytes | None) -> int:
    """Form-encoded parameters are percent-encoded JSON (base64's C{+}, C{/}
    and C{=} take three bytes each), so they get half as much again."""
    if content_type and content_type.strip().lower().startswith(b"application/json"):
        return base_limit
    return base_limit * 3 // 2


def refusal(limit: int, max_message_size: int) -> bytes:
    """The whole 413 response: status line, headers and the JSON error."""
    return _closing_response(b"413 Request Entity Too Large", APIError(
        "MessageTooLarge", f"The request is larger than {limit} bytes, the limit for a "
        f"message of at most {max_message_size // (1024 * 1024)}MB"))


def timed_out(part: str, seconds: float) -> bytes:
    """The whole 408 response for a request whose C{part} ("headers" or
    "body") did not arrive within C{seconds}: status line, headers and the
    JSON error (C{RequestTimeout})."""
    return _closing_response(b"408 Request Timeout", APIError(
        "RequestTimeout", f"The request's {part} did not arrive within {seconds:g} seconds"))


def _closing_response(status: bytes, error: APIError) -> bytes:
    """A response in the API's JSON shape that ends the connection (RFC 9110
    section 15.5.9 asks a 408 to say C{Connection: close}; a 413 sent before
    the body was read cannot keep the connection either)."""
    body = json.dumps({"status": "error", "time": 0.0, "flags": {},
                       "data": {"code": error.code, "message": error.message}}).encode()
    return (b"HTTP/1.1 " + status + b"\r\n"
            b"Content-Type: application/json; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)) + body


class LimitedRequest(server.Request):
    """A C{Request} that refuses a body larger than C{site.max_request_body}
    (an L{APISite})."""

    _refused = False
    _received = 0
    _discarded = 0
    _linger = None
    _limit = None

    def gotLength(self, length):
        site = self.channel.site
        self._limit = body_limit_for(site.max_request_body,
                                     self.requestHeaders.getRawHeaders(b"content-type",
                                                                       [None])[0])
        if length is not None and length > self._limit:
            # The channel answers "Expect: 100-continue" right after this
            # call; the client must get our final answer instead.
            self.requestHeaders.removeHeader(b"expect")
            self.content = io.BytesIO()
            self._refuse()
            return
        super().gotLength(length)

    def handleContentChunk(self, data):
        if self._refused:
            self._discarded += len(data)
            if self._discarded > LINGER_BYTES:
                self._close()
            return
        self._received += len(data)
        if self._received > self._limit:
            self.content.close()
            self.content = io.BytesIO()
            self._refuse()
            return
        super().handleContentChunk(data)

    @property
    def refused(self) -> bool:
        """True once the 413 is written: nothing else may be answered."""
        return self._refused

    def requestReceived(self, command, path, version):
        if self._refused:
            # the client has sent all of its request: nothing is left unread
            self._close()
            return
        super().requestReceived(command, path, version)

    def _refuse(self):
        self._refused = True
        site = self.channel.site
        self.channel.persistent = False
        self.channel.transport.write(refusal(self._limit, site.max_message_size))
        self._linger = site.reactor.callLater(LINGER_SECONDS, self._close)

    def _close(self):
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._linger = None
        if self.channel is not None:
            self.channel.loseConnection()

    def connectionLost(self, reason):
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._linger = None
        super().connectionLost(reason)


class DeadlineChannel(http.HTTPChannel):
    """The API's connection: an C{HTTPChannel} that cuts a client off when a
    request's headers are not complete C{site.header_timeout} seconds after
    the request's first byte, or its body C{site.body_timeout} seconds after
    the end of its headers (C{site} is the L{APISite}).

    twisted.web's own timeout (the C{Site} timeout, here C{idle_timeout}) is
    an idle timeout that every byte resets, so a client sending one byte
    every few seconds would hold the connection for ever ("slowloris"). These
    deadlines are not reset by anything. Between requests, and while a
    request is being answered, only the idle timeout applies.

    When a deadline passes, the client gets a 408 (unless a 413 was already
    written) and twisted.web's own C{timeoutConnection} closes the
    connection, aborting it if the client does not let it close.
    """

    #: the L{IDelayedCall} of the running deadline, or None
    _deadline = None
    #: waiting for the first byte of a request: that byte starts the header deadline
    _between_requests = True
    #: a deadline has passed: whatever the client sends now is dropped
    _cut = False

    def dataReceived(self, data):
        if self._cut:
            return
        if self._between_requests and self._deadline is None and data:
            self._start("headers", self.site.header_timeout)
        super().dataReceived(data)

    def allHeadersReceived(self):
        self._between_requests = False
        self._start("body", self.site.body_timeout)
        super().allHeadersReceived()

    def allContentReceived(self):
        self._cancel()
        super().allContentReceived()

    def requestDone(self, request):
        # Set first: the base class hands any pipelined bytes it buffered
        # back to dataReceived, and those begin the next request.
        self._between_requests = True
        super().requestDone(request)

    def timeoutConnection(self):
        """twisted.web's idle timeout (the C{Site} timeout) has passed."""
        self._count("idle")
        super().timeoutConnection()

    def connectionLost(self, reason):
        self._cancel()
        super().connectionLost(reason)

    def _start(self, part: str, seconds: float) -> None:
        self._cancel()
        self._deadline = self.callLater(seconds, self._expired, part, seconds)

    def _cancel(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _expired(self, part: str, seconds: float) -> None:
        self._deadline = None
        self._cut = True
        self._count(part)
        log.info("HTTP API: {ip} did not send a request's {part} within {seconds:g} s; "
                 "closing the connection", ip=_host(self.transport.getPeer()), part=part,
                 seconds=seconds)
        request = self.requests[-1] if self.requests else None
        if not (isinstance(request, LimitedRequest) and request.refused):
            self.transport.write(timed_out(part, seconds))
        # the base class's, not ours: this is not the idle timeout
        http.HTTPChannel.timeoutConnection(self)

    def _count(self, reason: str) -> None:
        metrics = self.site.metrics
        if metrics is not None:
            metrics.http_timeouts.labels(reason).inc()


class APISite(server.Site):
    """The API's C{Site}: L{LimitedRequest} requests on L{DeadlineChannel}
    connections, and the limits both read.

    @ivar max_message_size: the largest message, in bytes.
    @ivar max_request_body: the largest JSON request body (L{request_body_limit}).
    @ivar header_timeout: seconds from a request's first byte to the end of its headers.
    @ivar body_timeout: seconds from the end of a request's headers to the end of its body.
    @ivar metrics: the gateway's L{mailgw.metrics.Metrics}, or None.
    """

    protocol = DeadlineChannel
    requestFactory = LimitedRequest

    def __init__(self, resource, *, max_message_size: int, idle_timeout: float,
                 header_timeout: float, body_timeout: float, metrics=None, reactor=None,
                 log_formatter=None):
        """
        @param resource: the root resource.
        @param log_formatter: how the access log writes a request (twisted.web's
            C{logFormatter}); None: twisted.web's combined log format.
        @param idle_timeout: seconds a connection may sit idle between
            requests (twisted.web's own C{Site} timeout).
        @param reactor: the C{IReactorTime} of every timeout (None: the global reactor).
        """
        super().__init__(resource, timeout=idle_timeout, reactor=reactor,
                         logFormatter=log_formatter)
        self.max_message_size = max_message_size
        self.max_request_body = request_body_limit(max_message_size)
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.metrics = metrics


class ConnectionCaps(WrappingFactory):
    """Wraps the API's factory (the C{Site}, or the TLS factory around it)
    and closes a new connection at once, before a byte is read or a TLS
    handshake begun, when C{max_connections} are open already, or
    C{max_connections_per_ip} from the same client address. Each refusal is
    logged with the address and counted in
    C{mailgw_http_refused_connections{reason}}.

    (Twisted's C{LimitConnectionsByPeer} would fit but reads addresses as
    tuples, which C{IAddress} objects no longer are, and has no total cap.)
    """

    noisy = False  # as the site: no log line per start and stop

    def __init__(self, wrappedFactory, max_connections: int, max_connections_per_ip: int,
                 metrics=None):
        """
        @param wrappedFactory: the factory whose protocols are capped.
        @param metrics: the gateway's L{mailgw.metrics.Metrics}, or None.
        """
        super().__init__(wrappedFactory)
        self.max_connections = max_connections
        self.max_connections_per_ip = max_connections_per_ip
        self.metrics = metrics
        #: connections open now, in all and by client address
        self.open = 0
        self.by_address = Counter()
        self._address_of = {}

    def buildProtocol(self, addr):
        host = _host(addr)
        if self.open >= self.max_connections:
            return self._refuse(host, "too many connections", "max_connections",
                                self.max_connections)
        if self.by_address[host] >= self.max_connections_per_ip:
            return self._refuse(host, "too many connections from address",
                                "max_connections_per_ip", self.max_connections_per_ip)
        protocol = super().buildProtocol(addr)
        self._address_of[protocol] = host
        self.open += 1
        self.by_address[host] += 1
        return protocol

    def unregisterProtocol(self, p):
        super().unregisterProtocol(p)
        host = self._address_of.pop(p, None)
        if host is None:
            return
        self.open -= 1
        self.by_address[host] -= 1
        if self.by_address[host] <= 0:
            del self.by_address[host]

    def _refuse(self, host: str, reason: str, key: str, cap: int) -> None:
        """Count and log a refusal; None, so that the port closes the socket."""
        if self.metrics is not None:
            self.metrics.http_refused_connections.labels(reason).inc()
        log.warn("HTTP API: connection from {ip} refused: {reason} (http_api.{key} = {cap})",
                 ip=host, reason=reason, key=key, cap=cap)
        return None


def _host(address) -> str:
    """The client address of an C{IAddress} ("" for one without a host, e.g. a
    Unix socket's)."""
    return getattr(address, "host", None) or ""


def http_listener(site, *, endpoint: str, setting: str, tls: bool, tls_options,
                  max_connections: int, max_connections_per_ip: int, reactor, metrics,
                  what: str):
    """The service serving C{site} on C{endpoint}: HTTPS with C{tls_options}
    (the L{mailgw.tls.TLSOptions} SMTP uses, so a renewed certificate is
    served to the next connection) when C{tls}; connections over the caps
    closed before any TLS handshake (L{ConnectionCaps}).

    @param setting: the config key of C{endpoint}, for errors (C{"web.endpoint"}).
    @param what: the start of its "listening on" log line (C{"HTTP API"}).
    @raise ValueError: C{tls} without C{tls_options}.
    """
    factory = site
    if tls:
        if tls_options is None:
            raise ValueError(f"{setting.split('.')[0]}.tls needs the [tls] certificate")
        factory = TLSMemoryBIOFactory(tls_options, False, site)
    factory = ConnectionCaps(factory, max_connections, max_connections_per_ip, metrics)
    return ListenerService(parse_endpoint(reactor, endpoint, setting), factory, endpoint,
                           setting, what + " listening on {endpoint} at {host} port {port} "
                           f"(https: {'true' if tls else 'false'})")
