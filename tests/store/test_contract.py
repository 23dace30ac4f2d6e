"""The store contract: every method of IDirectory, IQueue and IAdmin (the
failure throttle's notice board included), written once (L{StoreContract}) and run against each engine.

An engine's TestCase supplies two hooks: C{new_location()} (a fresh, empty
database: a file path or a URL) and C{store_at(location)} (an unstarted store
on it). C{make_store()} starts one and closes it in the test's cleanup.
"""
from __future__ import annotations

import io
import os

from twisted.internet import defer
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from mailgw.interfaces import Conflict, IStore, NotFound, StoreUnavailable
from mailgw.model import MessageEnvelope, generate_key, generate_token
from mailgw.model import DeliveryAttempt
from mailgw.store.base import (
    CHUNK_SIZE, CLEAR_RETENTION, Lockout, Q, schema_files, split_statements,
)
from tests import pgcluster
from tests.store import postgres_admin


def _count_chunks(message_id):
    rows = yield Q("SELECT count(*) FROM message_chunks WHERE message_id = ?", (message_id,))
    return rows[0][0]


def _literal_percent_and_question(value):
    rows = yield Q("SELECT '100%' || ?, 5 % 3, '?' -- a comment with ? and %\n", (value,))
    return rows


def _insert_organization_twice(permalink):
    for _ in range(2):
        yield Q("INSERT INTO organizations (permalink, name, suspended, created_at) "
                "VALUES (?, ?, ?, ?)", (permalink, "x", False, 0.0))


def _rows_of(table):
    rows = yield Q(f"SELECT count(*) FROM {table}")
    return rows[0][0]


def _add_clear(address, cleared_at):
    yield Q("INSERT INTO throttle_clears (address_key, cleared_at) VALUES (?, ?)",
            (address, cleared_at))


def _delete_clears():
    yield Q("DELETE FROM throttle_clears")


def _hold(entry_id):
    yield Q("UPDATE queue SET status = 'held', hold_reason = 'why' WHERE id = ?", (entry_id,))


def _apply_schema_up_to(engine, last, skip=()):
    """Schema versions 1 to C{last} (but those in C{skip}) as the upgrade
    applies them: a database as an older mailgw left it."""
    plain = None if engine == "postgresql" else ()
    yield Q("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, "
            "applied_at REAL NOT NULL DEFAULT 0)", plain)
    for version, sql in schema_files(engine):
        if version <= last and version not in skip:
            for statement in split_statements(sql):
                yield Q(statement, plain)
            yield Q("INSERT INTO schema_version (version) VALUES (?)", (version,))


def _insert_domain_without_token(name, organization_id):
    """A domain as a node that runs an older mailgw adds it."""
    rows = yield Q("INSERT INTO domains (name, organization_id, verified, use_for_any, "
                   "created_at) VALUES (?, ?, ?, ?, ?) RETURNING id",
                   (name, organization_id, False, False, 0.0))
    return rows[0][0]


def _token_of(domain_id):
    rows = yield Q("SELECT verification_token FROM domains WHERE id = ?", (domain_id,))
    return rows[0][0]


class StoreContract:
    """Mixed into a C{TestCase} with C{new_location} and C{store_at}."""

    def new_location(self):
        raise NotImplementedError

    def store_at(self, location):
        raise NotImplementedError

    @defer.inlineCallbacks
    def make_store(self, location=None):
        """A started store on C{location} (default: this test's database)."""
        store = self.store_at(self.location if location is None else location)
        yield store.start()
        self.addCleanup(store.close)
        return store

    @defer.inlineCallbacks
    def setUp(self):
        self.location = self.new_location()
        self.store = yield self.make_store()
        self.applied = yield self.store.upgrade()

    # -- fixtures ------------------------------------------------------------

    @defer.inlineCallbacks
    def tenancy(self):
        """acme/mail, acme/other and globex/main."""
        s = self.store
        yield s.add_organization("acme", "Acme")
        yield s.add_organization("globex", "Globex")
        self.mail = yield s.add_server("acme", "mail", "Mail")
        self.other = yield s.add_server("acme", "other", "Other")
        self.main = yield s.add_server("globex", "main", "Main")

    def envelope(self, server, rcpts=("a@x.example",), **kw):
        kw.setdefault("token", generate_token(12))
        return MessageEnvelope(server_id=server.id, credential_id=kw.pop("credential_id", None),
                               mail_from=kw.pop("mail_from", "from@acme.example"),
                               rcpt_to=tuple(rcpts), sender_domain=kw.pop("domain", "acme.example"),
                               protocol="smtp", **kw)

    # -- IAdmin: schema and the interface --------------------------------------

    def test_provides_istore(self):
        self.assertTrue(verifyObject(IStore, self.store))
        self.assertIn(self.store.engine, ("sqlite", "postgresql"))

    @defer.inlineCallbacks
    def test_upgrade_applies_every_version_once(self):
        shipped = [v for v, _ in schema_files(self.store.engine)]
        self.assertEqual(self.applied, shipped)
        self.assertEqual((yield self.store.upgrade()), [])
        again = yield self.make_store()
        self.assertEqual((yield again.upgrade()), [])

    # -- IAdmin: organizations --------------------------------------------------

    @defer.inlineCallbacks
    def test_add_organization(self):
        org = yield self.store.add_organization("acme", "Acme Inc")
        self.assertEqual((org.permalink, org.name, org.suspended), ("acme", "Acme Inc", False))
        self.assertIsInstance(org.id, int)
        self.assertEqual((yield self.store.list_organizations()), [org])

    @defer.inlineCallbacks
    def test_add_organization_conflict(self):
        yield self.store.add_organization("acme", "Acme")
        yield self.assertFailure(self.store.add_organization("acme", "Again"), Conflict)
        self.assertEqual(len((yield self.store.list_organizations())), 1)

    @defer.inlineCallbacks
    def test_list_organizations_in_byte_order(self):
        for permalink in ("b", "ab", "a0", "a-c"):
            yield self.store.add_organization(permalink, permalink.upper())
        orgs = yield self.store.list_organizations()
        self.assertEqual([o.permalink for o in orgs], ["a-c", "a0", "ab", "b"])

    @defer.inlineCallbacks
    def test_set_organization_suspended(self):
        yield self.tenancy()
        org = yield self.store.set_organization_suspended("acme", True)
        self.assertTrue(org.suspended)
        server = yield self.store.server_by_id(self.mail.id)
        self.assertTrue(server.organization_suspended)
        self.assertFalse(server.suspended)
        self.assertTrue(server.is_suspended)
        untouched = yield self.store.server_by_id(self.main.id)
        self.assertFalse(untouched.is_suspended)
        org = yield self.store.set_organization_suspended("acme", False)
        self.assertFalse(org.suspended)
        self.assertFalse((yield self.store.server_by_id(self.mail.id)).is_suspended)

    def test_set_organization_suspended_not_found(self):
        return self.assertFailure(self.store.set_organization_suspended("nope", True), NotFound)

    # -- IAdmin: servers ------------------------------------------------------------

    @defer.inlineCallbacks
    def test_add_server_defaults(self):
        org = yield self.store.add_organization("acme", "Acme")
        server = yield self.store.add_server("acme", "mail", "Mail")
        self.assertEqual(
            (server.organization_id, server.organization_permalink, server.permalink,
             server.name, server.allow_sender_header, server.privacy_mode, server.mode,
             server.suspended, server.organization_suspended, server.send_limit),
            (org.id, "acme", "mail", "Mail", False, False, "live", False, False, None))
        self.assertEqual(server.full_name, "acme/mail")

    @defer.inlineCallbacks
    def test_add_server_flags(self):
        yield self.store.add_organization("acme", "Acme")
        server = yield self.store.add_server(
            "acme", "dev", "Dev", allow_sender_header=True, privacy_mode=True,
            mode="development", send_limit=100, suspended=True)
        self.assertEqual(
            (server.allow_sender_header, server.privacy_mode, server.mode,
             server.send_limit, server.suspended),
            (True, True, "development", 100, True))
        self.assertEqual((yield self.store.get_server("acme", "dev")), server)

    @defer.inlineCallbacks
    def test_add_server_conflict_and_not_found(self):
        yield self.tenancy()
        yield self.assertFailure(self.store.add_server("acme", "mail", "Again"), Conflict)
        yield self.assertFailure(self.store.add_server("nope", "mail", "Mail"), NotFound)
        # the same permalink in another organization is another server
        server = yield self.store.add_server("globex", "mail", "Mail")
        self.assertEqual(server.full_name, "globex/mail")

    @defer.inlineCallbacks
    def test_update_server(self):
        yield self.tenancy()
        server = yield self.store.update_server(
            "acme", "mail", allow_sender_header=True, privacy_mode=True,
            mode="development", send_limit=50, suspended=True)
        self.assertEqual(
            (server.allow_sender_header, server.privacy_mode, server.mode,
             server.send_limit, server.suspended, server.is_suspended),
            (True, True, "development", 50, True, True))
        self.assertEqual((yield self.store.server_by_id(self.mail.id)), server)
        server = yield self.store.update_server("acme", "mail", send_limit=None,
                                                suspended=False)
        self.assertEqual((server.send_limit, server.suspended), (None, False))

    @defer.inlineCallbacks
    def test_update_server_is_atomic(self):
        yield self.tenancy()
        # the first change runs, then the unknown setting aborts the transaction
        yield self.assertFailure(
            self.store.update_server("acme", "mail", privacy_mode=True, colour="red"),
            ValueError)
        server = yield self.store.get_server("acme", "mail")
        self.assertFalse(server.privacy_mode)

    @defer.inlineCallbacks
    def test_update_server_rejects_unknown_mode(self):
        yield self.tenancy()
        yield self.assertFailure(self.store.update_server("acme", "mail", mode="bogus"),
                                 ValueError)
        self.assertEqual((yield self.store.get_server("acme", "mail")).mode, "live")

    def test_update_server_not_found(self):
        return self.assertFailure(self.store.update_server("acme", "nope", suspended=True),
                                  NotFound)

    @defer.inlineCallbacks
    def test_get_server(self):
        yield self.tenancy()
        self.assertEqual((yield self.store.get_server("acme", "mail")), self.mail)
        yield self.assertFailure(self.store.get_server("acme", "nope"), NotFound)
        yield self.assertFailure(self.store.get_server("globex", "mail"), NotFound)

    @defer.inlineCallbacks
    def test_list_servers(self):
        yield self.tenancy()
        self.assertEqual((yield self.store.list_servers()), [self.mail, self.other, self.main])
        self.assertEqual((yield self.store.list_servers("acme")), [self.mail, self.other])
        self.assertEqual((yield self.store.list_servers("globex")), [self.main])
        yield self.assertFailure(self.store.list_servers("nope"), NotFound)

    @defer.inlineCallbacks
    def test_server_by_id(self):
        yield self.tenancy()
        self.assertEqual((yield self.store.server_by_id(self.other.id)), self.other)
        self.assertIsNone((yield self.store.server_by_id(self.main.id + 1000)))

    # -- IAdmin: domains --------------------------------------------------------------

    @defer.inlineCallbacks
    def test_add_domain_of_server(self):
        yield self.tenancy()
        domain = yield self.store.add_domain("Mail.Acme.EXAMPLE.", server=("acme", "mail"),
                                             verified=True, use_for_any=True)
        self.assertEqual(
            (domain.name, domain.server_id, domain.organization_id, domain.verified,
             domain.use_for_any, domain.owner),
            ("mail.acme.example", self.mail.id, None, True, True, "acme/mail"))

    @defer.inlineCallbacks
    def test_add_domain_of_organization(self):
        yield self.tenancy()
        domain = yield self.store.add_domain("acme.example", organization="acme")
        self.assertEqual(
            (domain.name, domain.server_id, domain.organization_id, domain.verified,
             domain.use_for_any, domain.owner),
            ("acme.example", None, self.mail.organization_id, False, False, "acme"))

    @defer.inlineCallbacks
    def test_add_domain_idn_is_stored_as_a_labels(self):
        yield self.tenancy()
        domain = yield self.store.add_domain("bücher.example", organization="acme")
        self.assertEqual(domain.name, "xn--bcher-kva.example")

    @defer.inlineCallbacks
    def test_add_domain_conflict(self):
        yield self.tenancy()
        yield self.store.add_domain("acme.example", server=("acme", "mail"))
        yield self.assertFailure(
            self.store.add_domain("ACME.example", server=("acme", "mail")), Conflict)
        yield self.store.add_domain("acme.example", organization="acme")
        yield self.assertFailure(
            self.store.add_domain("acme.example", organization="acme"), Conflict)
        # other owners may claim the same name
        yield self.store.add_domain("acme.example", server=("acme", "other"))
        self.assertEqual(len((yield self.store.list_domains())), 3)

    @defer.inlineCallbacks
    def test_add_domain_invalid(self):
        yield self.tenancy()
        yield self.assertFailure(
            self.store.add_domain("not a domain", organization="acme"), ValueError)
        yield self.assertFailure(
            self.store.add_domain("x.example", server=("acme", "mail"), organization="acme"),
            ValueError)
        yield self.assertFailure(self.store.add_domain("x.example"), ValueError)
        yield self.assertFailure(
            self.store.add_domain("x.example", organization="acme", use_for_any=True),
            ValueError)
        yield self.assertFailure(
            self.store.add_domain("x.example", server=("acme", "nope")), NotFound)
        yield self.assertFailure(
            self.store.add_domain("x.example", organization="nope"), NotFound)
        self.assertEqual((yield self.store.list_domains()), [])

    @defer.inlineCallbacks
    def test_list_domains(self):
        yield self.tenancy()
        b = yield self.store.add_domain("b.example", server=("acme", "mail"))
        a = yield self.store.add_domain("a.example", server=("acme", "mail"))
        org = yield self.store.add_domain("a-org.example", organization="acme")
        other = yield self.store.add_domain("c.example", server=("acme", "other"))
        self.assertEqual((yield self.store.list_domains()), [org, a, b, other])
        self.assertEqual((yield self.store.list_domains(server=("acme", "mail"))), [a, b])
        self.assertEqual((yield self.store.list_domains(organization="acme")), [org])
        self.assertEqual((yield self.store.list_domains(organization="globex")), [])
        yield self.assertFailure(self.store.list_domains(server=("acme", "nope")), NotFound)
        yield self.assertFailure(self.store.list_domains(organization="nope"), NotFound)

    @defer.inlineCallbacks
    def test_set_domain_verified(self):
        yield self.tenancy()
        domain = yield self.store.add_domain("acme.example", organization="acme")
        updated = yield self.store.set_domain_verified(domain.id, True)
        self.assertTrue(updated.verified)
        self.assertEqual((yield self.store.list_domains()), [updated])
        self.assertFalse((yield self.store.set_domain_verified(domain.id, False)).verified)
        yield self.assertFailure(self.store.set_domain_verified(domain.id + 1000, True),
                                 NotFound)

    @defer.inlineCallbacks
    def test_remove_domain(self):
        yield self.tenancy()
        domain = yield self.store.add_domain("acme.example", organization="acme")
        self.assertIsNone((yield self.store.remove_domain(domain.id)))
        self.assertEqual((yield self.store.list_domains()), [])
        yield self.assertFailure(self.store.remove_domain(domain.id), NotFound)

    # -- IAdmin: DKIM keys and verification tokens -------------------------------------

    def assertKeyPair(self, key):
        """C{key}'s private key is a 2048-bit RSA key in PKCS#8 PEM, and its
        record's C{p=} is that key's public half."""
        import base64
        from cryptography.hazmat.primitives import serialization
        from mailgw.domains.dkim import dns_value
        private = serialization.load_pem_private_key(key.private_key.encode(), None)
        self.assertEqual(private.key_size, 2048)
        p = dns_value(key.private_key).rpartition("p=")[2]
        public = serialization.load_der_public_key(base64.b64decode(p))
        self.assertEqual(public.public_numbers(), private.public_key().public_numbers())

    @defer.inlineCallbacks
    def test_add_domain_makes_a_dkim_key_and_a_verification_token(self):
        yield self.tenancy()
        domain = yield self.store.add_domain("Acme.example", server=("acme", "mail"))
        keys = yield self.store.dkim_keys("acme.EXAMPLE")
        self.assertEqual(len(keys), 1)
        key = keys[0]
        self.assertEqual((key.domain_id, key.domain, key.algorithm, key.retiring),
                         (domain.id, "acme.example", "rsa", False))
        self.assertRegex(key.selector, r"^mailgw-[a-z0-9]{6}$")
        self.assertEqual(key.dns_name, f"{key.selector}._domainkey.acme.example")
        self.assertKeyPair(key)
        self.assertEqual((yield self.store.dkim_keys(domain.id)), keys)
        # the private key is never in a repr (nor, so, in a log line)
        self.assertNotIn("PRIVATE", repr(key))
        self.assertNotIn(key.private_key.splitlines()[1], repr(keys))

        token = yield self.store.domain_verification_token("acme.example")
        self.assertRegex(token, r"^[A-Za-z0-9]{24}$")
        self.assertEqual((yield self.store.domain_verification_token(domain.id)), token)
        other = yield self.store.add_domain("other.example", server=("acme", "mail"))
        self.assertNotEqual((yield self.store.domain_verification_token(other.id)), token)
        other_key = (yield self.store.dkim_keys(other.id))[0]
        self.assertNotEqual(other_key.private_key, key.private_key)

    @defer.inlineCallbacks
    def test_a_refused_domain_leaves_no_key(self):
        yield self.tenancy()
        yield self.store.add_domain("acme.example", organization="acme")
        yield self.assertFailure(
            self.store.add_domain("acme.example", organization="acme"), Conflict)
        self.assertEqual((yield self.store._run(_rows_of, "dkim_keys")), 1)

    @defer.inlineCallbacks
    def test_rotate_dkim_and_finish(self):
        yield self.tenancy()
        yield self.store.add_domain("acme.example", organization="acme")
        [first] = yield self.store.dkim_keys("acme.example")
        second = yield self.store.rotate_dkim("acme.example")
        self.assertNotEqual(second.selector, first.selector)
        self.assertFalse(second.retiring)
        self.assertKeyPair(second)
        keys = yield self.store.dkim_keys("acme.example")
        self.assertEqual([(k.selector, k.retiring) for k in keys],
                         [(second.selector, False), (first.selector, True)])
        third = yield self.store.rotate_dkim("acme.example")
        keys = yield self.store.dkim_keys("acme.example")
        # active first, then the retiring ones, newest first
        self.assertEqual([(k.selector, k.retiring) for k in keys],
                         [(third.selector, False), (second.selector, True),
                          (first.selector, True)])
        removed = yield self.store.finish_dkim_rotation("acme.example")
        self.assertEqual([k.selector for k in removed], [second.selector, first.selector])
        self.assertEqual((yield self.store.dkim_keys("acme.example")), [third])
        self.assertEqual((yield self.store.finish_dkim_rotation("acme.example")), [])
        self.assertEqual((yield self.store.dkim_keys("acme.example")), [third])

    @defer.inlineCallbacks
    def test_dkim_keys_go_with_their_domain(self):
        yield self.tenancy()
        domain = yield self.store.add_domain("acme.example", organization="acme")
        yield self.store.rotate_dkim(domain.id)
        yield self.store.remove_domain(domain.id)
        self.assertEqual((yield self.store._run(_rows_of, "dkim_keys")), 0)

    @defer.inlineCallbacks
    def test_domain_references(self):
        yield self.tenancy()
        mine = yield self.store.add_domain("acme.example", server=("acme", "mail"))
        theirs = yield self.store.add_domain("acme.example", organization="acme")
        for call in (self.store.dkim_keys, self.store.rotate_dkim,
                     self.store.finish_dkim_rotation, self.store.domain_verification_token):
            yield self.assertFailure(call("nope.example"), NotFound)
            yield self.assertFailure(call(theirs.id + 1000), NotFound)
            yield self.assertFailure(call("not a domain"), ValueError)
            failure = yield self.assertFailure(call("acme.example"), Conflict)
            self.assertIn(f"acme/mail (ID {mine.id}), acme (ID {theirs.id})", str(failure))
        # by ID, each is its own
        [key] = yield self.store.dkim_keys(mine.id)
        self.assertEqual(key.domain_id, mine.id)
        self.assertNotEqual((yield self.store.dkim_keys(theirs.id)), [key])

    @defer.inlineCallbacks
    def test_upgrade_applies_a_version_below_the_newest_applied(self):
        # a database upgraded by a node whose code had the newest version but
        # not one below it (changes merged out of order)
        versions = [v for v, _ in schema_files(self.store.engine)]
        latest, middle = versions[-1], versions[-2]
        old = yield self.make_store(self.new_location())
        yield old._run(_apply_schema_up_to, old.engine, latest, (middle,))
        self.assertEqual((yield old.upgrade()), [middle])
        self.assertEqual((yield old.upgrade()), [])

    @defer.inlineCallbacks
    def test_upgrade_and_look_up_give_older_domains_a_token(self):
        old = yield self.make_store(self.new_location())
        yield old._run(_apply_schema_up_to, old.engine, 3)
        org = yield old.add_organization("acme", "Acme")
        before = yield old._run(_insert_domain_without_token, "acme.example", org.id)
        # 4 and every version shipped after it (numbers may have gaps)
        later = [v for v, _ in schema_files(old.engine) if v >= 4]
        self.assertEqual((yield old.upgrade()), later)
        # and, which SQL alone cannot give it, a first DKIM key to sign with
        [key] = yield old.dkim_keys(before)
        self.assertEqual((key.algorithm, key.retiring), ("rsa", False))
        self.assertEqual((yield old.upgrade()), [])  # nothing more, the key kept
        self.assertEqual((yield old.dkim_keys(before)), [key])
        token = yield old._run(_token_of, before)
        self.assertRegex(token, r"^[0-9a-f]{24}$")
        self.assertEqual((yield old.domain_verification_token(before)), token)
        # a domain added after the upgrade by a node still on schema 3's code
        after = yield old._run(_insert_domain_without_token, "late.example", org.id)
        token = yield old.domain_verification_token("late.example")
        self.assertRegex(token, r"^[A-Za-z0-9]{24}$")
        self.assertEqual((yield old._run(_token_of, after)), token)
        self.assertEqual((yield old.domain_verification_token(after)), token)
        # a rotation gives it its first key
        first = yield old.rotate_dkim(after)
        self.assertEqual((yield old.dkim_keys(after)), [first])

    # -- IAdmin: credentials ----------------------------------------------------------

    @defer.inlineCallbacks
    def test_add_credential(self):
        yield self.tenancy()
        key = generate_key()
        cred = yield self.store.add_credential(("acme", "mail"), "smtp", key, name="app")
        self.assertEqual(
            (cred.server_id, cred.type, cred.key, cred.name, cred.hold, cred.last_used_at),
            (self.mail.id, "smtp", key, "app", False, None))
        held = yield self.store.add_credential(("acme", "mail"), "api", generate_key(),
                                               hold=True)
        self.assertTrue(held.hold)
        self.assertEqual(held.name, "")

    @defer.inlineCallbacks
    def test_add_credential_conflict_and_not_found(self):
        yield self.tenancy()
        key = generate_key()
        yield self.store.add_credential(("acme", "mail"), "smtp", key)
        failure = yield self.assertFailure(
            self.store.add_credential(("globex", "main"), "api", key), Conflict)
        self.assertNotIn(key, str(failure))
        yield self.assertFailure(
            self.store.add_credential(("acme", "nope"), "smtp", generate_key()), NotFound)

    @defer.inlineCallbacks
    def test_add_credential_race_is_a_conflict(self):
        """Two concurrent adds of one key: one wins, the other is a Conflict
        (the database's unique index, on an engine that runs them at once)
        whose message does not quote the key."""
        yield self.tenancy()
        key = generate_key()
        results = yield defer.DeferredList(
            [self.store.add_credential(("acme", "mail"), "smtp", key),
             self.store.add_credential(("acme", "other"), "smtp", key)],
            consumeErrors=True)
        outcomes = sorted(ok for ok, _ in results)
        self.assertEqual(outcomes, [False, True])
        failure = next(r for ok, r in results if not ok)
        failure.trap(Conflict)
        self.assertNotIn(key, str(failure.value))

    @defer.inlineCallbacks
    def test_list_credentials(self):
        yield self.tenancy()
        first = yield self.store.add_credential(("acme", "mail"), "smtp", generate_key())
        second = yield self.store.add_credential(("acme", "mail"), "api", generate_key())
        yield self.store.add_credential(("acme", "other"), "smtp", generate_key())
        self.assertEqual((yield self.store.list_credentials(("acme", "mail"))),
                         [first, second])
        self.assertEqual((yield self.store.list_credentials(("globex", "main"))), [])
        yield self.assertFailure(self.store.list_credentials(("acme", "nope")), NotFound)

    @defer.inlineCallbacks
    def test_set_credential_hold(self):
        yield self.tenancy()
        cred = yield self.store.add_credential(("acme", "mail"), "smtp", generate_key())
        held = yield self.store.set_credential_hold(cred.id, True)
        self.assertTrue(held.hold)
        found, _ = yield self.store.credential_by_key(cred.key, "smtp")
        self.assertTrue(found.hold)
        self.assertFalse((yield self.store.set_credential_hold(cred.id, False)).hold)
        yield self.assertFailure(self.store.set_credential_hold(cred.id + 1000, True),
                                 NotFound)

    @defer.inlineCallbacks
    def test_remove_credential(self):
        yield self.tenancy()
        cred = yield self.store.add_credential(("acme", "mail"), "smtp", generate_key())
        self.assertIsNone((yield self.store.remove_credential(cred.id)))
        self.assertIsNone((yield self.store.credential_by_key(cred.key, "smtp")))
        self.assertEqual((yield self.store.list_credentials(("acme", "mail"))), [])
        yield self.assertFailure(self.store.remove_credential(cred.id), NotFound)

    # -- IDirectory ---------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_credential_by_key(self):
        yield self.tenancy()
        key = generate_key()
        cred = yield self.store.add_credential(("acme", "mail"), "smtp", key, name="app")
        found = yield self.store.credential_by_key(key, "smtp")
        self.assertEqual(found, (cred, self.mail))
        self.assertNotIn(key, repr(found))
        self.assertIsNone((yield self.store.credential_by_key(key, "api")))
        self.assertIsNone((yield self.store.credential_by_key(generate_key(), "smtp")))
        self.assertIsNone((yield self.store.credential_by_key(key[:-1], "smtp")))
        self.assertIsNone((yield self.store.credential_by_key("", "smtp")))

    @defer.inlineCallbacks
    def test_credentials_of_server(self):
        yield self.tenancy()
        a = yield self.store.add_credential(("acme", "mail"), "smtp", generate_key())
        yield self.store.add_credential(("acme", "mail"), "api", generate_key())
        b = yield self.store.add_credential(("acme", "mail"), "smtp", generate_key())
        yield self.store.add_credential(("acme", "other"), "smtp", generate_key())
        self.assertEqual((yield self.store.credentials_of_server("acme", "mail", "smtp")),
                         (self.mail, [a, b]))
        self.assertEqual((yield self.store.credentials_of_server("globex", "main", "smtp")),
                         (self.main, []))
        self.assertIsNone((yield self.store.credentials_of_server("acme", "nope", "smtp")))

    @defer.inlineCallbacks
    def test_credential_for_address(self):
        yield self.tenancy()
        add = self.store.add_credential
        wide = yield add(("acme", "mail"), "smtp-ip", "10.0.0.0/8")
        narrow = yield add(("acme", "other"), "smtp-ip", "10.1.0.0/16")
        host = yield add(("globex", "main"), "smtp-ip", "10.1.2.3/32")
        v6 = yield add(("globex", "main"), "smtp-ip", "2001:db8::/32")
        # an smtp key that looks like an address is not a network credential
        yield add(("acme", "mail"), "smtp", "192.0.2.1")
        lookup = self.store.credential_for_address
        self.assertEqual((yield lookup("10.9.9.9")), (wide, self.mail))
        self.assertEqual((yield lookup("10.1.9.9")), (narrow, self.other))
        self.assertEqual((yield lookup("10.1.2.3")), (host, self.main))
        self.assertEqual((yield lookup("::ffff:10.1.9.9")), (narrow, self.other))
        self.assertEqual((yield lookup("2001:db8:1::25")), (v6, self.main))
        self.assertIsNone((yield lookup("2001:db9::1")))
        self.assertIsNone((yield lookup("192.0.2.1")))
        self.assertIsNone((yield lookup("::ffff:192.0.2.1")))

    @defer.inlineCallbacks
    def test_authorised_domains(self):
        yield self.tenancy()
        add = self.store.add_domain
        yield add("Mail.example", server=("acme", "mail"), verified=True)
        yield add("unverified.example", server=("acme", "mail"))
        yield add("any.example", server=("acme", "mail"), verified=True, use_for_any=True)
        yield add("acme.example", organization="acme", verified=True)
        yield add("pending.example", organization="acme")
        yield add("other.example", server=("acme", "other"), verified=True)
        yield add("anyother.example", server=("acme", "other"), use_for_any=True)
        yield add("globex.example", organization="globex", verified=True)
        self.assertEqual((yield self.store.authorised_domains(self.mail.id)),
                         (frozenset({"mail.example", "any.example", "acme.example"}),
                          "any.example"))
        # an unverified use_for_any domain grants nothing
        self.assertEqual((yield self.store.authorised_domains(self.other.id)),
                         (frozenset({"other.example", "acme.example"}), None))
        self.assertEqual((yield self.store.authorised_domains(self.main.id)),
                         (frozenset({"globex.example"}), None))
        self.assertEqual((yield self.store.authorised_domains(self.main.id + 1000)),
                         (frozenset(), None))

    @defer.inlineCallbacks
    def test_suspended_server_seen_by_credential_look_up(self):
        yield self.tenancy()
        cred = yield self.store.add_credential(("acme", "mail"), "smtp", generate_key())
        yield self.store.update_server("acme", "mail", suspended=True)
        _, server = yield self.store.credential_by_key(cred.key, "smtp")
        self.assertEqual((server.suspended, server.organization_suspended), (True, False))
        yield self.store.update_server("acme", "mail", suspended=False)
        yield self.store.set_organization_suspended("acme", True)
        server, _ = yield self.store.credentials_of_server("acme", "mail", "smtp")
        self.assertEqual((server.suspended, server.organization_suspended), (False, True))
        self.assertTrue(server.is_suspended)

    @defer.inlineCallbacks
    def test_touch_credential(self):
        yield self.tenancy()
        cred = yield self.store.add_credential(("acme", "mail"), "smtp", generate_key())
        self.assertIsNone((yield self.store.touch_credential(cred.id, 1700000000.25)))
        [found] = yield self.store.list_credentials(("acme", "mail"))
        self.assertEqual(found.last_used_at, 1700000000.25)

    @defer.inlineCallbacks
    def test_messages_since(self):
        yield self.tenancy()
        from twisted.internet import reactor
        before = reactor.seconds() - 1
        for _ in range(2):
            yield self.store.enqueue(self.envelope(self.mail), io.BytesIO(b"x"))
        yield self.store.enqueue(self.envelope(self.other), io.BytesIO(b"x"))
        self.assertEqual((yield self.store.messages_since(self.mail.id, before)), 2)
        self.assertEqual((yield self.store.messages_since(self.other.id, before)), 1)
        self.assertEqual((yield self.store.messages_since(self.main.id, before)), 0)
        self.assertEqual((yield self.store.messages_since(self.mail.id, before + 3600)), 0)

    # -- IQueue --------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_enqueue_one_row_per_recipient(self):
        yield self.tenancy()
        from twisted.internet import reactor
        before = reactor.seconds()
        cred = yield self.store.add_credential(("acme", "mail"), "smtp", generate_key())
        env = self.envelope(self.mail, ["a@x.example", "b@y.example"], token="TOKEN0001",
                            credential_id=cred.id)
        body = b"Subject: hi\r\n\r\nbody\r\n"
        ids = yield self.store.enqueue(env, io.BytesIO(body))
        self.assertEqual(sorted(ids), ["a@x.example", "b@y.example"])
        entry = yield self.store.get_entry(ids["a@x.example"])
        self.assertEqual(
            (entry.id, entry.token, entry.server, entry.server_id, entry.credential_id,
             entry.mail_from, entry.rcpt_to, entry.status, entry.size, entry.domain,
             entry.hold_reason, entry.attempts, entry.last_error),
            (ids["a@x.example"], "TOKEN0001", "acme/mail", self.mail.id, cred.id,
             "from@acme.example", "a@x.example", "queued", len(body), "acme.example",
             None, 0, None))
        self.assertTrue(before - 1 <= entry.created_at <= reactor.seconds() + 1)
        self.assertEqual(entry.next_attempt_at, entry.created_at)
        other = yield self.store.get_entry(ids["b@y.example"])
        self.assertEqual((other.message_id, other.rcpt_to), (entry.message_id, "b@y.example"))
        self.assertEqual([e.id for e in (yield self.store.list_entries())],
                         [ids["a@x.example"], ids["b@y.example"]])

    @defer.inlineCallbacks
    def test_enqueue_held(self):
        yield self.tenancy()
        env = self.envelope(self.mail, ["a@x.example"], status="held",
                            hold_reason="credential is on hold")
        ids = yield self.store.enqueue(env, io.BytesIO(b"x"))
        entry = yield self.store.get_entry(ids["a@x.example"])
        self.assertEqual((entry.status, entry.hold_reason), ("held", "credential is on hold"))

    @defer.inlineCallbacks
    def test_enqueue_large_body_byte_exact(self):
        """A body of 3 MiB and more, every byte value (NUL and 8-bit included),
        read from the file's start wherever its position was."""
        yield self.tenancy()
        body = bytes(range(256)) * (3 * CHUNK_SIZE // 256) + b"\x00\r\n.\r\n\xff tail"
        f = io.BytesIO(body)
        f.seek(0, os.SEEK_END)
        ids = yield self.store.enqueue(self.envelope(self.mail), f)
        entry = yield self.store.get_entry(ids["a@x.example"])
        self.assertEqual(entry.size, len(body))
        stored = yield self.store.read_body(entry.message_id)
        self.assertIsInstance(stored, bytes)
        self.assertEqual(len(stored), len(body))
        self.assertTrue(stored == body, "the stored body differs from the one enqueued")
        self.assertEqual((yield self.store._read(_count_chunks, entry.message_id)), 4)

    @defer.inlineCallbacks
    def test_enqueue_empty_body(self):
        yield self.tenancy()
        ids = yield self.store.enqueue(self.envelope(self.mail), io.BytesIO(b""))
        entry = yield self.store.get_entry(ids["a@x.example"])
        self.assertEqual(entry.size, 0)
        self.assertEqual((yield self.store.read_body(entry.message_id)), b"")

    @defer.inlineCallbacks
    def test_enqueue_is_all_or_nothing(self):
        yield self.tenancy()
        yield self.store.enqueue(self.envelope(self.mail, token="SAME"), io.BytesIO(b"1"))
        yield self.assertFailure(
            self.store.enqueue(self.envelope(self.mail, ["b@x.example", "c@x.example"],
                                             token="SAME"), io.BytesIO(b"2" * 10)),
            Conflict)
        entries = yield self.store.list_entries()
        self.assertEqual([e.rcpt_to for e in entries], ["a@x.example"])
        self.assertEqual((yield self.store.messages_since(self.mail.id, 0)), 1)

    @defer.inlineCallbacks
    def test_concurrent_enqueues(self):
        yield self.tenancy()
        bodies = {f"T{i:04d}": os.urandom(1000 + i) for i in range(20)}
        results = yield defer.gatherResults([
            self.store.enqueue(self.envelope(self.mail, [f"r{i}@x.example"], token=token),
                               io.BytesIO(body))
            for i, (token, body) in enumerate(bodies.items())])
        self.assertEqual(len(results), 20)
        entries = yield self.store.list_entries()
        self.assertEqual(len(entries), 20)
        for entry in entries:
            self.assertEqual((yield self.store.read_body(entry.message_id)),
                             bodies[entry.token])

    @defer.inlineCallbacks
    def test_list_entries_filters(self):
        yield self.tenancy()
        q1 = yield self.store.enqueue(self.envelope(self.mail, ["1@x.example", "2@x.example"]),
                                      io.BytesIO(b"a"))
        h = yield self.store.enqueue(
            self.envelope(self.mail, ["3@x.example"], status="held", hold_reason="why"),
            io.BytesIO(b"b"))
        o = yield self.store.enqueue(self.envelope(self.other, ["4@x.example"]),
                                     io.BytesIO(b"c"))
        g = yield self.store.enqueue(self.envelope(self.main, ["5@x.example"]),
                                     io.BytesIO(b"d"))
        ids = lambda entries: [e.id for e in entries]  # noqa: E731
        every = [q1["1@x.example"], q1["2@x.example"], h["3@x.example"],
                 o["4@x.example"], g["5@x.example"]]
        self.assertEqual(ids((yield self.store.list_entries())), every)
        self.assertEqual(ids((yield self.store.list_entries(status="held"))),
                         [h["3@x.example"]])
        self.assertEqual(ids((yield self.store.list_entries(server="acme/mail"))), every[:3])
        self.assertEqual(ids((yield self.store.list_entries(status="queued",
                                                            server="acme/mail"))), every[:2])
        self.assertEqual(ids((yield self.store.list_entries(server="globex/main"))),
                         every[4:])
        self.assertEqual(ids((yield self.store.list_entries(limit=2))), every[:2])
        self.assertEqual(ids((yield self.store.list_entries(status="queued", limit=3))),
                         [every[0], every[1], every[3]])
        self.assertEqual((yield self.store.list_entries(status="sent")), [])
        self.assertEqual((yield self.store.list_entries(server="acme/nope")), [])

    @defer.inlineCallbacks
    def test_get_entry_not_found(self):
        yield self.tenancy()
        yield self.assertFailure(self.store.get_entry(12345), NotFound)

    # -- IAdmin: the schema version, read without changing anything ---------------

    @defer.inlineCallbacks
    def test_schema_version(self):
        shipped = [v for v, _ in schema_files(self.store.engine)]
        self.assertEqual((yield self.store.schema_version()), shipped[-1])
        fresh = yield self.make_store(self.new_location())
        self.assertEqual((yield fresh.schema_version()), 0)
        # asking created nothing: the first upgrade still applies everything
        self.assertEqual((yield fresh.upgrade()), shipped)
        self.assertEqual((yield fresh.schema_version()), shipped[-1])

    # -- IRelayQueue: a message by its queue id ------------------------------------

    @defer.inlineCallbacks
    def message_of_three(self):
        """A message to three recipients: one held, one failed (with an
        attempt), one sent; and another message. @return: its token and ids."""
        yield self.tenancy()
        token = generate_token(12)
        ids = yield self.store.enqueue(
            self.envelope(self.mail, ["h@x.example", "f@x.example", "s@x.example"],
                          token=token), io.BytesIO(b"body"))
        yield self.store._run(_hold, ids["h@x.example"])
        from twisted.internet import reactor
        now = reactor.seconds()
        yield self.store.claim_due("n", now + 1, 300, 10)
        f, s = ids["f@x.example"], ids["s@x.example"]
        yield self.store.mark_failed(f, "n", DeliveryAttempt(f, now, "mx", 550, "550 no", "n"))
        yield self.store.mark_sent(s, "n", DeliveryAttempt(s, now, "mx", 250, "250 ok", "n"))
        yield self.store.enqueue(self.envelope(self.mail, ["o@x.example"]), io.BytesIO(b"o"))
        return token, ids

    @defer.inlineCallbacks
    def test_message_entries(self):
        token, ids = yield self.message_of_three()
        entries = yield self.store.message_entries(token)
        self.assertEqual([(e.id, e.token, e.status) for e in entries],
                         [(ids["h@x.example"], token, "held"),
                          (ids["f@x.example"], token, "failed"),
                          (ids["s@x.example"], token, "sent")])
        yield self.assertFailure(self.store.message_entries("NOSUCHTOKEN1"), NotFound)
        # queue ids are case-sensitive
        yield self.assertFailure(self.store.message_entries(token.lower() + "x"), NotFound)

    @defer.inlineCallbacks
    def test_release_and_retry_message_touch_only_the_entries_they_apply_to(self):
        token, ids = yield self.message_of_three()
        released = yield self.store.release_message(token)
        self.assertEqual([(e.id, e.status, e.hold_reason) for e in released],
                         [(ids["h@x.example"], "queued", None)])
        failure = yield self.assertFailure(self.store.release_message(token), Conflict)
        self.assertEqual(str(failure), f"message {token} has no held queue entry "
                                       "(its entries are failed, queued, sent)")
        retried = yield self.store.retry_message(token)
        self.assertEqual([(e.id, e.status) for e in retried],
                         [(ids["h@x.example"], "queued"), (ids["f@x.example"], "queued")])
        entries = yield self.store.message_entries(token)
        self.assertEqual([e.status for e in entries], ["queued", "queued", "sent"])
        yield self.assertFailure(self.store.release_message("NOSUCHTOKEN1"), NotFound)
        yield self.assertFailure(self.store.retry_message("NOSUCHTOKEN1"), NotFound)

    @defer.inlineCallbacks
    def test_remove_message_removes_every_entry_attempt_and_the_body(self):
        token, ids = yield self.message_of_three()
        message_id = (yield self.store.message_entries(token))[0].message_id
        removed = yield self.store.remove_message(token)
        self.assertEqual([e.id for e in removed], sorted(ids.values()))
        yield self.assertFailure(self.store.message_entries(token), NotFound)
        yield self.assertFailure(self.store.get_attempts(ids["f@x.example"]), NotFound)
        self.assertEqual((yield self.store._read(_count_chunks, message_id)), 0)
        self.assertEqual((yield self.store._read(_rows_of, "delivery_attempts")), 0)
        self.assertEqual([e.rcpt_to for e in (yield self.store.list_entries())],
                         ["o@x.example"])
        yield self.assertFailure(self.store.remove_message(token), NotFound)

    # -- IRelayQueue: a server's own message, for the HTTP API --------------------

    @defer.inlineCallbacks
    def test_message_for_server_by_token_and_by_entry_id(self):
        token, ids = yield self.message_of_three()
        f, s = ids["f@x.example"], ids["s@x.example"]
        from twisted.internet import reactor
        later = reactor.seconds() + 10
        # an older attempt recorded after the newer ones still comes first
        yield self.store.record_attempt(DeliveryAttempt(f, later - 100, None, None,
                                                        "connection refused", "n"))
        yield self.store.record_attempt(DeliveryAttempt(s, later, "mx2", 250, "again", "n"))
        found = yield self.store.message_for_server(self.mail.id, token)
        self.assertEqual([(e.id, e.rcpt_to, e.status) for e in found.entries],
                         [(ids["h@x.example"], "h@x.example", "held"),
                          (f, "f@x.example", "failed"), (s, "s@x.example", "sent")])
        self.assertEqual([(r.attempt.queue_id, r.attempt.code, r.attempt.text)
                          for r in found.attempts],
                         [(f, None, "connection refused"), (f, 550, "550 no"),
                          (s, 250, "250 ok"), (s, 250, "again")])
        self.assertEqual(len({r.id for r in found.attempts}), 4)
        self.assertEqual(found.attempts[0].attempt,
                         DeliveryAttempt(f, later - 100, None, None, "connection refused",
                                         "n"))
        one = yield self.store.message_for_server(self.mail.id, s)
        self.assertEqual([e.id for e in one.entries], [s])
        self.assertEqual([r.attempt.text for r in one.attempts], ["250 ok", "again"])
        held = yield self.store.message_for_server(self.mail.id, ids["h@x.example"])
        self.assertEqual((held.entries[0].token, held.attempts), (token, ()))

    @defer.inlineCallbacks
    def test_message_for_server_sees_only_that_servers_messages(self):
        token, ids = yield self.message_of_three()
        for ref in (token, ids["s@x.example"]):
            yield self.assertFailure(self.store.message_for_server(self.other.id, ref),
                                     NotFound)
            yield self.assertFailure(self.store.message_for_server(self.main.id, ref),
                                     NotFound)
        for ref in ("NOSUCHTOKEN1", token.lower(), 0, -1, 10 ** 6, 2 ** 63, 10 ** 30):
            yield self.assertFailure(self.store.message_for_server(self.mail.id, ref),
                                     NotFound)
        yield self.store.remove_message(token)
        yield self.assertFailure(self.store.message_for_server(self.mail.id, token),
                                 NotFound)

    # -- IAdmin: the failure throttle's notice board -------------------------------

    @defer.inlineCallbacks
    def test_lockouts_in_force_of_every_node(self):
        from twisted.internet import reactor
        now = reactor.seconds()
        s = self.store
        yield s.record_lockout("192.0.2.1", "node-b", "key", now + 100, 10)
        yield s.record_lockout("192.0.2.1", "node-a", "key", now + 200, 10)
        yield s.record_lockout("192.0.2.1", "node-a", "anonymous", now + 300, 100)
        yield s.record_lockout("2001:db8:1:2::/64", "node-a", "key", now + 50, 12)
        yield s.record_lockout("198.51.100.7", "node-a", "key", now - 1, 10)  # expired
        other = yield self.make_store()  # another node, or the command line
        self.assertEqual((yield other.list_lockouts()), [
            Lockout("192.0.2.1", "anonymous", "node-a", now + 300, 100),
            Lockout("192.0.2.1", "key", "node-a", now + 200, 10),
            Lockout("192.0.2.1", "key", "node-b", now + 100, 10),
            Lockout("2001:db8:1:2::/64", "key", "node-a", now + 50, 12)])

    @defer.inlineCallbacks
    def test_record_lockout_renews_and_sweeps_expired_rows(self):
        from twisted.internet import reactor
        now = reactor.seconds()
        s = self.store
        yield s.record_lockout("198.51.100.7", "node-a", "key", now - 1, 10)
        yield s.record_lockout("192.0.2.1", "node-a", "key", now + 100, 10)
        self.assertEqual((yield s._read(_rows_of, "lockouts")), 1)
        yield s.record_lockout("192.0.2.1", "node-a", "key", now + 900, 11)
        self.assertEqual((yield s.list_lockouts()),
                         [Lockout("192.0.2.1", "key", "node-a", now + 900, 11)])

    @defer.inlineCallbacks
    def test_lockout_kind_is_key_or_anonymous(self):
        from twisted.internet import reactor
        yield self.assertFailure(self.store.record_lockout(
            "192.0.2.1", "node-a", "other", reactor.seconds() + 10, 1), Conflict)

    @defer.inlineCallbacks
    def test_clear_removes_every_nodes_lockouts_and_records_a_clear(self):
        from twisted.internet import reactor
        now = reactor.seconds()
        s = self.store
        self.assertEqual((yield s.latest_throttle_clear()), 0)
        self.assertEqual((yield s.throttle_clears_after(0)), [])
        for node, kind in (("node-a", "key"), ("node-b", "key"), ("node-a", "anonymous")):
            yield s.record_lockout("192.0.2.1", node, kind, now + 100, 10)
        yield s.record_lockout("192.0.2.2", "node-a", "key", now + 100, 10)
        self.assertEqual((yield s.clear_lockouts("192.0.2.1")), 3)
        self.assertEqual([lo.address for lo in (yield s.list_lockouts())], ["192.0.2.2"])
        clears = yield s.throttle_clears_after(0)
        self.assertEqual([c.address for c in clears], ["192.0.2.1"])
        self.assertTrue(now - 1 <= clears[0].cleared_at <= reactor.seconds() + 1)
        self.assertEqual((yield s.latest_throttle_clear()), clears[0].id)
        # a clear of what no node holds is recorded all the same: nodes may
        # have counted failures of it without a lock-out
        self.assertEqual((yield s.clear_lockouts("203.0.113.9")), 0)
        self.assertEqual((yield s.clear_lockouts("192.0.2.1")), 0)
        later = yield s.throttle_clears_after(clears[0].id)
        self.assertEqual([c.address for c in later], ["203.0.113.9", "192.0.2.1"])
        self.assertLess(clears[0].id, later[0].id)
        self.assertLess(later[0].id, later[1].id)

    @defer.inlineCallbacks
    def test_clears_are_pruned_after_a_day_and_ids_never_reused(self):
        from twisted.internet import reactor
        s = self.store
        yield s._run(_add_clear, "192.0.2.1", reactor.seconds() - CLEAR_RETENTION - 10)
        yield s.clear_lockouts("192.0.2.2")
        clears = yield s.throttle_clears_after(0)
        self.assertEqual([c.address for c in clears], ["192.0.2.2"])
        yield s._run(_delete_clears)
        yield s.clear_lockouts("192.0.2.3")
        self.assertGreater((yield s.latest_throttle_clear()), clears[0].id)

    @defer.inlineCallbacks
    def test_concurrent_clears_from_two_stores_get_distinct_growing_ids(self):
        other = yield self.make_store()
        yield defer.gatherResults([(self.store, other)[i % 2].clear_lockouts(f"192.0.2.{i}")
                                   for i in range(20)])
        clears = yield self.store.throttle_clears_after(0)
        self.assertEqual(sorted(c.address for c in clears),
                         sorted(f"192.0.2.{i}" for i in range(20)))
        ids = [c.id for c in clears]
        self.assertEqual(ids, sorted(set(ids)))

    @defer.inlineCallbacks
    def test_forget_lockouts_of_one_node(self):
        from twisted.internet import reactor
        now = reactor.seconds()
        s = self.store
        yield s.record_lockout("192.0.2.1", "node-a", "key", now + 100, 10)
        yield s.record_lockout("192.0.2.1", "node-b", "key", now + 100, 10)
        yield s.record_lockout("192.0.2.2", "node-a", "anonymous", now + 100, 100)
        yield s.forget_lockouts("node-a")
        self.assertEqual([(lo.address, lo.node) for lo in (yield s.list_lockouts())],
                         [("192.0.2.1", "node-b")])
        self.assertEqual((yield s.throttle_clears_after(0)), [])

    # -- engine behaviour every engine must share ----------------------------------------

    @defer.inlineCallbacks
    def test_changes_are_seen_by_another_store(self):
        """The directory is always current: what one store (the command line,
        another node) commits, another already-open store sees next call."""
        yield self.tenancy()
        other = yield self.make_store()
        cred = yield self.store.add_credential(("acme", "mail"), "smtp", generate_key())
        found = yield other.credential_by_key(cred.key, "smtp")
        self.assertEqual(found[0], cred)
        yield other.set_credential_hold(cred.id, True)
        found = yield self.store.credential_by_key(cred.key, "smtp")
        self.assertTrue(found[0].hold)

    @defer.inlineCallbacks
    def test_sql_with_literal_percent_and_question_mark(self):
        rows = yield self.store._read(_literal_percent_and_question, "x")
        self.assertEqual([tuple(r) for r in rows], [("100%x", 2, "?")])

    @defer.inlineCallbacks
    def test_integrity_error_is_a_conflict_without_row_values(self):
        failure = yield self.assertFailure(
            self.store._run(_insert_organization_twice, "secret-permalink"), Conflict)
        self.assertNotIn("secret-permalink", str(failure))
        self.assertEqual((yield self.store.list_organizations()), [])

    @defer.inlineCallbacks
    def test_closed_store_is_unavailable(self):
        store = yield self.make_store()
        yield store.close()
        yield self.assertFailure(store.list_organizations(), StoreUnavailable)
        yield self.assertFailure(store.add_organization("x", "X"), StoreUnavailable)


class SQLiteContractTests(StoreContract, unittest.TestCase):
    """The contract on SQLite, on a real file."""

    def new_location(self):
        return os.path.join(self.mktemp(), "mailgw.sqlite3")

    def store_at(self, location):
        from twisted.internet import reactor
        from mailgw.store.sqlite import SQLiteStore
        return SQLiteStore(location, reactor)


class PostgresContractTests(StoreContract, unittest.TestCase):
    """The contract on PostgreSQL, each test on a fresh database of the run's
    cluster."""

    def new_location(self):
        url, drop = pgcluster.fresh_database(postgres_admin())
        self.addCleanup(drop)
        return url

    def store_at(self, location):
        from twisted.internet import reactor
        from mailgw.store.postgres import PostgresStore
        return PostgresStore(location, reactor)
