-- mailgw schema 5: the periodic DNS check of each domain (docs/dkim.md).
-- dns_claimed_at: when a node took the domain's check (so that one node
-- checks it per interval, whichever runs); dns_checked_at and dns_status:
-- the last result and its time, dns_status being "OK", "Missing", "Invalid"
-- or "Error"; dns_records: each record's result as JSON text.

ALTER TABLE domains ADD COLUMN dns_claimed_at DOUBLE PRECISION;
ALTER TABLE domains ADD COLUMN dns_checked_at DOUBLE PRECISION;
ALTER TABLE domains ADD COLUMN dns_status TEXT;
ALTER TABLE domains ADD COLUMN dns_records TEXT;
