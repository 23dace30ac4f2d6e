"""Where a domain's mail goes: its MX hosts (RFC 5321 §5.1) through
twisted.names, as the ordered list of addresses to try.

MX records in preference order (equal preferences shuffled, to spread the
load); no MX record at all means the domain itself (the implicit MX); the
null MX (RFC 7505: a single "0 ." record) means the domain accepts no mail,
a permanent failure, as is a domain that does not exist. Each host's A
addresses are tried before its AAAA addresses. An address literal
(C{user@[192.0.2.1]}) is its own target.

Local addresses (L{mailgw.relay.destinations}) are left out unless
C{relay.allow_local_destinations} is on: an MX host with one local and one
other address is reached at the other; a domain whose every target is local
fails permanently, since the DNS says so and retrying cannot change that.
"""
from __future__ import annotations

import ipaddress
import random
import socket
from dataclasses import dataclass

from twisted.internet import defer
from twisted.logger import Logger
from twisted.names import cache, client, dns, hosts, resolve
from twisted.names import error as dns_error

from mailgw.relay.destinations import is_local, node_addresses, parse
from mailgw.relay.errors import DeliveryError, permanent, temporary

log = Logger()


@dataclass(frozen=True)
class Target:
    """One address to connect to; C{host} names it (and is what a verified
    TLS certificate must match)."""
    host: str
    address: str
    port: int

    @property
    def label(self) -> str:
        return self.address if self.host == self.address else f"{self.host} [{self.address}]"


def make_resolver(server: str, reactor, resolvconf: bytes = b"/etc/resolv.conf",
                  hosts_file: bytes = b"/etc/hosts"):
    """A twisted.names resolver on C{reactor}: the DNS server C{"host:port"};
    or, when C{server} is empty, what C{client.createResolver} builds (the
    hosts file, a cache, the servers of resolv.conf), which cannot be given
    a reactor itself."""
    if server:
        host, _, port = server.rpartition(":")
        return client.Resolver(servers=[(host.strip("[]"), int(port))], reactor=reactor)
    return resolve.ResolverChain([
        hosts.Resolver(hosts_file), cache.CacheResolver(reactor=reactor),
        client.Resolver(resolv=resolvconf, reactor=reactor)])


def _literal(domain: str) -> str | None:
    """The address of an address-literal domain, else C{None}."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    text = domain[1:-1]
    if text.lower().startswith("ipv6:"):
        text = text[5:]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


class MXResolver:
    """Domain → ordered L{Target}s, over one twisted.names resolver.

    @param allow_local: keep targets at local addresses (see the module
        docstring); off by default.
    @param own_addresses: this node's addresses, local too (default, when
        C{allow_local} is off: L{node_addresses}, looked up once, here).
    """

    def __init__(self, resolver, port: int = 25, rand: random.Random | None = None,
                 allow_local: bool = False, own_addresses=None):
        self.resolver = resolver
        self.port = port
        self.rand = rand or random.Random()
        self.allow_local = allow_local
        if own_addresses is None:
            own_addresses = () if allow_local else node_addresses()
        self.own_addresses = frozenset(filter(None, map(parse, own_addresses)))

    @defer.inlineCallbacks
    def targets(self, domain: str):
        """@return: Deferred firing with a non-empty list of L{Target}, or
            failing with a L{DeliveryError} (permanent for a domain that does
            not exist, has a null MX, or whose targets are all local)."""
        literal = _literal(domain)
        if literal is not None:
            return self._literal_targets(domain, literal)
        hosts = yield self._mx_hosts(domain)
        implicit = hosts is None
        found, problems = yield self._resolve(hosts or [domain])
        targets = self._allowed(domain, found)
        if targets:
            return targets
        if problems:  # a host not yet resolved may still have a good address
            raise temporary("DNS look-up failed: " + "; ".join(problems))
        if found:
            raise _refused(found)
        if implicit:
            raise permanent(f"{domain} has no MX record and no address")
        raise temporary(f"no address found for the MX hosts of {domain}: "
                        + ", ".join(hosts))

    def _literal_targets(self, domain: str, address: str) -> list[Target]:
        """The one target of an address literal, unless it is local."""
        found = [Target(address, address, self.port)]
        if not self._allowed(domain, found):
            raise _refused(found)
        return found

    @defer.inlineCallbacks
    def _resolve(self, hosts: list[str]):
        """@return: Deferred firing with C{(targets, problems)}: the targets
            of C{hosts} in order, and the look-ups that failed (as text)."""
        found, problems = [], []
        for host in hosts:
            try:
                addresses = yield self._addresses(host)
            except dns_error.DomainError:
                addresses = []
            except Exception as e:
                problems.append(f"{host}: {dns_text(e)}")
                continue
            found += [Target(host, address, self.port) for address in addresses]
        return found, problems

    def _allowed(self, domain: str, targets: list[Target]) -> list[Target]:
        """C{targets} without the local ones (each one left out is logged)."""
        if self.allow_local:
            return targets
        allowed = []
        for target in targets:
            if not is_local(target.address, self.own_addresses):
                allowed.append(target)
                continue
            log.warn("relay: not connecting to {target} for {domain}: a local address "
                     "(relay.allow_local_destinations is off)", target=target.label,
                     domain=domain)
        return allowed

    @defer.inlineCallbacks
    def _mx_hosts(self, domain: str):
        """MX host names in the order to try, or C{None} for no MX record."""
        try:
            answers, _, _ = yield self.resolver.lookupMailExchange(domain)
        except Exception as e:
            # Only NXDOMAIN is final; a SERVFAIL or REFUSED passes and is retried.
            if no_such_name(e):
                raise permanent(f"domain {domain} does not exist") from None
            raise temporary(f"DNS look-up of the MX of {domain} failed: {dns_text(e)}") from e
        records = [(rr.payload.preference, str(rr.payload.name).rstrip(".").lower())
                   for rr in answers if rr.type == dns.MX]
        if not records:
            return None
        real = [(pref, name) for pref, name in records if name]
        if not real:
            raise permanent(f"{domain} accepts no mail (null MX)")
        by_preference = {}
        for pref, name in real:
            by_preference.setdefault(pref, []).append(name)
        ordered = []
        for pref in sorted(by_preference):
            names = sorted(set(by_preference[pref]))
            self.rand.shuffle(names)
            ordered += names
        return ordered

    @defer.inlineCallbacks
    def _addresses(self, host: str):
        """A then AAAA addresses of C{host} (an empty list when it has none)."""
        found = []
        for lookup, rtype, family in (
                (self.resolver.lookupAddress, dns.A, socket.AF_INET),
                (self.resolver.lookupIPV6Address, dns.AAAA, socket.AF_INET6)):
            try:
                answers, _, _ = yield lookup(host)
            except Exception:
                if family == socket.AF_INET or not found:
                    raise
                answers = []  # the A addresses will do
            for rr in answers:
                if rr.type == rtype:
                    found.append(socket.inet_ntop(family, rr.payload.address))
        return list(dict.fromkeys(found))


def _refused(targets: list[Target]) -> DeliveryError:
    """The permanent failure of a domain whose every target is local: no
    host was tried, so none is named as the remote one."""
    places = list(dict.fromkeys(
        t.address if t.host == t.address else f"{t.address} of {t.host}" for t in targets))
    what = "a local address " if len(places) == 1 else "local addresses "
    return permanent(f"refused to connect to {what}{', '.join(places)} "
                     "(relay.allow_local_destinations is off)")


def no_such_name(e: Exception) -> bool:
    """Whether C{e} says the name does not exist (NXDOMAIN). SERVFAIL and
    REFUSED are L{dns_error.DomainError}s too in twisted.names, so the plain
    class (what local resolvers raise) is matched exactly."""
    return isinstance(e, (dns_error.DNSNameError, dns_error.AuthoritativeDomainError)) \
        or type(e) is dns_error.DomainError


def dns_text(e: Exception) -> str:
    if isinstance(e, defer.TimeoutError) or isinstance(e, dns_error.DNSQueryTimeoutError):
        return "timed out"
    if isinstance(e, dns_error.DNSServerError):
        return "server failure"
    if isinstance(e, dns_error.DNSQueryRefusedError):
        return "refused"
    return type(e).__name__
