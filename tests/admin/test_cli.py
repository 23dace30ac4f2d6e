"""The ``mailgw`` command line, run for real as a subprocess against a config
file and an SQLite database in a temporary folder.

Fixtures (organizations, servers, queued messages) are made through the store
API in-process, which is fast; each test then runs only the verbs it is about.
"""
from __future__ import annotations

import io
import json
import os
import re
import sys
from dataclasses import dataclass

from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from mailgw.model import MessageEnvelope, generate_token
from mailgw.model import DeliveryAttempt
from mailgw.store import open_store
from mailgw.store.base import schema_files

#: the schema versions this mailgw ships (tests name them rather than a number
#: that every new schema file would change)
VERSIONS = [version for version, _ in schema_files("sqlite")]
LATEST = VERSIONS[-1]
KEY_RE = re.compile(r"^[A-Za-z0-9]{24}$")
ISO_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
CONFIG = 'hostname = "mx.test"\n[database]\nurl = "sqlite:db/mailgw.sqlite3"\n'


def together(*coroutines):
    """Run independent commands at once (each one is a process start-up)."""
    return gatherResults([ensureDeferred(c) for c in coroutines])


@dataclass
class Run:
    out: bytes
    err: str
    code: int

    @property
    def text(self) -> str:
        return self.out.decode("utf-8")


class CLITestCase(unittest.TestCase):
    """A temporary folder holding C{mailgw.toml} and (once used) the database."""

    def setUp(self):
        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(self.folder)
        self.config = os.path.join(self.folder, "mailgw.toml")
        with open(self.config, "w") as f:
            f.write(CONFIG)
        self.database = os.path.join(self.folder, "db", "mailgw.sqlite3")

    async def run_cli(self, *args, config=True, env=None, cwd=None) -> Run:
        environ = {k: v for k, v in os.environ.items() if k != "MAILGW_CONFIG"}
        environ.update(env or {})
        argv = ["-m", "mailgw.admin.cli"] + (["--config", self.config] if config else [])
        out, err, code = await getProcessOutputAndValue(
            sys.executable, argv + list(args), env=environ, path=cwd or self.folder)
        return Run(out, err.decode("utf-8", "replace"), code)

    async def ok(self, *args, **kw) -> str:
        run = await self.run_cli(*args, **kw)
        self.assertEqual((run.code, run.err), (0, ""), args)
        return run.text

    async def json(self, *args, **kw):
        return json.loads(await self.ok(*args, "--json", **kw))

    async def error(self, *args, code=1, **kw) -> str:
        """The one error line of a failing run (checked: one line, no traceback)."""
        run = await self.run_cli(*args, **kw)
        self.assertEqual(run.code, code, (args, run.err))
        self.assertEqual(run.out, b"")
        self.assertNotIn("Traceback", run.err)
        if code == 1:
            self.assertEqual(run.err.count("\n"), 1, run.err)
        return run.err.splitlines()[-1]

    async def store(self):
        """An open, upgraded store on the test database, closed after the test."""
        from twisted.internet import reactor
        store = open_store("sqlite:" + self.database, reactor)
        await store.start()
        self.addCleanup(store.close)
        await store.upgrade()
        return store

    async def seed(self):
        """Organization acme with server acme/web; returns (store, server)."""
        store = await self.store()
        await store.add_organization("acme", "Acme")
        server = await store.add_server("acme", "web", "Web")
        return store, server


class DatabaseTests(CLITestCase):
    async def test_upgrade_applies_once(self):
        self.assertEqual(await self.ok("db", "upgrade"), "applied schema versions: "
                         + ", ".join(str(v) for v in VERSIONS) + "\n")
        self.assertEqual(await self.json("db", "upgrade"), {"applied": []})
        self.assertEqual(await self.ok("db", "upgrade"), "schema is up to date\n")

    async def test_other_verbs_upgrade_a_fresh_database(self):
        self.assertEqual(await self.json("org", "list"), [])
        self.assertEqual(await self.json("db", "upgrade"), {"applied": []})


class ConfigTests(CLITestCase):
    async def test_config_from_environment(self):
        await (await self.store()).add_organization("acme", "Acme")
        orgs = await self.json("org", "list", config=False,
                               env={"MAILGW_CONFIG": self.config}, cwd="/")
        self.assertEqual([o["permalink"] for o in orgs], ["acme"])

    async def test_option_wins_over_environment_and_may_follow_the_verb(self):
        orgs = await self.json("org", "list", "--config", self.config, config=False,
                               env={"MAILGW_CONFIG": "/nonexistent.toml"})
        self.assertEqual(orgs, [])

    async def test_default_config_is_etc_mailgw_toml(self):
        os.makedirs(os.path.join(self.folder, "etc"))
        os.rename(self.config, os.path.join(self.folder, "etc", "mailgw.toml"))
        self.assertEqual(await self.json("org", "list", config=False), [])
        self.assertTrue(os.path.exists(os.path.join(self.folder, "etc", "db")))

    async def test_unknown_key_is_one_line(self):
        with open(self.config, "a") as f:
            f.write("bogus = 1\n")
        line = await self.error("org", "list")
        self.assertEqual(line, "mailgw: config error: database.bogus: unknown key")

    async def test_missing_config_file(self):
        line = await self.error("org", "list", config=False, env={"MAILGW_CONFIG": "nope.toml"})
        self.assertEqual(line, "mailgw: config file not found: nope.toml")

    async def test_json_may_come_before_the_noun(self):
        run = await self.run_cli("--json", "org", "list")
        self.assertEqual((run.code, json.loads(run.out)), (0, []))

    async def test_broken_database_is_one_line(self):
        os.makedirs(os.path.dirname(self.database))
        with open(self.database, "wb") as f:
            f.write(b"not sqlite " * 200)
        self.assertEqual(await self.error("org", "list"),
                         "mailgw: sqlite: file is not a database")

    async def test_usage_errors_exit_2(self):
        runs = await together(self.run_cli(), self.run_cli("org", "frobnicate"),
                                    self.run_cli("domain", "unverify", "one"))
        for run in runs:
            self.assertEqual(run.code, 2, run.err)
            self.assertIn("usage: mailgw", run.err)
            self.assertNotIn("Traceback", run.err)


class OrganizationTests(CLITestCase):
    async def test_add_then_list(self):
        text = await self.ok("org", "add", "acme", "--name", "Acme Inc")
        self.assertIn("permalink: acme\n", text)
        self.assertIn("name:      Acme Inc\n", text)
        self.assertEqual(await self.json("org", "list"),
                         [{"id": 1, "permalink": "acme", "name": "Acme Inc",
                           "suspended": False}])
        self.assertEqual((await self.ok("org", "list")).splitlines(),
                         ["PERMALINK  NAME      SUSPENDED",
                          "acme       Acme Inc  no"])

    async def test_name_defaults_to_permalink(self):
        org = await self.json("org", "add", "acme")
        self.assertEqual((org["permalink"], org["name"]), ("acme", "acme"))

    async def test_duplicate(self):
        await (await self.store()).add_organization("acme", "Acme")
        self.assertEqual(await self.error("org", "add", "acme"),
                         "mailgw: organization acme already exists")

    async def test_invalid_permalink_touches_nothing(self):
        self.assertEqual(await self.error("org", "add", "Acme"),
                         "mailgw: invalid permalink 'Acme': use a-z, 0-9 and -")
        self.assertFalse(os.path.exists(self.database))

    async def test_suspend_and_unsuspend(self):
        await self.seed()
        self.assertTrue((await self.json("org", "suspend", "acme"))["suspended"])
        servers = await self.json("server", "list")
        self.assertTrue(servers[0]["organization_suspended"])
        self.assertFalse((await self.json("org", "unsuspend", "acme"))["suspended"])
        self.assertEqual(await self.error("org", "suspend", "nope"),
                         "mailgw: no organization nope")


class ServerTests(CLITestCase):
    async def test_add_with_every_flag(self):
        await (await self.store()).add_organization("acme", "Acme")
        server = await self.json(
            "server", "add", "acme/web", "--name", "Web", "--allow-sender-header",
            "--privacy-mode", "--mode", "development", "--send-limit", "50")
        del server["id"]
        self.assertEqual(server, {
            "server": "acme/web", "organization": "acme", "permalink": "web",
            "name": "Web", "mode": "development", "allow_sender_header": True,
            "privacy_mode": True, "send_limit": 50, "suspended": False,
            "organization_suspended": False})

    async def test_add_defaults(self):
        await (await self.store()).add_organization("acme", "Acme")
        text = await self.ok("server", "add", "acme/web")
        for line in ("server:                 acme/web", "name:                   web",
                     "mode:                   live", "allow_sender_header:    no",
                     "send_limit:             -"):
            self.assertIn(line + "\n", text)

    async def test_set_changes_only_what_is_given(self):
        await self.seed()
        server = await self.json("server", "set", "acme/web", "--allow-sender-header", "on",
                                 "--privacy-mode", "on", "--mode", "development",
                                 "--send-limit", "10")
        self.assertEqual([server[k] for k in ("allow_sender_header", "privacy_mode", "mode",
                                              "send_limit")], [True, True, "development", 10])
        server = await self.json("server", "set", "acme/web", "--send-limit", "none",
                                 "--allow-sender-header", "off")
        self.assertEqual([server[k] for k in ("allow_sender_header", "privacy_mode", "mode",
                                              "send_limit")], [False, True, "development", None])

    async def test_set_errors(self):
        await self.seed()
        nothing, bad_switch, bad_limit = await together(
            self.error("server", "set", "acme/web"),
            self.error("server", "set", "acme/web", "--privacy-mode", "yes", code=2),
            self.error("server", "set", "acme/web", "--send-limit", "0", code=2))
        self.assertEqual(nothing, "mailgw: nothing to change: give --allow-sender-header, "
                                  "--privacy-mode, --mode or --send-limit")
        self.assertIn("use on or off, not 'yes'", bad_switch)
        self.assertIn("must be a whole number >= 1", bad_limit)

    async def test_list_all_and_by_organization(self):
        store, _ = await self.seed()
        await store.add_server("acme", "api", "API")
        await store.add_organization("other", "Other")
        await store.add_server("other", "x", "X")
        everything = await self.json("server", "list")
        self.assertEqual([s["server"] for s in everything], ["acme/api", "acme/web", "other/x"])
        acme = await self.json("server", "list", "acme")
        self.assertEqual([s["server"] for s in acme], ["acme/api", "acme/web"])
        lines = (await self.ok("server", "list", "other")).splitlines()
        self.assertEqual(lines[0].split()[:3], ["SERVER", "NAME", "MODE"])
        self.assertEqual(lines[1].split()[:3], ["other/x", "X", "live"])

    async def test_suspend_and_unsuspend(self):
        await self.seed()
        self.assertTrue((await self.json("server", "suspend", "acme/web"))["suspended"])
        self.assertFalse((await self.json("server", "unsuspend", "acme/web"))["suspended"])

    async def test_bad_names(self):
        await self.seed()
        lines = await together(
            self.error("server", "suspend", "acme/nope"),
            self.error("server", "add", "nope/web"),
            self.error("server", "add", "acme"),
            self.error("server", "add", "acme/web/x"),
            self.error("server", "add", "acme/Web"),
            self.error("server", "add", "acme/web"))
        self.assertEqual(lines, [
            "mailgw: no server acme/nope",
            "mailgw: no organization nope",
            "mailgw: invalid server 'acme': use ORG/SERVER",
            "mailgw: invalid server 'acme/web/x': use ORG/SERVER",
            "mailgw: invalid permalink 'Web': use a-z, 0-9 and -",
            "mailgw: server acme/web already exists"])


class DomainTests(CLITestCase):
    async def test_add_owned_by_server(self):
        await self.seed()
        domain = await self.json("domain", "add", "Example.COM", "--server", "acme/web",
                                 "--verified", "--use-for-any")
        del domain["id"]
        self.assertRegex(domain.pop("dkim_selector"), r"^mailgw-[a-z0-9]{6}$")
        self.assertEqual(domain, {"name": "example.com", "owner": "acme/web",
                                  "server": "acme/web", "organization": None,
                                  "verified": True, "use_for_any": True,
                                  "dns_status": None, "dns_checked_at": None})

    async def test_add_owned_by_organization(self):
        await self.seed()
        text = await self.ok("domain", "add", "example.org", "--org", "acme")
        self.assertRegex(text, r"(?m)^owner: +acme$")
        self.assertRegex(text, r"(?m)^verified: +no$")

    async def test_add_errors(self):
        await self.seed()
        bad_name, any_for_org, no_owner, both = await together(
            self.error("domain", "add", "not a domain!", "--org", "acme"),
            self.error("domain", "add", "example.org", "--org", "acme", "--use-for-any"),
            self.error("domain", "add", "example.org", code=2),
            self.error("domain", "add", "x.org", "--org", "acme", "--server", "acme/web",
                       code=2))
        self.assertEqual(bad_name, "mailgw: not a valid domain name: 'not a domain!'")
        self.assertEqual(any_for_org,
                         "mailgw: --use-for-any applies only to a domain owned by a server")
        self.assertIn("one of the arguments --server --org is required", no_owner)
        self.assertIn("not allowed with argument", both)

    async def test_list_verify_remove(self):
        store, _ = await self.seed()
        mine = await store.add_domain("a.example", server=("acme", "web"))
        await store.add_domain("b.example", organization="acme")
        names = lambda rows: [d["name"] for d in rows]  # noqa: E731
        self.assertEqual(names(await self.json("domain", "list")), ["a.example", "b.example"])
        self.assertEqual(names(await self.json("domain", "list", "--server", "acme/web")),
                         ["a.example"])
        self.assertEqual(names(await self.json("domain", "list", "--org", "acme")),
                         ["b.example"])
        self.assertTrue((await self.json("domain", "verify", str(mine.id), "--force"))["verified"])
        self.assertFalse((await self.json("domain", "unverify", str(mine.id)))["verified"])
        self.assertEqual(await self.ok("domain", "remove", str(mine.id)),
                         f"removed domain {mine.id}\n")
        self.assertEqual(names(await self.json("domain", "list")), ["b.example"])
        self.assertEqual(await self.error("domain", "remove", str(mine.id)),
                         f"mailgw: no domain {mine.id}")


class CredentialTests(CLITestCase):
    async def test_generated_keys(self):
        await self.seed()
        first = await self.json("credential", "add", "acme/web", "--type", "smtp",
                                "--name", "app", "--hold")
        second = await self.json("credential", "add", "acme/web", "--type", "smtp")
        api = await self.json("credential", "add", "acme/web", "--type", "api")
        for cred in (first, second, api):
            self.assertRegex(cred["key"], KEY_RE)
            self.assertEqual(cred["server"], "acme/web")
        self.assertEqual(len({first["key"], second["key"], api["key"]}), 3)
        self.assertEqual([first["type"], first["name"], first["hold"]], ["smtp", "app", True])
        self.assertEqual([second["name"], second["hold"], api["type"]], ["", False, "api"])

    async def test_readable_add_prints_the_key(self):
        await self.seed()
        text = await self.ok("credential", "add", "acme/web", "--type", "smtp")
        key = re.search(r"^key: +(\S+)$", text, re.M).group(1)
        self.assertRegex(key, KEY_RE)

    async def test_ip_keys_are_normalised_networks(self):
        await self.seed()
        v4, v6 = await together(
            self.json("credential", "add", "acme/web", "--type", "smtp-ip",
                      "--key", "10.1.2.3/24"),
            self.json("credential", "add", "acme/web", "--type", "smtp-ip",
                      "--key", "2001:DB8::1"))
        self.assertEqual((v4["key"], v4["type"]), ("10.1.2.0/24", "smtp-ip"))
        self.assertEqual(v6["key"], "2001:db8::1/128")

    async def test_key_errors(self):
        await self.seed()
        lines = await together(
            self.error("credential", "add", "acme/web", "--type", "smtp-ip", "--key", "10.1"),
            self.error("credential", "add", "acme/web", "--type", "smtp-ip",
                       "--key", "fe80::1%eth0"),
            self.error("credential", "add", "acme/web", "--type", "smtp-ip"),
            self.error("credential", "add", "acme/web", "--type", "smtp", "--key", "abc"),
            self.error("credential", "add", "acme/nope", "--type", "smtp"))
        self.assertEqual(lines, [
            "mailgw: key must be a valid IPv4 or IPv6 address",
            "mailgw: key must be a valid IPv4 or IPv6 address",
            "mailgw: --key is required for smtp-ip credentials",
            "mailgw: --key is only for smtp-ip credentials; smtp keys are generated",
            "mailgw: no server acme/nope"])

    async def test_list_shows_keys(self):
        store, _ = await self.seed()
        smtp = await store.add_credential(("acme", "web"), "smtp", "A" * 24, name="app")
        await store.add_credential(("acme", "web"), "smtp-ip", "192.0.2.0/24")
        rows = await self.json("credential", "list", "acme/web")
        self.assertEqual([(r["id"], r["type"], r["key"], r["server"]) for r in rows],
                         [(smtp.id, "smtp", "A" * 24, "acme/web"),
                          (smtp.id + 1, "smtp-ip", "192.0.2.0/24", "acme/web")])
        lines = (await self.ok("credential", "list", "acme/web")).splitlines()
        self.assertEqual(lines[0].split(), ["ID", "TYPE", "NAME", "HOLD", "KEY", "LAST", "USED"])
        self.assertEqual(lines[1].split(), [str(smtp.id), "smtp", "app", "no", "A" * 24, "-"])

    async def test_hold_release_remove(self):
        store, _ = await self.seed()
        cred = await store.add_credential(("acme", "web"), "smtp", "B" * 24)
        held = await self.json("credential", "hold", str(cred.id))
        self.assertEqual([held["hold"], held["server"], held["key"]], [True, "acme/web", "B" * 24])
        self.assertFalse((await self.json("credential", "release", str(cred.id)))["hold"])
        self.assertEqual(await self.json("credential", "remove", str(cred.id)),
                         {"removed": "credential", "id": cred.id})
        self.assertEqual(await self.json("credential", "list", "acme/web"), [])
        self.assertEqual(await self.error("credential", "hold", str(cred.id)),
                         f"mailgw: no credential {cred.id}")


#: a message whose bytes a text-mode round trip would damage
RAW = (b"From: a@example.com\r\nTo: b@example.net\r\nSubject: caf\xc3\xa9\r\n"
       b"X-Evil: \x1b[2J\r\n\r\nline one\r\n8-bit \xff\xfe and a NUL \x00 here\r\n"
       b"bare\nLF\r\n")


class QueueTests(CLITestCase):
    async def enqueue(self, store, server, rcpts, status="queued", hold_reason=None):
        envelope = MessageEnvelope(
            token=generate_token(), server_id=server.id, credential_id=None,
            mail_from="a@example.com", rcpt_to=tuple(rcpts), sender_domain="example.com",
            protocol="esmtpsa", status=status, hold_reason=hold_reason)
        return envelope, await store.enqueue(envelope, io.BytesIO(RAW))

    async def test_list_json(self):
        store, server = await self.seed()
        envelope, ids = await self.enqueue(store, server, ["b@example.net", "c@example.net"])
        entries = await self.json("queue", "list")
        self.assertEqual(len(entries), 2)
        entry = entries[0]
        self.assertRegex(entry.pop("created_at"), ISO_RE)
        for key in ("message_id", "next_attempt_at", "last_error"):
            entry.pop(key)
        self.assertEqual(entry, {
            "id": ids["b@example.net"], "token": envelope.token, "server": "acme/web",
            "mail_from": "a@example.com", "rcpt_to": "b@example.net", "status": "queued",
            "size": len(RAW), "credential_id": None, "domain": "example.com",
            "hold_reason": None, "attempts": 0})

    async def test_list_filters(self):
        store, server = await self.seed()
        await store.add_server("acme", "api", "API")
        api = await store.get_server("acme", "api")
        await self.enqueue(store, server, ["q1@example.net", "q2@example.net"])
        await self.enqueue(store, api, ["h@example.net"], status="held",
                           hold_reason="credential")
        rcpts = lambda rows: [e["rcpt_to"] for e in rows]  # noqa: E731
        held, web, first = await together(
            self.json("queue", "list", "--status", "held"),
            self.json("queue", "list", "--server", "acme/web"),
            self.json("queue", "list", "--limit", "1"))
        self.assertEqual(rcpts(held), ["h@example.net"])
        self.assertEqual(held[0]["hold_reason"], "credential")
        self.assertEqual(rcpts(web), ["q1@example.net", "q2@example.net"])
        self.assertEqual(rcpts(first), ["q1@example.net"])

    async def test_list_readable(self):
        store, server = await self.seed()
        envelope, ids = await self.enqueue(store, server, ["b@example.net"])
        lines = (await self.ok("queue", "list")).splitlines()
        self.assertEqual(lines[0].split(), ["ID", "TOKEN", "SERVER", "STATUS", "FROM", "TO",
                                            "SIZE", "CREATED"])
        self.assertEqual(lines[1].split()[:7], [
            str(ids["b@example.net"]), envelope.token, "acme/web", "queued",
            "a@example.com", "b@example.net", str(len(RAW))])
        self.assertEqual(await self.ok("queue", "list", "--status", "sent"),
                         "no queue entries\n")

    async def test_show_fields_and_headers(self):
        store, server = await self.seed()
        envelope, ids = await self.enqueue(store, server, ["b@example.net"])
        text = await self.ok("queue", "show", str(ids["b@example.net"]))
        self.assertIn(f"token:           {envelope.token}\n", text)
        self.assertIn("rcpt_to:         b@example.net\n", text)
        self.assertIn("\nFrom: a@example.com\nTo: b@example.net\nSubject: café\n", text)
        # The terminal escape arrives as text, and the body is not shown.
        self.assertIn("X-Evil: \\x1b[2J", text)
        self.assertNotIn("\x1b", text)
        self.assertNotIn("line one", text)
        data = await self.json("queue", "show", str(ids["b@example.net"]))
        self.assertEqual(data["token"], envelope.token)
        self.assertEqual(data["headers"], "From: a@example.com\nTo: b@example.net\n"
                                          "Subject: café\nX-Evil: \x1b[2J")

    async def test_show_raw_is_byte_exact(self):
        store, server = await self.seed()
        _, ids = await self.enqueue(store, server, ["b@example.net"])
        run = await self.run_cli("queue", "show", str(ids["b@example.net"]), "--raw")
        self.assertEqual((run.code, run.err), (0, ""))
        self.assertEqual(run.out, RAW)

    async def test_show_errors(self):
        await self.seed()
        missing, raw_json = await together(
            self.error("queue", "show", "99"),
            self.error("queue", "show", "1", "--raw", "--json"))
        self.assertEqual(missing, "mailgw: no queue entry 99")
        self.assertEqual(raw_json, "mailgw: --raw writes the message itself; leave out --json")


class ThrottleTests(CLITestCase):
    """C{mailgw throttle}: what the gateways recorded on the store's notice
    board (docs/operations.md); the gateways themselves are in
    C{tests/e2e/test_throttle_cli.py}."""

    async def lockouts(self):
        """Lock-outs of two nodes, as running gateways would record them."""
        from twisted.internet import reactor
        store = await self.store()
        self.now = reactor.seconds()
        await store.record_lockout("192.0.2.1", "gw1/100", "key", self.now + 900, 10)
        await store.record_lockout("192.0.2.1", "gw2/200", "key", self.now + 800, 11)
        await store.record_lockout("2001:db8:1:2::/64", "gw1/100", "anonymous",
                                   self.now + 600, 100)
        await store.record_lockout("198.51.100.1", "gw1/100", "key", self.now - 1, 10)
        return store

    async def test_list(self):
        self.assertEqual(await self.ok("throttle", "list"), "no lock-outs\n")
        await self.lockouts()
        rows = await self.json("throttle", "list")
        for row in rows:
            self.assertRegex(row.pop("locked_until"), ISO_RE)
        self.assertEqual(rows, [
            {"address": "192.0.2.1", "kind": "key", "node": "gw1/100", "failures": 10},
            {"address": "192.0.2.1", "kind": "key", "node": "gw2/200", "failures": 11},
            {"address": "2001:db8:1:2::/64", "kind": "anonymous", "node": "gw1/100",
             "failures": 100}])
        lines = (await self.ok("throttle", "list")).splitlines()
        self.assertEqual(lines[0].split(), ["ADDRESS", "KIND", "NODE", "UNTIL", "FAILURES"])
        self.assertEqual(len(lines), 4)
        self.assertTrue(lines[3].startswith("2001:db8:1:2::/64  anonymous  gw1/100  "))

    async def test_clear_every_node_and_record_the_clear(self):
        store = await self.lockouts()
        self.assertEqual(await self.json("throttle", "clear", "::ffff:192.0.2.1"),
                         {"cleared": "192.0.2.1", "lockouts_removed": 2})
        self.assertEqual([row["address"] for row in await self.json("throttle", "list")],
                         ["2001:db8:1:2::/64"])
        self.assertEqual(await self.ok("throttle", "clear", "2001:db8:1:2::beef"),
                         "cleared 2001:db8:1:2::/64: 1 lock-out removed; running gateways "
                         "forget its failures within a few seconds\n")
        self.assertEqual(await self.json("throttle", "list"), [])
        clears = await store.throttle_clears_after(0)
        self.assertEqual([c.address for c in clears], ["192.0.2.1", "2001:db8:1:2::/64"])

    async def test_clear_names_the_configured_ipv6_prefix(self):
        with open(self.config, "a") as f:
            f.write("[auth_throttle]\nipv6_prefix = 48\n")
        self.assertEqual(await self.json("throttle", "clear", "2001:db8:1:2::5"),
                         {"cleared": "2001:db8:1::/48", "lockouts_removed": 0})

    async def test_clear_errors_touch_nothing(self):
        not_ip, wide = await together(
            self.error("throttle", "clear", "mail.example.com"),
            self.error("throttle", "clear", "192.0.2.0/24"))
        self.assertEqual(not_ip, "mailgw: not an IP address or network: 'mail.example.com'")
        self.assertEqual(wide, "mailgw: 192.0.2.0/24 holds several throttled addresses: "
                               "name an IPv4 address")
        self.assertFalse(os.path.exists(self.database))
        self.assertEqual(await self.error("throttle", "clear", code=2),
                         "mailgw throttle clear: error: the following arguments are "
                         "required: ADDRESS")


class QueueIdTests(CLITestCase):
    """The queue verbs given a message's queue id (the token of C{250 OK:
    queued as <token>} and of the HTTP API) instead of an entry id."""

    enqueue = QueueTests.enqueue

    async def test_show_message_with_every_entry_and_its_attempts(self):
        store, server = await self.seed()
        envelope, ids = await self.enqueue(store, server, ["b@example.net", "c@example.net"])
        entry = ids["b@example.net"]
        from twisted.internet import reactor
        await store.claim_due("n", reactor.seconds() + 1, 300, 10)
        await store.mark_retry(entry, "n", DeliveryAttempt(
            entry, reactor.seconds(), "mx.example.net", 451, "451 try later", "n"),
            reactor.seconds() + 60)
        data = await self.json("queue", "show", envelope.token)
        self.assertEqual([data[k] for k in ("token", "server", "mail_from", "size")],
                         [envelope.token, "acme/web", "a@example.com", len(RAW)])
        self.assertEqual([(e["id"], e["rcpt_to"], e["status"]) for e in data["entries"]],
                         [(ids["b@example.net"], "b@example.net", "queued"),
                          (ids["c@example.net"], "c@example.net", "queued")])
        self.assertEqual([(a["code"], a["text"]) for a in data["entries"][0]
                          ["delivery_attempts"]], [(451, "451 try later")])
        self.assertEqual(data["entries"][1]["delivery_attempts"], [])
        self.assertTrue(data["headers"].startswith("From: a@example.com\nTo: b@example.net"))
        text = await self.ok("queue", "show", envelope.token.lower())
        self.assertIn(f"token:         {envelope.token}\n", text)
        self.assertIn("\nqueue entries:\nID", text)
        self.assertIn(f"\ndelivery attempts of entry {entry} (b@example.net):\nWHEN", text)
        self.assertIn("451 try later", text)
        self.assertIn(f"delivery attempts of entry {ids['c@example.net']} (c@example.net):"
                      f"\n  none yet\n", text)
        self.assertIn("X-Evil: \\x1b[2J", text)
        self.assertNotIn("\x1b", text)
        run = await self.run_cli("queue", "show", envelope.token, "--raw")
        self.assertEqual((run.code, run.err, run.out), (0, "", RAW))

    async def test_an_entry_id_keeps_its_meaning(self):
        store, server = await self.seed()
        envelope, ids = await self.enqueue(store, server, ["b@example.net", "c@example.net"])
        data = await self.json("queue", "show", str(ids["c@example.net"]))
        self.assertEqual((data["id"], data["rcpt_to"]), (ids["c@example.net"], "c@example.net"))
        self.assertNotIn("entries", data)

    async def test_a_queue_id_of_digits_only(self):
        """One queue id in 2.2 million is all digits: when no entry has that id,
        it names the message."""
        store, server = await self.seed()
        envelope = MessageEnvelope(
            token="012345678901", server_id=server.id, credential_id=None,
            mail_from="a@example.com", rcpt_to=("b@example.net",),
            sender_domain="example.com", protocol="esmtpsa")
        await store.enqueue(envelope, io.BytesIO(RAW))
        data = await self.json("queue", "show", "012345678901")
        self.assertEqual(data["token"], "012345678901")
        self.assertEqual(await self.error("queue", "show", "012345678902"),
                         "mailgw: no queue entry or queue id 012345678902")

    async def test_release_retry_remove_apply_to_the_entries_they_can(self):
        store, server = await self.seed()
        envelope, ids = await self.enqueue(store, server, ["h1@example.net", "h2@example.net"],
                                           status="held", hold_reason="development mode")
        released = await self.json("queue", "release", envelope.token.lower())
        self.assertEqual(released["token"], envelope.token)
        self.assertEqual(released["released"], 2)
        self.assertEqual([(e["id"], e["status"], e["hold_reason"]) for e in
                          released["entries"]],
                         [(ids["h1@example.net"], "queued", None),
                          (ids["h2@example.net"], "queued", None)])
        self.assertEqual(await self.error("queue", "release", envelope.token),
                         f"mailgw: message {envelope.token} has no held queue entry "
                         f"(its entries are queued)")
        text = await self.ok("queue", "retry", envelope.token)
        self.assertTrue(text.startswith(f"retried 2 of 2 queue entries of {envelope.token}\n"
                                        "ID"), text)
        self.assertEqual(await self.ok("queue", "remove", envelope.token),
                         f"removed message {envelope.token} and its 2 queue entries\n")
        self.assertEqual(await self.json("queue", "list"), [])

    async def test_mixed_statuses(self):
        from twisted.internet import reactor
        store, server = await self.seed()
        envelope, ids = await self.enqueue(
            store, server, ["f@example.net", "s@example.net", "q@example.net"])
        other, _ = await self.enqueue(store, server, ["other@example.net"])
        failed, sent = ids["f@example.net"], ids["s@example.net"]
        now = reactor.seconds()
        await store.claim_due("n", now + 1, 300, 10)
        await store.mark_failed(failed, "n", DeliveryAttempt(failed, now, "mx", 550, "550 no",
                                                              "n"))
        await store.mark_sent(sent, "n", DeliveryAttempt(sent, now, "mx", 250, "250 ok", "n"))
        self.assertEqual(await self.error("queue", "release", envelope.token),
                         f"mailgw: message {envelope.token} has no held queue entry "
                         f"(its entries are failed, queued, sent)")
        retried = await self.json("queue", "retry", envelope.token)
        self.assertEqual((retried["retried"], [e["id"] for e in retried["entries"]]),
                         (2, [failed, ids["q@example.net"]]))
        self.assertEqual(await self.json("queue", "remove", envelope.token),
                         {"removed": "message", "token": envelope.token,
                          "entries_removed": 3})
        self.assertEqual([e["token"] for e in await self.json("queue", "list")],
                         [other.token])

    async def test_unknown_and_invalid_queue_ids(self):
        await self.seed()
        lines = await together(*(
            self.error("queue", verb, "NOSUCH000001")
            for verb in ("show", "release", "retry", "remove")))
        self.assertEqual(set(lines), {"mailgw: no message with queue id NOSUCH000001"})
        missing, huge, invalid = await together(
            self.error("queue", "release", "99"),
            self.error("queue", "show", "9" * 30),
            self.error("queue", "remove", "queued as X1"))
        self.assertEqual(missing, "mailgw: no queue entry 99")
        self.assertEqual(huge, "mailgw: no message with queue id " + "9" * 30)
        self.assertEqual(invalid, "mailgw: invalid queue entry id or queue id 'queued as X1': "
                                  "use the ID or TOKEN that `mailgw queue list` shows")


class VersionTests(CLITestCase):
    def setup_cfg_version(self) -> str:
        import configparser
        parser = configparser.ConfigParser()
        parser.read(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__)))), "setup.cfg"))
        return parser.get("metadata", "version")

    async def test_version(self):
        run = await self.run_cli("--version", config=False)
        self.assertEqual((run.code, run.err, run.text),
                         (0, "", f"mailgw {self.setup_cfg_version()}\n"))

    def test_version_of_a_source_tree_never_installed(self):
        from importlib import metadata
        from mailgw.admin import cli

        def not_installed(name):
            raise metadata.PackageNotFoundError(name)
        self.patch(metadata, "version", not_installed)
        self.assertEqual(cli.package_version(), self.setup_cfg_version())


def closed_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (just freed)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ConfigCheckTests(CLITestCase):
    """C{mailgw config check}: what the gateway would do with the config,
    checked without listening or changing the database."""

    def write_config(self, text: str) -> None:
        with open(self.config, "w") as f:
            f.write(text)

    def write_pair(self, certificate="cert.pem", key="key.pem"):
        from tests.tlsclients import make_pair
        cert_pem, key_pem, _ = make_pair()
        for name, data in ((certificate, cert_pem), (key, key_pem)):
            with open(os.path.join(self.folder, name), "wb") as f:
                f.write(data)

    GOOD = (
        'hostname = "mx.test"\nspool_directory = "spool"\n'
        '[database]\nurl = "sqlite:db/mailgw.sqlite3"\n'
        '[tls]\ncertificate = "cert.pem"\nprivate_key = "key.pem"\n'
        '[[listeners]]\nendpoint = "tcp:587:interface=0.0.0.0"\ntls = "starttls"\n'
        '[[listeners]]\nendpoint = "tcp:465:interface=0.0.0.0"\ntls = "implicit"\n'
        'max_connections = 20\nmax_connections_per_ip = 5\n'
        '[[listeners]]\nendpoint = "tcp:2525:interface=127.0.0.1"\n'
        '[http_api]\nendpoint = "tcp:8025:interface=127.0.0.1"\ntls = true\n'
        '[metrics]\nendpoint = "tcp:9091:interface=127.0.0.1"\n'
        '[web]\nendpoint = "tcp:8080:interface=127.0.0.1"\n'
        '[relay]\nsmarthost = "smtp.provider.example:587"\nusername = "gw"\n'
        'password = "relay-secret"\n')

    async def test_good_config(self):
        self.write_pair()
        self.write_config(self.GOOD)
        await self.store()  # upgraded
        data = await self.json("config", "check")
        self.assertEqual(data["config"], self.config)
        self.assertEqual(data["workers"], 1)
        self.assertEqual(data["listeners"], [
            {"endpoint": "tcp:587:interface=0.0.0.0", "tls": "starttls",
             "auth_requires_tls": True, "proxy_protocol": False, "max_connections": 1000,
             "max_connections_per_ip": 50},
            {"endpoint": "tcp:465:interface=0.0.0.0", "tls": "implicit",
             "auth_requires_tls": True, "proxy_protocol": False, "max_connections": 20,
             "max_connections_per_ip": 5},
            {"endpoint": "tcp:2525:interface=127.0.0.1", "tls": "none",
             "auth_requires_tls": False, "proxy_protocol": False, "max_connections": 1000,
             "max_connections_per_ip": 50}])
        self.assertEqual(data["http_api"], {
            "endpoint": "tcp:8025:interface=127.0.0.1", "tls": True, "max_connections": 1000,
            "max_connections_per_ip": 50})
        self.assertEqual(data["metrics"], "tcp:9091:interface=127.0.0.1")
        self.assertEqual(data["web"], {"endpoint": "tcp:8080:interface=127.0.0.1",
                                       "tls": False})
        self.assertRegex(data["tls"].pop("expires"), ISO_RE)
        self.assertEqual(data["tls"], {
            "certificate": os.path.join(self.folder, "cert.pem"),
            "private_key": os.path.join(self.folder, "key.pem"), "min_version": "1.2",
            "expired": False})
        self.assertEqual(data["database"], {
            "url": "sqlite:" + self.database, "engine": "sqlite", "schema_version": LATEST,
            "latest_schema_version": LATEST, "schema": "current"})
        self.assertEqual(data["spool_directory"],
                         {"path": os.path.join(self.folder, "spool"), "exists": False})
        self.assertEqual(data["relay"], {
            "enabled": True, "target": "smarthost", "smarthost": "smtp.provider.example:587",
            "tls": "starttls", "verify": True, "username": "gw"})
        text = await self.ok("config", "check")
        self.assertNotIn("relay-secret", text)
        lines = text.splitlines()
        self.assertEqual(lines[0], f"config OK: {self.config}")
        self.assertEqual(lines[2], "workers:         1 process")
        self.assertEqual(lines[4].split()[:3], ["ENDPOINT", "TLS", "AUTH"])
        self.assertEqual(lines[6].split(), ["tcp:465:interface=0.0.0.0", "implicit", "yes", "no",
                                            "20", "5"])
        self.assertIn(f"database:        sqlite:{self.database} (schema version {LATEST}, "
                      "current)\n",
                      text)
        self.assertIn("web:             tcp:8080:interface=127.0.0.1 (https: no)\n", text)
        self.assertIn("relay:           smarthost smtp.provider.example:587 (tls starttls, "
                      "certificate verified, AUTH as gw)\n", text)
        self.assertFalse(os.path.exists(os.path.join(self.folder, "spool")))

    async def test_nothing_is_created(self):
        """A database or spool not there yet is the gateway's to create, as
        the user it runs as: the check only says so."""
        self.write_config('hostname = "mx.test"\nspool_directory = "spool"\n'
                          '[database]\nurl = "sqlite:db/mailgw.sqlite3"\n'
                          '[relay]\nenabled = false\n')
        data = await self.json("config", "check")
        self.assertEqual((data["database"]["schema"], data["database"]["schema_version"]),
                         ("created at start", 0))
        self.assertEqual((data["listeners"], data["http_api"], data["tls"]), ([], None, None))
        self.assertEqual(data["relay"], {"enabled": False, "target": None})
        text = await self.ok("config", "check")
        self.assertIn("(not created yet: created at start)\n", text)
        self.assertIn("relay:           off", text)
        self.assertEqual(os.listdir(self.folder), ["mailgw.toml"])

    async def test_schema_to_upgrade_at_start(self):
        from mailgw.store.base import Q
        store = await self.store()

        def forget_last():
            yield Q("DELETE FROM schema_version WHERE version = ?", (LATEST,))
        await store._run(forget_last)
        data = await self.json("config", "check")
        self.assertEqual((data["database"]["schema"], data["database"]["schema_version"]),
                         ("upgraded at start", VERSIONS[-2]))
        self.assertIn(f"(schema version {VERSIONS[-2]}, upgraded to {LATEST} at start)",
                      await self.ok("config", "check"))

    async def test_listener_endpoint_typo(self):
        self.write_config(CONFIG + '[[listeners]]\nendpoint = "tcp:2525"\n'
                                   '[[listeners]]\nendpoint = "tcp:587:interfce=0.0.0.0"\n')
        line = await self.error("config", "check")
        self.assertTrue(line.startswith("mailgw: listeners[1].endpoint: cannot use "
                                        "'tcp:587:interfce=0.0.0.0': "), line)
        self.assertIn("unexpected keyword argument 'interfce'", line)
        self.write_config(CONFIG + '[web]\nendpoint = "tpc:8080"\n')
        self.assertIn("mailgw: web.endpoint: cannot use 'tpc:8080': ",
                      await self.error("config", "check"))
        self.write_config(CONFIG + '[metrics]\nendpoint = "tpc:9091"\n')
        self.assertIn("mailgw: metrics.endpoint: cannot use 'tpc:9091': ",
                      await self.error("config", "check"))
        self.assertFalse(os.path.exists(self.database))

    async def test_key_that_does_not_match_the_certificate(self):
        self.write_pair()
        self.write_pair(certificate="other-cert.pem", key="other-key.pem")
        self.write_config(CONFIG + '[tls]\ncertificate = "cert.pem"\n'
                                   'private_key = "other-key.pem"\n')
        self.assertEqual(await self.error("config", "check"),
                         f"mailgw: tls.private_key {self.folder}/other-key.pem does not match "
                         f"tls.certificate {self.folder}/cert.pem")

    async def test_missing_certificate(self):
        self.write_config(CONFIG + '[tls]\ncertificate = "none.pem"\nprivate_key = "k.pem"\n')
        self.assertEqual(await self.error("config", "check"),
                         f"mailgw: cannot read {self.folder}/none.pem: No such file or directory")

    async def test_database_that_cannot_be_opened(self):
        url = f"postgresql://mailgw:pa%24%24word@127.0.0.1:{closed_port()}/mailgw"
        self.write_config(f'hostname = "mx.test"\n[database]\nurl = "{url}"\n')
        line = await self.error("config", "check")
        self.assertTrue(line.startswith("mailgw: cannot open the database: postgresql: "), line)
        self.assertIn(f"mailgw:***@127.0.0.1:{url.rsplit(':', 1)[1]}", line)
        self.assertIn("Connection refused", line)
        self.assertNotIn("pa%24%24word", line)
        self.assertNotIn("pa$$word", line)

    async def test_sqlite_file_that_is_not_a_database(self):
        os.makedirs(os.path.dirname(self.database))
        with open(self.database, "wb") as f:
            f.write(b"not sqlite " * 200)
        self.assertEqual(await self.error("config", "check"),
                         f"mailgw: cannot open the database sqlite:{self.database}: "
                         f"sqlite: file is not a database")

    async def test_spool_directory_that_cannot_be_made(self):
        with open(os.path.join(self.folder, "file"), "w") as f:
            f.write("x")
        self.write_config('spool_directory = "file/spool"\n' + CONFIG)
        self.assertEqual(await self.error("config", "check"),
                         f"mailgw: spool_directory {self.folder}/file/spool: cannot be "
                         f"created: {self.folder}/file is not a directory")

    async def test_usage(self):
        run = await self.run_cli("config", "check", "--help")
        self.assertEqual(run.code, 0)
        self.assertIn("usage: mailgw config check", run.text)


class PostgresConfigCheckTests(CLITestCase):
    """C{config check} on PostgreSQL: the schema read without creating it."""

    async def test_schema_on_postgresql(self):
        from tests.helpers import database_url
        self.engine = "postgresql"
        url = database_url(self)
        with open(self.config, "w") as f:
            f.write(f'hostname = "mx.test"\n[database]\nurl = "{url}"\n')
        data = await self.json("config", "check")
        self.assertEqual((data["database"]["engine"], data["database"]["schema_version"],
                          data["database"]["schema"]), ("postgresql", 0, "upgraded at start"))
        await self.ok("db", "upgrade")
        data = await self.json("config", "check")
        self.assertEqual((data["database"]["schema_version"], data["database"]["schema"]),
                         (LATEST, "current"))
