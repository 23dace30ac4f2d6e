"""The TLS layer of the SMTP listeners: Twisted's memory-BIO TLS protocol
(pyOpenSSL), without the two costs its defaults add to every reply and to
every connection.

Twisted's C{startTLS} and L{TLSMemoryBIOFactory} use C{BufferingTLSTransport},
which holds each write for the next reactor iteration (a delayed call per
write) to join it with the writes after it. The gateway writes each reply
whole, once per command: nothing is joined, and every reply pays for a delayed
call and an extra turn of the reactor. C{startTLS} also hands the TLS layer a
stand-in for the connection that forwards every attribute, the interface
declarations included, so the layer copies the connection's interfaces onto
itself one by one for every connection.

L{DirectTLSProtocol} is Twisted's L{TLSMemoryBIOProtocol} itself: each write is
encrypted and handed to the socket at once (the socket's own buffer still
joins what one reactor iteration writes into one C{send}). L{start_tls}
starts it on a connection after STARTTLS (RFC 3207) with a stand-in whose
methods are spelled out; L{DirectTLSFactory} wraps an implicit-TLS listener's
factory (RFC 8314).
"""
from __future__ import annotations

from twisted.internet import tcp
from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import ISSLTransport
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from zope.interface import directlyProvides


class DirectTLSProtocol(TLSMemoryBIOProtocol):
    """TLS over memory BIOs that sends each write's records at once (no
    write aggregation through a delayed call)."""


class DirectTLSFactory(TLSMemoryBIOFactory):
    """Wraps a factory's protocols in L{DirectTLSProtocol} (implicit TLS)."""

    protocol = DirectTLSProtocol


class _Plain:
    """The TCP connection under a TLS layer started by L{start_tls}: what the
    layer writes goes to the socket as it is (the connection's own C{write}
    would hand it back to the layer)."""

    __slots__ = ("_connection",)

    def __init__(self, connection):
        self._connection = connection

    def write(self, data: bytes) -> None:
        FileDescriptor.write(self._connection, data)

    def writeSequence(self, data) -> None:
        FileDescriptor.writeSequence(self._connection, data)

    def loseConnection(self) -> None:
        FileDescriptor.loseConnection(self._connection)

    def abortConnection(self) -> None:
        self._connection.abortConnection()

    def registerProducer(self, producer, streaming) -> None:
        FileDescriptor.registerProducer(self._connection, producer, streaming)

    def unregisterProducer(self) -> None:
        FileDescriptor.unregisterProducer(self._connection)

    def stopConsuming(self) -> None:
        FileDescriptor.stopConsuming(self._connection)

    def pauseProducing(self) -> None:
        self._connection.pauseProducing()

    def resumeProducing(self) -> None:
        self._connection.resumeProducing()

    def stopProducing(self) -> None:
        self._connection.stopProducing()

    def getPeer(self):
        return self._connection.getPeer()

    def getHost(self):
        return self._connection.getHost()


def start_tls(transport, creator) -> None:
    """Start server-side TLS under the protocol of C{transport}, which stays
    as it is: with L{DirectTLSProtocol} when C{transport} is Twisted's TCP
    connection itself, else through the transport's own C{startTLS} (a
    wrapper such as the PROXY protocol's, which passes it down). The protocol
    hears C{handshakeCompleted} when it provides C{IHandshakeListener}.

    @param transport: an C{ITLSTransport} that has not started TLS.
    @param creator: an C{IOpenSSLServerConnectionCreator}.
    """
    if not isinstance(transport, tcp.Connection) or transport.TLS:
        transport.startTLS(creator)
        return
    connection = transport
    producer, streaming = connection.producer, connection.streamingProducer
    if producer is not None:
        connection.unregisterProducer()
    factory = DirectTLSFactory(creator, False, None)
    layer = factory.protocol(factory, connection.protocol, False)
    connection.protocol = layer
    connection.getHandle = layer.getHandle
    connection.getPeerCertificate = layer.getPeerCertificate
    directlyProvides(connection, ISSLTransport)
    connection.TLS = True  # the connection's writes now go through the layer
    layer.makeConnection(_Plain(connection))
    if producer is not None:
        connection.registerProducer(producer, streaming)
