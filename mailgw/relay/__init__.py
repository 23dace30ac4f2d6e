"""The relay: delivers the queue to a smarthost or to the recipients' MX hosts.

  - L{mailgw.relay.service}: the queue runner (claims, leases, concurrency);
  - L{mailgw.relay.delivery}: one delivery job (a route and its entries);
  - L{mailgw.relay.client} / L{mailgw.relay.wire}: our own SMTP client;
  - L{mailgw.relay.mx}: MX resolution over twisted.names;
  - L{mailgw.relay.schedule}: the retry schedule (pure);
  - L{mailgw.relay.bounce}: RFC 3464 delivery-status notifications.
"""
