"""A DNS server for the relay's tests: twisted.names' own server on a
loopback UDP port, answering from a dict of records (names not in it do not
exist: NXDOMAIN)."""
from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.names import common, dns, server
from twisted.names import error as dns_error


class Zone(common.ResolverBase):
    """C{records}: name -> list of record payloads (C{dns.Record_MX},
    C{dns.Record_A}, ...). A name present with no record of the asked type
    answers NOERROR with no answer."""

    def __init__(self, records: dict):
        super().__init__()
        self.records = {name.lower(): list(payloads) for name, payloads in records.items()}
        self.queries = []

    def _lookup(self, name, cls, type, timeout):
        text = name.decode("ascii").lower().rstrip(".")
        self.queries.append((text, dns.QUERY_TYPES.get(type, type)))
        if text not in self.records:
            return defer.fail(dns_error.DomainError(text))
        answers = [dns.RRHeader(name=text, type=p.TYPE, payload=p, ttl=60, auth=True)
                   for p in self.records[text] if p.TYPE == type]
        return defer.succeed((answers, [], []))


def serve(testcase, zone: Zone) -> str:
    """Serve C{zone} on 127.0.0.1 for the test; its C{"host:port"}."""
    factory = server.DNSServerFactory(authorities=[zone])
    port = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
    testcase.addCleanup(port.stopListening)
    return f"127.0.0.1:{port.getHost().port}"


def mx(preference: int, name: str):
    return dns.Record_MX(preference, name.encode("ascii"))


def a(address: str):
    return dns.Record_A(address)


def aaaa(address: str):
    return dns.Record_AAAA(address)
