"""The DNS look-ups behind C{mailgw domain verify} and C{domain check}: the
TXT, CNAME and MX records of a name, through twisted.names, as strings for
L{mailgw.domains.checks}.

A name that does not exist (NXDOMAIN) or has no record of the type gives an
empty list: to a check, that is a record not yet published. Any other
failure (a timeout, SERVFAIL, a refusal) is a L{DNSLookupError}, since it
says nothing about what is published.
"""
from __future__ import annotations

from twisted.internet import defer
from twisted.names import client, dns

from mailgw.relay.mx import dns_text, make_resolver, no_such_name

#: seconds to wait for each try: 15 seconds in all before giving up, short
#: enough for a command line
TIMEOUT = (1, 3, 11)


class DNSLookupError(LookupError):
    """A look-up failed for another reason than the name or the record not
    existing."""


class DomainLookup:
    """TXT, CNAME and MX look-ups over one twisted.names resolver."""

    def __init__(self, resolver, timeout=TIMEOUT):
        self.resolver = resolver
        self.timeout = timeout

    @defer.inlineCallbacks
    def _answers(self, method, kind: str, name: str, rtype: int):
        try:
            answers, _, _ = yield method(name, timeout=self.timeout)
        except Exception as e:
            if no_such_name(e):
                return []
            raise DNSLookupError(
                f"DNS look-up of the {kind} records of {name} failed: {dns_text(e)}") from e
        # a name that is an alias answers with the CNAME and then the
        # target's records: the target's are the ones that count
        return [rr for rr in answers if rr.type == rtype]

    @defer.inlineCallbacks
    def txt(self, name: str):
        """@return: Deferred firing with the TXT records of C{name}, each its
            character-strings joined (RFC 7208 section 3.3)."""
        answers = yield self._answers(self.resolver.lookupText, "TXT", name, dns.TXT)
        return [b"".join(rr.payload.data).decode("utf-8", "replace") for rr in answers]

    @defer.inlineCallbacks
    def cname(self, name: str):
        """@return: Deferred firing with the CNAME targets of C{name}."""
        answers = yield self._answers(
            self.resolver.lookupCanonicalName, "CNAME", name, dns.CNAME)
        # only the alias of C{name} itself, not the rest of a chain
        return [str(rr.payload.name).rstrip(".").lower() for rr in answers
                if str(rr.name).rstrip(".").lower() == name.lower()]

    @defer.inlineCallbacks
    def mx(self, name: str):
        """@return: Deferred firing with the MX records of C{name} as
            C{"<preference> <host>"}, in preference order."""
        answers = yield self._answers(
            self.resolver.lookupMailExchange, "MX", name, dns.MX)
        records = sorted((rr.payload.preference, str(rr.payload.name).rstrip(".").lower())
                         for rr in answers)
        return [f"{preference} {host or '.'}" for preference, host in records]


def domain_lookup(config, reactor) -> DomainLookup:
    """The look-ups for C{config}: at C{[dns] resolver}, else the relay's
    resolver, else the servers of /etc/resolv.conf."""
    return DomainLookup(make_resolver(config.dns.resolver or config.relay.resolver, reactor))


def resolv_conf_servers(path: str = "/etc/resolv.conf") -> list[tuple[str, int]]:
    """The C{nameserver} lines of C{path} as C{(address, 53)}, or the local
    server when there are none (as the resolver library does)."""
    servers = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    servers.append((parts[1], 53))
    except OSError:
        pass
    return servers or [("127.0.0.1", 53)]


def monitor_lookup(config, reactor) -> DomainLookup:
    """The look-ups of the gateway's periodic checks: the same servers as
    L{domain_lookup}, but through a resolver that reads resolv.conf once
    rather than re-reading it every minute for the life of the process (a
    timer that would outlive the service)."""
    server = config.dns.resolver or config.relay.resolver
    if server:
        host, _, port = server.rpartition(":")
        servers = [(host.strip("[]"), int(port))]
    else:
        servers = resolv_conf_servers()
    return DomainLookup(client.Resolver(servers=servers, reactor=reactor))
