"""The pipes between twistd's process and a worker
(L{mailgw.workers.channel}), and the worker's watch on its parent
(L{mailgw.workers.child.ParentWatch})."""
from __future__ import annotations

import json
import os
import threading

from twisted.internet import main as reactor_main
from twisted.internet import reactor
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from mailgw.config import parse_config
from mailgw.workers.channel import Handshake, ParentChannel, read_handshake
from mailgw.workers.child import ParentWatch


class ChannelTests(unittest.TestCase):
    def pipe(self):
        read, write = os.pipe()
        self.addCleanup(lambda: [os.close(fd) for fd in (read, write) if _open(fd)])
        return read, write

    def test_handshake_over_a_pipe(self):
        read, write = self.pipe()
        config = parse_config({"hostname": "mx.example", "server": {"workers": 4},
                               "relay": {"password": "secret"}}, source="/etc/m.toml")
        pem = (b"-----BEGIN CERTIFICATE-----\n...\n", b"-----BEGIN PRIVATE KEY-----\n...\n")
        os.write(write, Handshake(config, notify_enqueued=False, tls_pem=pem).encode())
        handshake = read_handshake(read)
        self.assertEqual(handshake.config, config)
        self.assertEqual(handshake.config.source, "/etc/m.toml")
        self.assertFalse(handshake.notify_enqueued)
        self.assertEqual(handshake.tls_pem, pem)
        self.assertNotIn("PRIVATE KEY", repr(handshake))
        self.assertNotIn("secret", repr(handshake))

    def test_no_handshake(self):
        read, write = self.pipe()
        os.close(write)
        self.assertRaises(ValueError, read_handshake, read)

    def test_lines_from_several_threads_stay_whole(self):
        read, write = self.pipe()
        channel = ParentChannel(write)
        logger = Logger(namespace="mailgw.test", observer=channel.observer(reactor))
        chunks = []
        reader = threading.Thread(target=lambda: chunks.extend(
            iter(lambda: os.read(read, 65536), b"")))
        reader.start()

        def log_many(n):
            for i in range(200):
                logger.info("{n} {i} {padding}", n=n, i=i, padding="x" * 3000)
                channel.notice("enqueued")
        threads = [threading.Thread(target=log_many, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        os.close(write)
        reader.join()
        lines = b"".join(chunks).split(b"\n")[:-1]
        records = [json.loads(line) for line in lines]
        self.assertEqual(len(records), 1600)
        self.assertEqual(sum(1 for r in records if r.get("notice") == "enqueued"), 800)
        self.assertEqual(sum(1 for r in records if r.get("namespace") == "mailgw.test"), 800)


class ParentWatchTests(unittest.TestCase):
    def test_end_of_file_means_the_parent_is_gone(self):
        read, write = os.pipe()
        self.addCleanup(os.close, read)
        gone = []
        watch = ParentWatch(read, lambda: gone.append(True))
        verifyObject(IReadDescriptor, watch)
        self.assertIsNone(watch.doRead())  # nothing to read yet
        os.write(write, b"anything")
        self.assertIsNone(watch.doRead())
        os.close(write)
        self.assertIs(watch.doRead(), reactor_main.CONNECTION_DONE)
        watch.connectionLost(None)
        self.assertEqual(gone, [True])


def _open(fd):
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False
