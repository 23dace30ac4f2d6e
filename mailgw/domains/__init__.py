"""Sender domains: their DKIM keys and the DNS records an operator publishes
for them (ownership, SPF, DKIM, return path)."""
