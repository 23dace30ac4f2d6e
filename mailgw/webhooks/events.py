"""Webhook events from outside a store transaction: DomainDNSError, after the
gateway's periodic DNS check of a domain (docs/webhooks.md).

The check's result is committed first; the event is written right after it,
in a transaction of its own. A crash between the two loses that one event,
and the next check (an interval later) writes it again if the records are
still wrong: Postal, too, sends DomainDNSError at each of its scheduled
checks that finds a problem.
"""
from __future__ import annotations

from twisted.internet import defer

from mailgw.webhooks import payloads


@defer.inlineCallbacks
def domain_checked(store, domain, status, rows, checked_at):
    """The DNS monitor checked C{domain} (L{mailgw.domains.monitor.DNSMonitor}'s
    C{after_check}): DomainDNSError for a server's domain whose records break
    Postal's rule (L{payloads.dns_ok}).

    @param store: an L{mailgw.interfaces.IStore}.
    @param status: the domain's overall status (C{Error}: a look-up failed,
        which says nothing about the records: no event).
    @return: Deferred firing with the number of requests written.
    """
    if domain.server_id is None or status == "Error" or not rows or payloads.dns_ok(rows):
        return 0
    server = yield store.server_by_id(domain.server_id)
    if server is None:
        return 0
    written = yield store.trigger_webhook(
        server.id, "DomainDNSError", payloads.dns_error_payload(server, domain, checked_at,
                                                                rows))
    return written
