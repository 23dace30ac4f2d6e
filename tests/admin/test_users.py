"""``mailgw user``: users of the web interface, run for real as a
subprocess against a config file and an SQLite database in a temporary
folder; the password arrives on standard input, or a set-password link is
printed, and either works in the store the web interface reads."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from mailgw.auth import passwords
from mailgw.store import open_store
from tests.e2e.gateway import ROOT

CONFIG = ('hostname = "mx.test"\n[database]\nurl = "sqlite:mailgw.sqlite3"\n'
          '[web]\nendpoint = "tcp:8443:interface=127.0.0.1"\ntls = true\n'
          'link_lifetime = 600.0\n[tls]\ncertificate = "c.pem"\nprivate_key = "k.pem"\n')
PASSWORD = "a long enough password"


class UserVerbTests(unittest.TestCase):

    def setUp(self):
        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(self.folder)
        with open(os.path.join(self.folder, "mailgw.toml"), "w") as f:
            f.write(CONFIG)

    def cli(self, *args, stdin: str = ""):
        """@return: Deferred firing with C{(exit status, stdout, stderr)}."""
        def run():
            done = subprocess.run(
                [sys.executable, "-m", "mailgw.admin.cli", "--config", "mailgw.toml", *args],
                input=stdin, capture_output=True, text=True, cwd=self.folder, timeout=60,
                env=dict(os.environ, PYTHONPATH=ROOT))
            return done.returncode, done.stdout, done.stderr
        return deferToThread(run)

    @defer.inlineCallbacks
    def store(self):
        store = open_store("sqlite:" + os.path.join(self.folder, "mailgw.sqlite3"), reactor)
        yield store.start()
        self.addCleanup(store.close)
        return store

    @defer.inlineCallbacks
    def test_add_list_grant_passwd_remove(self):
        yield self.cli("org", "add", "acme")
        yield self.cli("org", "add", "beta")
        code, out, err = yield self.cli("--json", "user", "add", "Ann@Example.com", "--org",
                                        "acme", "--password-stdin", stdin=PASSWORD + "\n")
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(json.loads(out), {"id": 1, "email": "ann@example.com",
                                           "admin": False, "organizations": ["acme"],
                                           "password": "set"})
        store = yield self.store()
        user = yield store.get_user("ann@example.com")
        self.assertTrue(user.password_hash.startswith("$argon2id$"))
        self.assertTrue(passwords._verify(user.password_hash, PASSWORD))
        code, out, err = yield self.cli("user", "grant", "ann@example.com", "beta")
        self.assertIn("organizations: acme, beta", out)
        code, out, err = yield self.cli("user", "list")
        self.assertRegex(out, r"ann@example\.com\s+no\s+acme,beta\s+set")
        # refusals: one line each, nothing changed
        for args, stdin, why in (
                (("user", "add", "ann@example.com", "--password-stdin"), PASSWORD,
                 "already exists"),
                (("user", "add", "x@example.com", "--password-stdin"), "short", "10 characters"),
                (("user", "add", "x@example.com"), "", "no terminal"),
                (("user", "add", "not-an-address", "--link"), "", "invalid e-mail"),
                (("user", "add", "x@example.com", "--org", "nope", "--link"), "",
                 "no organization nope"),
                (("user", "remove", "nobody@example.com"), "", "no user")):
            code, out, err = yield self.cli(*args, stdin=stdin)
            self.assertEqual(code, 1, args)
            self.assertIn(why, err)
            self.assertNotIn(PASSWORD, err + out)
        self.assertEqual(len((yield store.list_users())), 1)
        code, out, err = yield self.cli("user", "passwd", "ann@example.com", "--password-stdin",
                                        stdin="another long password\n")
        self.assertEqual(code, 0, err)
        user = yield store.get_user("ann@example.com")
        self.assertTrue(passwords._verify(user.password_hash, "another long password"))
        code, out, err = yield self.cli("user", "remove", "ann@example.com")
        self.assertEqual((code, out), (0, "removed user ann@example.com\n"))
        self.assertEqual((yield store.list_users()), [])

    @defer.inlineCallbacks
    def test_a_set_password_link_for_the_interface(self):
        code, out, err = yield self.cli("--json", "user", "add", "root@example.com", "--admin",
                                        "--link")
        self.assertEqual(code, 0, err)
        data = json.loads(out)
        self.assertEqual((data["admin"], data["password"]), (True, "not set"))
        link = data["set_password_link"]
        prefix = "https://127.0.0.1:8443/set-password?token="
        self.assertTrue(link.startswith(prefix), link)
        store = yield self.store()
        found = yield store.user_token(passwords.token_digest(link[len(prefix):]),
                                       "set_password")
        self.assertEqual(found.user.email, "root@example.com")
        self.assertLess(abs(found.expires_at - reactor.seconds() - 600), 30)
