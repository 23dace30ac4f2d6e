"""Webhooks (docs/webhooks.md): Postal's events, signed with the gateway's
RSA key and sent from a durable outbox in the store.

L{mailgw.webhooks.payloads} builds the events' payloads (pure, also used by
the store inside the transaction that causes an event);
L{mailgw.webhooks.signing} holds the key and the signatures;
L{mailgw.webhooks.addresses} refuses private destinations;
L{mailgw.webhooks.sender} sends one request with treq, to a checked address;
L{mailgw.webhooks.service} claims due requests and has them sent, retried
and recorded. The outbox's SQL is L{mailgw.store.webhooks}.
"""
