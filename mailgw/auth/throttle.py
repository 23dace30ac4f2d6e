"""Authentication failure throttling, per client address (docs/smtp.md §4).

After C{max_failures} failures within C{window} seconds an address is locked
out for C{lockout} seconds: its sessions get a 421 and are closed, and so are
its new connections. One throttle serves every listener and the HTTP API, so
an attacker cannot spread guesses over protocols. Memory is bounded: at most
C{max_failures} timestamps per address, and expired addresses are forgotten.
"""
from __future__ import annotations

import ipaddress
from collections import deque

#: past this many tracked addresses, expired ones are swept on the next failure
SWEEP_AT = 10_000


def _normal(address: str):
    ip = ipaddress.ip_address(address.split("%")[0])
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip


class FailureThrottle:
    def __init__(self, clock, max_failures: int = 10, window: float = 600.0,
                 lockout: float = 900.0, exempt=()):
        self._clock = clock
        self.max_failures = max_failures
        self.window = window
        self.lockout = lockout
        self._exempt = [ipaddress.ip_network(n, strict=False) for n in exempt]
        self._failures: dict = {}
        self._locked_until: dict = {}

    @classmethod
    def from_config(cls, clock, config):
        return cls(clock, config.max_failures, config.window, config.lockout, config.exempt)

    def _key(self, address: str):
        try:
            ip = _normal(address)
        except ValueError:
            return None
        if any(ip.version == n.version and ip in n for n in self._exempt):
            return None
        return ip

    def locked(self, address: str) -> bool:
        """Is C{address} locked out now?"""
        key = self._key(address)
        until = self._locked_until.get(key)
        if until is None:
            return False
        if self._clock.seconds() >= until:
            del self._locked_until[key]
            return False
        return True

    def record_failure(self, address: str) -> bool:
        """Count one failure; True when C{address} is (now) locked out."""
        key = self._key(address)
        if key is None:
            return False
        now = self._clock.seconds()
        times = self._failures.setdefault(key, deque(maxlen=self.max_failures))
        times.append(now)
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(self._failures) > SWEEP_AT:
            self._sweep(now)
        if len(times) >= self.max_failures:
            self._locked_until[key] = now + self.lockout
            self._failures.pop(key, None)
            return True
        return self.locked(address)

    def _sweep(self, now: float) -> None:
        for key in [k for k, t in self._failures.items() if not t or t[-1] <= now - self.window]:
            del self._failures[key]
        for key in [k for k, until in self._locked_until.items() if until <= now]:
            del self._locked_until[key]
