"""One webhook request over HTTP(S) with treq, to an address checked first.

The host of the request's URL is resolved and every address checked
(L{mailgw.webhooks.addresses}); the connection then goes to the checked
addresses, the first that answers, while TLS (SNI and certificate verification) and the C{Host}
header still use the URL's host name. A receiver's answer counts as
delivered when its status is 2xx, as in Postal (a redirect is not followed);
its body is read (up to L{BODY_LIMIT} bytes) and dropped.
"""
from __future__ import annotations

from dataclasses import dataclass

from treq.client import HTTPClient
from twisted.internet import defer, endpoints, protocol, ssl
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from mailgw.webhooks.addresses import RefusedURL, Unresolvable, check_later, parse_url

#: bytes of a receiver's answer read at most
BODY_LIMIT = 64 * 1024
#: the User-Agent of every request
USER_AGENT = "mailgw (Postal-compatible webhooks)"


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to: the receiver's HTTP status (C{None} when
    none answered), an error text, and whether the destination was refused
    (a refusal is final: it is not retried)."""
    status_code: int | None
    error: str | None = None
    refused: bool = False

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class _Quiet(protocol.Factory):
    """The agent's connection factory without its "Starting factory" and
    "Stopping factory" log lines, a pair per request otherwise."""

    noisy = False

    def __init__(self, factory):
        self._factory = factory

    def buildProtocol(self, addr):
        return self._factory.buildProtocol(addr)


@implementer(IStreamClientEndpoint)
class _SequentialEndpoint:
    """Connects to each of C{candidates} (endpoints) in turn until one answers."""

    def __init__(self, candidates):
        self._candidates = list(candidates)

    @defer.inlineCallbacks
    def connect(self, factory):
        last, quiet = None, _Quiet(factory)
        for endpoint in self._candidates:
            try:
                return (yield endpoint.connect(quiet))
            except defer.CancelledError:
                raise
            except Exception as e:
                last = e
        raise last


@implementer(IAgentEndpointFactory)
class PinnedEndpoints:
    """An agent's endpoints to addresses checked beforehand, whatever host
    the URL names (TLS is still checked against that host name)."""

    def __init__(self, reactor, addresses, tls_policy, timeout: float):
        self._reactor, self._addresses = reactor, list(addresses)
        self._tls_policy, self._timeout = tls_policy, timeout

    def endpointForURI(self, uri):
        candidates = []
        for address in self._addresses:
            kind = endpoints.TCP6ClientEndpoint if ":" in address else \
                endpoints.TCP4ClientEndpoint
            endpoint = kind(self._reactor, address, uri.port, timeout=self._timeout)
            if uri.scheme == b"https":
                endpoint = endpoints.wrapClientTLS(
                    self._tls_policy.creatorForNetloc(uri.host, uri.port), endpoint)
            candidates.append(endpoint)
        return _SequentialEndpoint(candidates)


class _Limited(protocol.Protocol):
    """Reads a response body, dropping the connection past C{limit} bytes."""

    def __init__(self, done: defer.Deferred, limit: int):
        self.done, self.limit, self.size = done, limit, 0

    def dataReceived(self, data):
        self.size += len(data)
        if self.size > self.limit:
            self.transport.stopProducing()

    def connectionLost(self, reason=None):
        if not self.done.called:
            self.done.callback(self.size)


def tls_policy(ca_certificates: str = ""):
    """The https policy: the system's trust store, or only the certificates
    of the PEM file C{ca_certificates}.

    @raise ValueError: that file cannot be read or holds no certificate.
    """
    if not ca_certificates:
        return BrowserLikePolicyForHTTPS()
    try:
        with open(ca_certificates, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"cannot read {ca_certificates}: {e.strerror}") from None
    pems, marker = [], b"-----END CERTIFICATE-----"
    try:
        for block in data.split(marker)[:-1]:
            pems.append(ssl.Certificate.loadPEM(block.strip() + b"\n" + marker + b"\n"))
    except Exception:
        raise ValueError(f"{ca_certificates} holds a certificate that is not valid PEM") \
            from None
    if not pems:
        raise ValueError(f"no certificate in {ca_certificates}")
    return BrowserLikePolicyForHTTPS(ssl.trustRootFromCertificates(pems))


class RequestSender:
    """Sends one signed request and says what came of it; never fails."""

    def __init__(self, reactor, signer, *, allow_private: bool, timeout: float,
                 policy=None, clock=None, own=frozenset()):
        """
        @param signer: a L{mailgw.webhooks.signing.RequestSigner}.
        @param own: this node's addresses (refused like loopback).
        """
        self.reactor, self.signer = reactor, signer
        self.allow_private, self.timeout = allow_private, timeout
        self.policy = policy or BrowserLikePolicyForHTTPS()
        self.clock = clock or reactor
        self.own = own

    @defer.inlineCallbacks
    def send(self, url: str, body: bytes):
        """@return: Deferred firing with an L{Outcome}."""
        try:
            target = parse_url(url)
            checked = yield check_later(target, self.allow_private, self.own)
        except RefusedURL as e:
            return Outcome(None, str(e), refused=True)
        except Unresolvable as e:
            return Outcome(None, str(e))
        agent = Agent.usingEndpointFactory(
            self.reactor, PinnedEndpoints(self.reactor, checked, self.policy, self.timeout),
            pool=HTTPConnectionPool(self.reactor, persistent=False))
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        headers.update(self.signer.headers(body))
        d = self._post(HTTPClient(agent), url, body, headers)
        timed_out = []

        def cancelled(result, timeout):
            timed_out.append(timeout)  # whatever the cancel made of the request
            return result
        d.addTimeout(self.timeout, self.clock, onTimeoutCancel=cancelled)
        try:
            code = yield d
        except Exception as e:
            if timed_out:
                return Outcome(None, f"no answer within {self.timeout:g} s")
            return Outcome(None, _describe(e))
        if 200 <= code < 300:
            return Outcome(code)
        return Outcome(code, f"the receiver answered HTTP {code}")

    @defer.inlineCallbacks
    def _post(self, client, url, body, headers):
        # a redirect is an answer, not followed (as in Postal): it would lead
        # past the address check to wherever the receiver points
        response = yield client.post(url, data=body, headers=headers, allow_redirects=False)
        done = defer.Deferred()
        response.deliverBody(_Limited(done, BODY_LIMIT))
        yield done
        return response.code


def _describe(error: Exception) -> str:
    """One line for a failed attempt, from the error's type and message
    (a TLS failure's message names the certificate problem)."""
    reasons = getattr(error, "reasons", None)  # twisted.web's ResponseNeverReceived etc.
    if reasons:
        inner = reasons[0].value
        return f"{type(inner).__name__}: {inner}"[:300]
    return f"{type(error).__name__}: {error}"[:300]

