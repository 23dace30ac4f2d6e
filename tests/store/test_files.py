"""Files at rest are private whatever the umask: the SQLite database and the
files SQLite keeps beside it are born 0600, the spool directory 0700, and
existing ones that others may read are tightened at start with one log line."""
from __future__ import annotations

import os
import sqlite3
import stat

from twisted.internet import defer, reactor
from twisted.logger import capturedLogs, formatEvent
from twisted.trial import unittest

from mailgw.interfaces import StoreUnavailable
from mailgw.store.files import private_directory, private_file, tighten
from mailgw.store.sqlite import SQLiteStore


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def umask(testcase, mask):
    """Run the rest of C{testcase} under C{mask}."""
    testcase.addCleanup(os.umask, os.umask(mask))


def tightened(events):
    """The paths of the "tightened" lines of C{events}, with their modes."""
    return [(e["path"], e["old"], e["new"]) for e in events
            if formatEvent(e).startswith("tightened the permissions of ")]


class HelperTests(unittest.TestCase):
    def setUp(self):
        umask(self, 0o022)
        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(self.folder)

    def path(self, *names):
        return os.path.join(self.folder, *names)

    def test_new_file_is_private(self):
        with capturedLogs() as events:
            private_file(self.path("db"))
        self.assertEqual(mode(self.path("db")), 0o600)
        self.assertEqual(os.path.getsize(self.path("db")), 0)
        self.assertEqual(tightened(events), [])

    def test_new_file_is_0600_whatever_the_umask(self):
        for mask in (0o000, 0o077, 0o277):
            os.umask(mask)
            private_file(self.path(f"db{mask:o}"))
            self.assertEqual(mode(self.path(f"db{mask:o}")), 0o600, oct(mask))

    def test_existing_file_is_tightened_and_kept(self):
        with open(self.path("db"), "wb") as f:
            f.write(b"content")
        os.chmod(self.path("db"), 0o644)
        with capturedLogs() as events:
            private_file(self.path("db"))
        self.assertEqual(mode(self.path("db")), 0o600)
        with open(self.path("db"), "rb") as f:
            self.assertEqual(f.read(), b"content")
        self.assertEqual(tightened(events), [(self.path("db"), "0644", "0600")])
        self.assertEqual(
            formatEvent(events[-1]),
            f"tightened the permissions of {self.path('db')} from 0644 to 0600: "
            "only mailgw's user may read what it holds")

    def test_private_file_is_left_alone(self):
        private_file(self.path("db"))
        os.chmod(self.path("db"), 0o400)
        with capturedLogs() as events:
            private_file(self.path("db"))
        self.assertEqual(mode(self.path("db")), 0o400)
        self.assertEqual(tightened(events), [])

    def test_the_owners_permissions_are_kept(self):
        open(self.path("f"), "wb").close()
        os.chmod(self.path("f"), 0o757)
        self.assertTrue(tighten(self.path("f")))
        self.assertEqual(mode(self.path("f")), 0o700)
        self.assertFalse(tighten(self.path("f")))

    def test_missing_file_is_not_tightened(self):
        with capturedLogs() as events:
            self.assertFalse(tighten(self.path("none")))
        self.assertEqual(tightened(events), [])

    def test_link_to_a_file_not_there_yet(self):
        os.symlink(self.path("target"), self.path("link"))
        private_file(self.path("link"))
        self.assertEqual(mode(self.path("target")), 0o600)

    def test_new_directory_and_its_parents(self):
        with capturedLogs() as events:
            private_directory(self.path("var", "spool"))
        self.assertEqual(mode(self.path("var", "spool")), 0o700)
        self.assertEqual(mode(self.path("var")), 0o755)  # holds nothing of its own
        self.assertEqual(tightened(events), [])

    def test_new_directory_is_0700_whatever_the_umask(self):
        os.umask(0o277)
        private_directory(self.path("spool"))
        self.assertEqual(mode(self.path("spool")), 0o700)

    def test_existing_directory_is_tightened(self):
        os.mkdir(self.path("spool"), 0o755)
        with capturedLogs() as events:
            private_directory(self.path("spool"))
        self.assertEqual(mode(self.path("spool")), 0o700)
        self.assertEqual(tightened(events), [(self.path("spool"), "0755", "0700")])
        with capturedLogs() as events:
            private_directory(self.path("spool"))
        self.assertEqual(tightened(events), [])

    def test_a_file_is_not_a_directory(self):
        open(self.path("spool"), "wb").close()
        self.assertRaises(FileExistsError, private_directory, self.path("spool"))


class SQLiteFilesTests(unittest.TestCase):
    """The database of a new store, and of one left open by an earlier run."""

    def setUp(self):
        umask(self, 0o022)
        self.folder = os.path.abspath(self.mktemp())

    @defer.inlineCallbacks
    def started(self, path):
        store = SQLiteStore(path, reactor)
        with capturedLogs() as events:
            d = store.start()
        yield d
        self.addCleanup(store.close)
        yield store.upgrade()  # a write: the -wal file holds it until checkpointed
        return store, events

    @defer.inlineCallbacks
    def test_new_database_and_its_companions_are_private(self):
        path = os.path.join(self.folder, "data", "mailgw.sqlite3")
        _, events = yield self.started(path)
        for suffix in ("", "-wal", "-shm"):
            self.assertEqual(mode(path + suffix), 0o600, suffix)
        self.assertEqual(mode(os.path.dirname(path)), 0o700)  # created by mailgw
        self.assertEqual(tightened(events), [])

    @defer.inlineCallbacks
    def test_an_existing_folder_is_left_alone(self):
        os.makedirs(self.folder, mode=0o755)
        _, events = yield self.started(os.path.join(self.folder, "mailgw.sqlite3"))
        self.assertEqual(mode(self.folder), 0o755)
        self.assertEqual(tightened(events), [])

    @defer.inlineCallbacks
    def test_existing_files_are_tightened(self):
        os.makedirs(self.folder)
        path = os.path.join(self.folder, "mailgw.sqlite3")
        # an earlier mailgw, still open: SQLite made all three 0644
        earlier = sqlite3.connect(path)
        self.addCleanup(earlier.close)
        earlier.execute("PRAGMA journal_mode = WAL")
        earlier.execute("CREATE TABLE earlier (x)")
        earlier.commit()
        for suffix in ("", "-wal", "-shm"):
            self.assertEqual(mode(path + suffix), 0o644, suffix)
        _, events = yield self.started(path)
        for suffix in ("", "-wal", "-shm"):
            self.assertEqual(mode(path + suffix), 0o600, suffix)
        self.assertEqual(tightened(events), [(path + suffix, "0644", "0600")
                                             for suffix in ("", "-wal", "-shm")])
        self.assertTrue(all(e["log_namespace"] == "mailgw.store.sqlite" for e in events
                            if "path" in e))

    def test_an_unusable_path_fails_at_start(self):
        os.makedirs(self.folder)
        open(os.path.join(self.folder, "file"), "wb").close()
        store = SQLiteStore(os.path.join(self.folder, "file", "mailgw.sqlite3"), reactor)
        self.failureResultOf(store.start(), StoreUnavailable)


class SpoolTests(unittest.TestCase):
    """The gateway's spool directory, where bodies wait during DATA."""

    def setUp(self):
        umask(self, 0o022)
        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(self.folder)

    @defer.inlineCallbacks
    def gateway(self):
        from mailgw.config import Config, DatabaseConfig, MetricsConfig, RelayConfig
        from mailgw.service import GatewayService
        config = Config(
            hostname="mx.mailgw.test", spool_directory=os.path.join(self.folder, "spool"),
            database=DatabaseConfig(url="sqlite:" + os.path.join(self.folder, "db.sqlite3")),
            metrics=MetricsConfig(endpoint=""), relay=RelayConfig(enabled=False))
        gateway = GatewayService(config, reactor)  # no listener, no relay
        # The spool is made at start, as the user twistd may have switched to.
        with capturedLogs() as events:
            gateway.startService()
        yield gateway.ready
        yield gateway.stopService()
        return config.spool_directory, events

    @defer.inlineCallbacks
    def test_new_spool_is_private(self):
        spool, events = yield self.gateway()
        self.assertEqual(mode(spool), 0o700)
        self.assertEqual(tightened(events), [])

    @defer.inlineCallbacks
    def test_existing_spool_is_tightened(self):
        os.mkdir(os.path.join(self.folder, "spool"), 0o755)
        spool, events = yield self.gateway()
        self.assertEqual(mode(spool), 0o700)
        self.assertEqual(tightened(events), [(spool, "0755", "0700")])
