"""File descriptors: every open connection holds one, and so do the store,
the logs, the listening sockets and the relay's outgoing connections.

The connection caps (each SMTP listener's C{max_connections} and the HTTP
API's) only protect the gateway if the process may open that many
descriptors: past the limit C{accept()} fails, new clients hang in the
kernel's backlog and even the store cannot open a file. So at start the
soft C{RLIMIT_NOFILE} is raised to the hard limit (which needs no privilege;
see getrlimit(2)), and when the caps and a reserve still do not fit under it,
one warning says so, with the numbers and what to lower. The gateway starts
all the same: the caps are upper bounds, rarely all reached at once.
"""
from __future__ import annotations

import resource as _resource
from dataclasses import dataclass

from twisted.logger import Logger

from mailgw.config import Config

log = Logger()

#: descriptors kept for everything but client connections: standard streams,
#: logs, listening sockets, the metrics listener and its scrapes, spool files,
#: DNS look-ups
RESERVE = 64
#: SQLite's writer and two readers, each with the database and its WAL open,
#: and their shared-memory file
SQLITE_DESCRIPTORS = 7


@dataclass(frozen=True)
class DescriptorBudget:
    """The descriptors the gateway may hold at once, by what holds them."""

    #: C{(config key, max_connections)} for every SMTP listener and the HTTP API
    caps: tuple[tuple[str, int], ...]
    #: descriptors of the store, the relay and everything else (L{RESERVE})
    reserve: int

    @property
    def total(self) -> int:
        """The caps and the reserve together."""
        return sum(cap for _, cap in self.caps) + self.reserve


def budget(config: Config) -> DescriptorBudget:
    """What C{config} may hold open at once.

    @return: a L{DescriptorBudget}: every listener's cap, the HTTP API's
        when it is on, and L{RESERVE} plus the store's connections (the
        PostgreSQL pool, or L{SQLITE_DESCRIPTORS}) plus the relay's
        concurrent deliveries when the relay is on.
    """
    caps = [(f"listeners[{i}].max_connections", listener.max_connections)
            for i, listener in enumerate(config.listeners)]
    if config.http_api is not None:
        caps.append(("http_api.max_connections", config.http_api.max_connections))
    # PostgreSQL: the pool, of at least one reader and the writer's two
    # sessions, and one more for the duplicate of the pipeline session's
    # socket that the reactor watches
    store = (SQLITE_DESCRIPTORS if config.database.url.startswith("sqlite:")
             else max(3, config.database.pool_size) + 1)
    relay = config.relay.concurrency if config.relay.enabled else 0
    return DescriptorBudget(tuple(caps), RESERVE + store + relay)


def shortfall(needed: DescriptorBudget, limit: int | None) -> str | None:
    """The warning to log when C{needed} does not fit under C{limit}.

    @param limit: the soft C{RLIMIT_NOFILE} in force, or None (no limit).
    @return: one line naming the numbers and what to lower, or None when
        everything fits.
    """
    if limit is None or needed.total <= limit:
        return None
    caps = ", ".join(f"{key} = {cap}" for key, cap in needed.caps) or "no listeners"
    return (f"the connection caps need up to {needed.total} file descriptors ({caps}, "
            f"and {needed.reserve} for the store, logs and relay) but the open files "
            f"limit is {limit}: lower those max_connections by {needed.total - limit} "
            "in all, or raise the hard limit (ulimit -Hn, systemd LimitNOFILE=)")


def raise_open_files_limit(resource=_resource) -> int | None:
    """Raise the soft C{RLIMIT_NOFILE} to the hard limit.

    @param resource: the C{resource} module (tests pass a stand-in).
    @return: the soft limit now in force, or None when it is unlimited.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as e:
            # e.g. an unlimited hard limit the kernel will not grant
            log.warn("could not raise the open files limit from {soft} to {hard}: {why}",
                     soft=soft, hard=hard, why=e)
        else:
            log.info("open files limit raised from {soft} to {hard}", soft=soft, hard=hard)
            soft = hard
    return None if soft == resource.RLIM_INFINITY else soft


def check_descriptors(config: Config, resource=_resource) -> str | None:
    """At start: raise the open files limit, then warn (once) when the
    connection caps of C{config} do not fit under it.

    @param resource: the C{resource} module (tests pass a stand-in).
    @return: the warning logged, or None.
    """
    warning = shortfall(budget(config), raise_open_files_limit(resource))
    if warning is not None:
        # not "warning=": the legacy log takes an event with that key for a
        # Python warning
        log.warn("{line}", line=warning)
    return warning
