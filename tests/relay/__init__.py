"""Tests of the relay: the pure schedule and bounce builder, the SMTP client
against a sink server on loopback (L{tests.relay.sink}), MX resolution
against a twisted.names server (L{tests.relay.zone}), and the queue runner
on a real store (SQLite, and PostgreSQL when the run has one)."""
