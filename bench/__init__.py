"""``make bench``: a load generator for mailgw and an aiosmtpd baseline.

- L{bench.load}: the clients (raw asyncio streams + ssl): STARTTLS, AUTH PLAIN,
  lock-step MAIL/RCPT/DATA, latency of the final-dot reply, idle connections.
- L{bench.servers}: the two servers as child processes (``twistd -n mailgw``
  on a throwaway config, L{bench.baseline_server}) and what /proc says of them.
- L{bench.run}: the scenarios, the table and the targets
  (``python -m bench.run [--quick]``).
"""
