"""Checking a domain's DNS records: on demand (C{mailgw domain check}) and
periodically, in the gateway (L{DNSMonitor}, docs/dkim.md).

A check looks up each record C{mailgw domain dns} asks for and rates it
(L{mailgw.domains.checks}); the domain's status is the worst of them:
C{Invalid}, then C{Missing}, else C{OK}. A look-up that fails for another
reason than the record not being there (a timeout, SERVFAIL) makes the
status C{Error}: it says nothing about what is published.
"""
from __future__ import annotations

import json
import time

from twisted.application import service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from mailgw.domains import checks, dkim
from mailgw.domains.lookup import DNSLookupError

log = Logger()

#: the statuses of a whole domain, best first
STATUSES = (checks.OK, checks.MISSING, checks.INVALID, "Error")
#: domains one node checks per round at most
BATCH = 20
#: seconds between two rounds at most (a round claims the domains due)
MAX_ROUND_INTERVAL = 300.0


def row(purpose: str, name: str, rtype: str, check: checks.Check) -> dict:
    """One record's result, as C{domain check} prints it."""
    return {"purpose": purpose, "name": name, "type": rtype, "status": check.status,
            "expected": check.expected, "found": list(check.found)}


@defer.inlineCallbacks
def check_domain(store, lookup, dns_config, domain):
    """Look up every record of C{domain} (an id, or a name with one owner).

    @param lookup: a L{mailgw.domains.lookup.DomainLookup}.
    @param dns_config: the L{mailgw.config.DNSConfig}.
    @return: Deferred firing with C{(name, rows)}, a row per record (see
        L{row}; DKIM rows also have C{selector}).
    @raise DNSLookupError: (as a failure) a look-up failed.
    """
    token = yield store.domain_verification_token(domain)  # fails for an unknown name
    found, _ = yield store.dns_check_result(domain)
    name = found.name
    keys = [k for k in (yield store.dkim_keys(found.id)) if not k.retiring]
    txt = yield lookup.txt(name)
    rows = [row("verification", name, "TXT", checks.verification_status(txt, token)),
            row("spf", name, "TXT", checks.spf_status(txt, dns_config.spf_include))]
    for key in keys:
        found = yield lookup.txt(key.dns_name)
        rows.append(dict(row("dkim", key.dns_name, "TXT",
                             checks.dkim_status(found, dkim.dns_value(key.private_key))),
                         selector=key.selector))
    if not keys:
        rows.append(row("dkim", f"<selector>._domainkey.{name}", "TXT", checks.Check(
            checks.MISSING, f"a DKIM key: run `mailgw domain rotate-dkim {name}`")))
    if dns_config.return_path_domain:
        rp = f"psrp.{name}"
        rows.append(row("return_path", rp, "CNAME", checks.return_path_status(
            (yield lookup.cname(rp)), dns_config.return_path_domain)))
    rows.append(row("mx", name, "MX", checks.mx_status((yield lookup.mx(name)))))
    return name, rows


async def check_and_keep(store, lookup, dns_config, domain) -> list[dict]:
    """L{check_domain} now, its result kept as the periodic check keeps its
    own (C{mailgw domain check}, the web page's button).

    @return: the rows.
    """
    _, rows = await check_domain(store, lookup, dns_config, domain)
    found, _ = await store.dns_check_result(domain)
    await store.record_dns_check(found.id, time.time(), overall(rows), json.dumps(rows))
    return rows


def overall(rows) -> str:
    """The domain's status: the worst of its records'."""
    return max((r["status"] for r in rows), key=STATUSES.index, default=checks.OK)


def summary(rows) -> str:
    """The records that are not OK, for a log line: C{spf Missing, dkim Invalid}."""
    return ", ".join(f"{r['purpose']} {r['status']}" for r in rows if r["status"] != checks.OK)


class DNSMonitor(service.Service):
    """Checks each domain's records every C{[dns] check_interval} seconds,
    logs the result, keeps it in the store (C{mailgw domain list}) and
    exports it as C{mailgw_domain_dns_status}.

    Each round claims the domains that are due in the store, so that with
    several nodes each domain is checked by one of them per interval; every
    node's gauges show every domain's last result, as the store keeps it.
    A domain whose status changes is logged as a warning (or, back to OK,
    as information); an unchanged one at debug level.
    """

    def __init__(self, store, lookup, dns_config, clock, metrics=None):
        """
        @param store: an L{mailgw.interfaces.IAdmin}.
        @param lookup: a L{mailgw.domains.lookup.DomainLookup}, or a callable
            making one when the service starts.
        @param dns_config: the L{mailgw.config.DNSConfig}.
        @param clock: an C{IReactorTime}.
        @param metrics: a L{mailgw.metrics.Metrics}, or C{None}.
        """
        self.store, self.lookup, self.dns = store, lookup, dns_config
        self.clock, self.metrics = clock, metrics
        self.interval = dns_config.check_interval
        self._loop = None
        self._round = None
        #: called after each kept result with C{(domain, status, rows, checked
        #: at)}, may return a Deferred (the gateway writes DomainDNSError
        #: webhooks with it, docs/webhooks.md)
        self.after_check = None

    def startService(self):
        super().startService()
        if self.interval <= 0:
            return
        if callable(self.lookup):
            self.lookup = self.lookup()
        self._loop = LoopingCall(self.run_round)
        self._loop.clock = self.clock
        self._loop.start(min(self.interval, MAX_ROUND_INTERVAL), now=True)

    def stopService(self):
        """Stop. A round under way is not waited for (a look-up may take
        15 seconds): it records nothing more and ends by itself."""
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def run_round(self):
        """Check the domains that are due, then refresh the gauges.

        @return: a Deferred that never fails (the rounds go on).
        """
        d = self._round = defer.ensureDeferred(self._run_round())
        d.addErrback(lambda f: log.warn("domain DNS checks: {error}",
                                        error=f.getErrorMessage()))

        def done(_):
            self._round = None
        d.addBoth(done)
        return d

    async def _run_round(self):
        now = self.clock.seconds()
        while self.running:
            domains = await self.store.claim_dns_checks(now, self.interval, BATCH)
            for domain in domains:
                await self.check(domain)
            if len(domains) < BATCH or not self.running:
                break
        if self.metrics is not None and self.running:
            self._export(await self.store.list_domains())

    async def check(self, domain):
        """Check one domain now and keep the result.

        @return: its status.
        """
        try:
            _, rows = await check_domain(self.store, self.lookup, self.dns, domain.id)
            status, detail = overall(rows), summary(rows)
        except DNSLookupError as e:
            rows, status, detail = [], "Error", str(e)
        if not self.running:
            return status
        checked_at = self.clock.seconds()
        await self.store.record_dns_check(domain.id, checked_at, status, json.dumps(rows))
        if self.after_check is not None:
            try:
                await self.after_check(domain, status, rows, checked_at)
            except Exception:
                log.failure("domain DNS check: {domain}: what follows a check failed",
                            domain=domain.name)
        if self.metrics is not None:
            self.metrics.domain_dns_checks.labels(status).inc()
        changed = domain.dns_status is not None and domain.dns_status != status
        if status == checks.OK:
            level = log.info if changed else log.debug
            level("domain DNS check: {domain} ({owner}): OK", domain=domain.name,
                  owner=domain.owner)
        else:
            level = log.warn if changed or domain.dns_status is None else log.info
            level("domain DNS check: {domain} ({owner}): {status}: {detail}",
                  domain=domain.name, owner=domain.owner, status=status, detail=detail)
        return status

    def _export(self, domains) -> None:
        gauge = self.metrics.domain_dns_status
        gauge.clear()  # a removed domain's series goes
        for domain in domains:
            if domain.dns_status is None:
                continue
            for status in STATUSES:
                gauge.labels(domain.name, domain.owner, status).set(
                    1 if domain.dns_status == status else 0)
