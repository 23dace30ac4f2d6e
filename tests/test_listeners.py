"""Listening sockets shared with worker processes (C{[server] workers}):
an adopted copy that stops leaves the socket listening for the others, and
a shared listener only pauses until it is closed."""
from __future__ import annotations

import os
import socket

from twisted.internet import defer, endpoints, protocol, reactor
from twisted.trial import unittest

from mailgw.listeners import AdoptedListenerService, ListenerService, address_family


class Accepted(protocol.Protocol):
    def connectionMade(self):
        self.factory.made(self)


class Accepting(protocol.Factory):
    """Fires C{accepted} with the first connection's protocol, once connected."""

    protocol = Accepted

    def __init__(self):
        self.accepted = defer.Deferred()
        self.built = []

    def made(self, built):
        self.built.append(built)
        if not self.accepted.called:
            self.accepted.callback(built)

    def close_all(self):
        for built in self.built:
            built.transport.abortConnection()


class SharedSocketTests(unittest.TestCase):
    def listener(self, factory) -> ListenerService:
        listening = ListenerService(
            endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), factory,
            "tcp:0:interface=127.0.0.1", "listeners[0].endpoint",
            "listening on {endpoint} at {host} port {port}", shared=True)
        listening.privilegedStartService()
        listening.startService()
        self.addCleanup(listening.close)
        self.addCleanup(factory.close_all)
        return listening

    def connect(self, port: int) -> socket.socket:
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.addCleanup(client.close)
        return client

    @defer.inlineCallbacks
    def test_an_adopted_copy_that_stops_leaves_the_socket_listening(self):
        first = Accepting()
        shared = self.listener(first)
        fd, family = shared.inheritable()
        self.assertEqual(family, socket.AF_INET)
        self.assertEqual(address_family(shared.port.getHost()), socket.AF_INET)
        shared.port.pauseProducing()  # only the adopted copy accepts for now
        second = Accepting()
        self.addCleanup(second.close_all)
        adopted = AdoptedListenerService(reactor, os.dup(fd), family, second,
                                         "tcp:0:interface=127.0.0.1",
                                         "accepting on {endpoint} at {host} port {port}")
        adopted.privilegedStartService()
        adopted.startService()
        port = shared.port.getHost().port
        self.assertEqual(adopted.port.getHost().port, port)
        self.connect(port)
        yield second.accepted
        yield adopted.stopService()
        shared.port.resumeProducing()
        self.connect(port)  # a worker gone: the socket still listens here
        yield first.accepted

    @defer.inlineCallbacks
    def test_a_shared_listener_stops_accepting_then_closes(self):
        shared = self.listener(Accepting())
        port = shared.port.getHost().port
        self.assertIsNone(shared.stopService())
        self.assertIsNotNone(shared.port)  # still bound for the workers
        yield shared.close()
        self.assertIsNone(shared.port)
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
