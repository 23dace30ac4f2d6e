"""The store's users, memberships, sessions and set-password links
(L{mailgw.interfaces.IUsers}), on SQLite and on PostgreSQL."""
from __future__ import annotations

from twisted.internet import defer
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from mailgw.interfaces import Conflict, IUsers, NotFound
from mailgw.store.base import key_digest
from tests.store import test_contract as contract


class UsersContract:
    """Mixed in after an engine's contract TestCase (its fixtures only)."""

    @defer.inlineCallbacks
    def test_users_and_their_organizations(self):
        verifyObject(IUsers, self.store)
        yield self.store.add_organization("acme", "Acme")
        yield self.store.add_organization("beta", "Beta")
        user = yield self.store.add_user("Ann@Example.COM", organizations=["acme"])
        self.assertEqual((user.email, user.admin, user.organizations, user.has_password),
                         ("ann@example.com", False, ("acme",), False))
        self.assertTrue(user.may_see("acme"))
        self.assertFalse(user.may_see("beta"))
        admin = yield self.store.add_user("root@example.com", admin=True)
        self.assertTrue(admin.may_see("beta"))
        yield self.assertFailure(self.store.add_user("ann@example.com"), Conflict)
        yield self.assertFailure(self.store.add_user("x@example.com", organizations=["nope"]),
                                 NotFound)
        granted = yield self.store.grant_organization("ann@example.com", "beta")
        self.assertEqual(granted.organizations, ("acme", "beta"))
        granted = yield self.store.grant_organization(user.id, "beta")  # twice: no change
        self.assertEqual(granted.organizations, ("acme", "beta"))
        listed = yield self.store.list_users()
        self.assertEqual([u.email for u in listed], ["ann@example.com", "root@example.com"])
        self.assertNotIn("argon", repr(listed))
        yield self.store.remove_user("ann@example.com")
        yield self.assertFailure(self.store.get_user("ann@example.com"), NotFound)
        yield self.assertFailure(self.store.remove_user("ann@example.com"), NotFound)

    @defer.inlineCallbacks
    def test_sessions_links_and_passwords(self):
        user = yield self.store.add_user("ann@example.com")
        now = self.store._clock.seconds()
        session, link = key_digest("session-token"), key_digest("link-token")
        yield self.store.add_user_token(user.id, session, "session", now + 60, "csrf-1")
        yield self.store.add_user_token("ann@example.com", link, "set_password", now + 60)
        found = yield self.store.user_token(session, "session")
        self.assertEqual((found.user.email, found.csrf_token), ("ann@example.com", "csrf-1"))
        self.assertNotIn("csrf-1", repr(found))
        # a digest is one purpose only
        yield self.assertFailure(self.store.user_token(session, "set_password"), NotFound)
        user = yield self.store.set_password_with_token(link, "$argon2id$hash")
        self.assertTrue(user.has_password)
        # the link is used up, and the new password ended the session
        yield self.assertFailure(self.store.set_password_with_token(link, "x"), NotFound)
        yield self.assertFailure(self.store.user_token(session, "session"), NotFound)
        yield self.store.add_user_token(user.id, session, "session", now - 1, "csrf-2")
        yield self.assertFailure(self.store.user_token(session, "session"), NotFound)
        yield self.store.add_user_token(user.id, key_digest("s2"), "session", now + 60)
        yield self.store.remove_user_token(key_digest("s2"))
        yield self.assertFailure(self.store.user_token(key_digest("s2"), "session"), NotFound)
        yield self.store.add_user_token(user.id, key_digest("s3"), "session", now + 60)
        yield self.store.set_user_password(user.id, "$argon2id$other")
        yield self.assertFailure(self.store.user_token(key_digest("s3"), "session"), NotFound)


class SQLiteUsersTests(UsersContract, unittest.TestCase):
    new_location = contract.SQLiteContractTests.new_location
    store_at = contract.SQLiteContractTests.store_at
    make_store = contract.StoreContract.make_store
    setUp = contract.StoreContract.setUp


class PostgresUsersTests(UsersContract, unittest.TestCase):
    new_location = contract.PostgresContractTests.new_location
    store_at = contract.PostgresContractTests.store_at
    make_store = contract.StoreContract.make_store
    setUp = contract.StoreContract.setUp
