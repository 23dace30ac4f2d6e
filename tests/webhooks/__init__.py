"""Tests of mailgw.webhooks: payloads, signatures, the private address rule, the outbox and its sender."""
