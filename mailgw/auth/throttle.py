"""Authentication failure throttling, per client key (docs/smtp.md §4,
docs/operations.md).

After C{max_failures} failures within C{window} seconds a client key is
locked out for C{lockout} seconds: its sessions get a 421 and are closed, and
so are its new connections. A key is an IPv4 address, or the IPv6 network of
C{ipv6_prefix} bits holding an IPv6 address (a site is usually given a whole
/64, so counting single IPv6 addresses would let it guess without end). One
throttle serves every listener and the HTTP API, so an attacker cannot spread
guesses over protocols.

Every failure costs the same, however many keys are tracked, and memory is
bounded: keys are kept in least-recently-failed order, at most C{max_entries}
of them (a new key beyond that forgets the least recently failed one, and
lock-outs only when nothing else is left), each with at most C{max_failures}
timestamps; keys whose failures have left the window are forgotten a few at a
time as failures come in, never by a sweep of the whole table.

The throttle in memory decides, on each node. L{SharedLockouts} only shows
its lock-outs to the operator (C{mailgw throttle list}) through the store and
applies the operator's clears (C{mailgw throttle clear}), on every node that
shares the database.
"""
from __future__ import annotations

import functools
import ipaddress
import os
import socket
from array import array
from collections import OrderedDict

from twisted.application import service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from mailgw.interfaces import StoreUnavailable

log = Logger()

#: keys tracked at most by default (some 40 MB when each has nearly
#: max_failures failures)
MAX_ENTRIES = 100_000
#: stale keys forgotten per failure at most: enough to keep up with the keys
#: a failure can add (one), small enough that no failure waits for a sweep
EXPIRE_STEP = 2
#: seconds between two reads of the operator's clears (docs/operations.md)
POLL_INTERVAL = 1.0
#: added to an IPv6 key, so that it never equals an IPv4 key
_IPV6 = 1 << 128


@functools.lru_cache(maxsize=4096)
def _address(text: str):
    """C{text} as an address: a zone index dropped (it names an interface,
    not a host) and an IPv4-mapped IPv6 address as its IPv4 address. Kept
    for the addresses seen last: every connection asks, and most come from
    a few addresses.

    @raise ValueError: C{text} is not an IP address.
    """
    ip = ipaddress.ip_address(text.split("%")[0])
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip


def _key_of(ip, ipv6_prefix: int) -> int:
    """The key (an int) counting the normalised address C{ip}."""
    if ip.version == 4:
        return int(ip)
    shift = 128 - ipv6_prefix
    return _IPV6 | (int(ip) >> shift << shift)


def _key_text(key: int, ipv6_prefix: int) -> str:
    """What operators see of a key: C{192.0.2.1} or C{2001:db8:1:2::/64}."""
    if key < _IPV6:
        return str(ipaddress.IPv4Address(key))
    network = ipaddress.IPv6Address(key ^ _IPV6)
    return str(network) if ipv6_prefix == 128 else f"{network}/{ipv6_prefix}"


def _key_named(text: str, ipv6_prefix: int) -> int:
    """The key counting C{text}: an address, or a network within one key
    (C{2001:db8:1:2::/64}; any IPv4 network but a /32 holds several keys).

    @raise ValueError: C{text} is neither, or holds several keys.
    """
    text = text.strip()
    try:
        if "/" not in text:
            return _key_of(_address(text), ipv6_prefix)
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"not an IP address or network: {text!r}") from None
    if network.num_addresses == 1:
        return _key_of(_address(str(network.network_address)), ipv6_prefix)
    if (network.version == 6 and network.prefixlen >= ipv6_prefix
            and network.network_address.ipv4_mapped is None):
        return _key_of(network.network_address, ipv6_prefix)
    wanted = "an IPv4 address" if network.version == 4 else f"at most a /{ipv6_prefix}"
    raise ValueError(f"{text} holds several throttled addresses: name {wanted}")


def throttle_key(text: str, ipv6_prefix: int = 64) -> str:
    """The key text a throttle with C{ipv6_prefix} counts C{text} under, as
    L{FailureThrottle.lockouts} and the store name it: C{::ffff:192.0.2.1}
    gives C{192.0.2.1}, C{2001:db8:1:2::5} gives C{2001:db8:1:2::/64}.

    @raise ValueError: as L{FailureThrottle.clear}.
    """
    return _key_text(_key_named(text, ipv6_prefix), ipv6_prefix)


class FailureThrottle:
    """Counts authentication failures per client key and locks out a key
    that fails too often (see the module docstring).

    @ivar on_lockout: called with C{(key text, locked_until, failures)} each
        time a key becomes locked out (L{SharedLockouts} records it in the
        store), or C{None}.
    """

    def __init__(self, clock, max_failures: int = 10, window: float = 600.0,
                 lockout: float = 900.0, exempt=(), ipv6_prefix: int = 64,
                 max_entries: int = MAX_ENTRIES):
        """
        @param clock: an C{IReactorTime}; its C{seconds()} are epoch seconds
            in production, and the times L{lockouts} reports.
        @param exempt: networks (text) never counted nor locked out.
        @param ipv6_prefix: the bits of an IPv6 address that make its key.
        @param max_entries: keys tracked at most, counting and locked out.
        """
        self._clock = clock
        self.max_failures = max_failures
        self.window = window
        self.lockout = lockout
        self.ipv6_prefix = ipv6_prefix
        self.max_entries = max_entries
        networks = [ipaddress.ip_network(n, strict=False) for n in exempt]
        self._exempt = {v: tuple(n for n in networks if n.version == v) for v in (4, 6)}
        #: key -> failure times, oldest first; least recently failed key first
        self._counting: OrderedDict[int, array] = OrderedDict()
        #: key -> [locked_until, failures]; earliest lock first
        self._locks: OrderedDict[int, list] = OrderedDict()
        self.on_lockout = None

    @classmethod
    def from_config(cls, clock, config):
        """The throttle of failed keys, from an
        L{mailgw.config.AuthThrottleConfig}."""
        return cls(clock, config.max_failures, config.window, config.lockout,
                   config.exempt, config.ipv6_prefix)

    @classmethod
    def anonymous_from_config(cls, clock, config):
        """The throttle of attempts made without any key (C{RCPT TO} before
        AUTH, an API call without C{X-Server-API-Key}): the same as
        L{from_config} but with C{anonymous_max_failures}, so that keyless
        noise from a shared address never locks out its working keys."""
        return cls(clock, config.anonymous_max_failures, config.window, config.lockout,
                   config.exempt, config.ipv6_prefix)

    def __len__(self) -> int:
        """The number of keys tracked, counting or locked out."""
        return len(self._counting) + len(self._locks)

    def _key(self, address: str):
        """The key counting C{address}, or C{None} (exempt, or not an address)."""
        try:
            ip = _address(address)
        except ValueError:
            return None
        if any(ip in network for network in self._exempt[ip.version]):
            return None
        return _key_of(ip, self.ipv6_prefix)

    def locked(self, address: str) -> bool:
        """Is C{address} locked out now?"""
        key = self._key(address)
        lock = self._locks.get(key)
        if lock is None:
            return False
        if self._clock.seconds() >= lock[0]:
            del self._locks[key]
            return False
        return True

    def record_failure(self, address: str) -> bool:
        """Count one failure of C{address}.

        @return: C{True} when its key is locked out now (by this failure or
            before it).
        """
        key = self._key(address)
        if key is None:
            return False
        now = self._clock.seconds()
        self._expire(now)
        lock = self._locks.get(key)
        if lock is not None:
            if now < lock[0]:
                lock[1] += 1
                return True
            del self._locks[key]
        times = self._counting.get(key)
        if times is None:
            self._make_room()
            times = self._counting[key] = array("d")  # no float object per time
        else:
            self._counting.move_to_end(key)
        times.append(now)
        # at most max_failures + 1 times: the cost does not grow with the keys
        while times[0] <= now - self.window or len(times) > self.max_failures:
            del times[0]
        if len(times) < self.max_failures:
            return False
        del self._counting[key]
        until = now + self.lockout
        self._locks[key] = [until, len(times)]
        if self.on_lockout is not None and self.lockout > 0:
            self.on_lockout(_key_text(key, self.ipv6_prefix), until, len(times))
        return True

    def _expire(self, now: float) -> None:
        """Forget up to L{EXPIRE_STEP} stale keys of each kind: both tables
        are in time order, so the stale ones are at the front."""
        counting, locks = self._counting, self._locks
        for _ in range(EXPIRE_STEP):
            if not counting:
                break
            key = next(iter(counting))
            if counting[key][-1] > now - self.window:
                break
            del counting[key]
        for _ in range(EXPIRE_STEP):
            if not locks:
                break
            key = next(iter(locks))
            if locks[key][0] > now:
                break
            del locks[key]

    def _make_room(self) -> None:
        """Forget the least recently failed key while the table is full; a
        lock-out only when every key tracked is locked out."""
        while len(self) >= self.max_entries and len(self):
            if self._counting:
                self._counting.popitem(last=False)
            else:
                self._locks.popitem(last=False)

    def lockouts(self) -> list[tuple[str, float, int]]:
        """The keys locked out now, earliest lock first.

        @return: C{(key text, locked_until, failures)} for each, C{failures}
            counting those during the lock-out too.
        """
        now = self._clock.seconds()
        return [(_key_text(key, self.ipv6_prefix), until, failures)
                for key, (until, failures) in self._locks.items() if until > now]

    def clear(self, address: str) -> bool:
        """Forget the lock-out and the counted failures of the key counting
        C{address}: an address, or the key's network text
        (C{2001:db8:1:2::/64}) as L{lockouts} gives it.

        @return: C{True} when the key was locked out or had failures.
        @raise ValueError: C{address} is not an address, or a network wider
            than one key.
        """
        key = _key_named(address, self.ipv6_prefix)
        lock = self._locks.pop(key, None)
        counted = self._counting.pop(key, None)
        return counted is not None or (lock is not None
                                       and lock[0] > self._clock.seconds())


def default_node() -> str:
    """This process's name among the nodes sharing a database: the machine
    and the process, so that an operator knows where a lock-out is."""
    return f"{socket.gethostname()}/{os.getpid()}"


class SharedLockouts(service.Service):
    """This node's lock-outs, recorded in the store for C{mailgw throttle
    list}, and the operator's clears (C{mailgw throttle clear}) applied to
    this node's throttles within L{POLL_INTERVAL} (docs/operations.md).

    The store is only a notice board: each node's throttles still decide
    alone, on their own counts. Started once the store is ready; on stop the
    node's rows are removed, since its lock-outs end with it.
    """

    def __init__(self, store, clock, throttles: dict, node: str | None = None,
                 interval: float = POLL_INTERVAL):
        """
        @param store: an L{mailgw.interfaces.IAdmin}.
        @param clock: an C{IReactorTime} for the polls.
        @param throttles: C{{kind: FailureThrottle}}, the kind (C{"key"} or
            C{"anonymous"}) being what the store calls their lock-outs.
        @param node: this node's name in the store (default: L{default_node}).
        """
        self.store = store
        self.clock = clock
        self.throttles = dict(throttles)
        self.node = node or default_node()
        self.interval = interval
        #: the newest clear applied (or seen at start); C{None}: not read yet
        self.last_clear = None
        self._loop = None
        self._polling = None
        self._failing = False
        for kind, throttle in self.throttles.items():
            throttle.on_lockout = functools.partial(self._record, kind)

    def startService(self):
        super().startService()
        self._loop = LoopingCall(self.poll)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True)

    def stopService(self):
        """Stop polling, then remove this node's lock-outs from the store.

        @return: a Deferred firing when done (never failing: a store that is
            gone only leaves rows that expire by themselves).
        """
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        d = defer.succeed(None) if self._polling is None else self._polling
        d.addCallback(lambda _: self.store.forget_lockouts(self.node))
        d.addErrback(lambda f: log.warn("could not remove this node's lock-outs from the "
                                        "store: {error}", error=f.getErrorMessage()))
        return d

    def _record(self, kind: str, address: str, until: float, failures: int) -> None:
        log.warn("{address} locked out for {seconds:.0f} s after {failures} authentication "
                 "failures ({kind} throttle)", address=address,
                 seconds=until - self.clock.seconds(), failures=failures, kind=kind)
        if not self.running:
            return
        d = self.store.record_lockout(address, self.node, kind, until, failures)
        d.addErrback(lambda f: log.warn("could not record the lock-out of {address} in "
                                        "the store: {error}", address=address,
                                        error=f.getErrorMessage()))

    def poll(self):
        """Apply the clears recorded since the last poll (the first poll only
        notes where the clears stand: older ones were meant for the nodes
        running then).

        @return: a Deferred that never fails, so that the polling goes on.
        """
        if self.last_clear is None:
            d = self.store.latest_throttle_clear()
            d.addCallback(self._start_from)
        else:
            d = self.store.throttle_clears_after(self.last_clear)
            d.addCallback(self._apply)
        d.addCallbacks(self._readable, self._unreadable)
        self._polling = d
        return d

    def _start_from(self, clear_id: int) -> None:
        self.last_clear = clear_id

    def _apply(self, clears) -> None:
        for clear in clears:
            self.last_clear = clear.id
            found = []
            for kind, throttle in self.throttles.items():
                try:
                    if throttle.clear(clear.address):
                        found.append(kind)
                except ValueError as e:  # a key this node's ipv6_prefix cannot name
                    log.warn("cannot clear {address}: {error}", address=clear.address,
                             error=e)
                    break
            log.info("throttle cleared for {address} by the operator: {what}",
                     address=clear.address,
                     what=f"forgotten by the {' and '.join(found)} throttle" if found
                     else "nothing counted on this node")

    def _readable(self, _):
        if self._failing:
            self._failing = False
            log.info("the operator's throttle clears are readable again")

    def _unreadable(self, failure):
        if not failure.check(StoreUnavailable):
            log.failure("reading the operator's throttle clears failed", failure)
            return
        # an outage is logged once, not every second
        if not self._failing:
            self._failing = True
            log.warn("cannot read the operator's throttle clears, trying every {interval:g} s: "
                     "{error}", interval=self.interval, error=failure.getErrorMessage())
