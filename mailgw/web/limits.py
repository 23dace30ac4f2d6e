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
"""
from __future__ import annotations

import io
import json

from twisted.web import server

from mailgw.web.compose import APIError

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
    error = APIError("MessageTooLarge",
                     f"The request is larger than {limit} bytes, the limit for a message "
                     f"of at most {max_message_size // (1024 * 1024)}MB")
    body = json.dumps({"status": "error", "time": 0.0, "flags": {},
                       "data": {"code": error.code, "message": error.message}}).encode()
    return (b"HTTP/1.1 413 Request Entity Too Large\r\n"
            b"Content-Type: application/json; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)) + body


class LimitedRequest(server.Request):
    """A C{Request} that refuses a body larger than C{site.max_request_body}
    (a site built by L{mailgw.web.api.build_api_site})."""

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
