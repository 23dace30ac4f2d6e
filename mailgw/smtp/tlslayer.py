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

L{DirectTLSProtocol} is Twisted's L{TLSMemoryBIOProtocol} with three changes:

  - each write is encrypted and its records handed on at once;
  - records go to the socket with one C{send} when nothing waits in the
    connection's buffer, instead of a C{startWriting}, a turn of the reactor,
    a C{send} and a C{stopWriting} (two C{epoll_ctl} calls) per reply;
  - it asks the memory BIOs how many bytes they hold before reading them,
    where Twisted reads until pyOpenSSL raises C{WantReadError}: two raised
    and caught exceptions per read from the socket.

L{start_tls} starts it on a connection after STARTTLS (RFC 3207) with a
stand-in whose methods are spelled out; L{DirectTLSFactory} wraps an
implicit-TLS listener's factory (RFC 8314).
"""
from __future__ import annotations

from OpenSSL import SSL
from twisted.internet import tcp
from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import ISSLTransport
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import directlyProvides


def _memory_bio_length():
    """A function giving the bytes a pyOpenSSL connection's memory BIO
    holds, or C{None} where this pyOpenSSL does not expose what it needs
    (its OpenSSL binding and the connection's two BIOs are not public API):
    the layer then reads until C{WantReadError}, as Twisted does."""
    lib, ffi = getattr(SSL, "_lib", None), getattr(SSL, "_ffi", None)
    get = getattr(lib, "BIO_get_mem_data", None)
    if get is None or ffi is None:
        return None
    null = ffi.NULL

    def length(bio) -> int:
        return get(bio, null)
    return length


_bio_length = _memory_bio_length()


def write_now(connection, data: bytes) -> None:
    """Write C{data} on a TCP C{connection}: with one C{send} at once when
    nothing is waiting in its buffer, else (and for what the socket did not
    take) through its buffer, as C{FileDescriptor.write} does.

    It reads C{FileDescriptor}'s buffer attributes (C{dataBuffer},
    C{_tempDataLen}, C{_writeDisconnected}), which Twisted does not
    document; C{tests/smtp/test_tlslayer.py} checks, over real sockets, that
    replies leave nothing in that buffer and that large writes arrive whole."""
    if (data and connection.connected and not connection._writeDisconnected
            and not connection.dataBuffer and not connection._tempDataLen):
        sent = connection.writeSomeData(data)
        if isinstance(sent, int) and sent > 0:
            if sent == len(data):
                return
            data = data[sent:]
    FileDescriptor.write(connection, data)


class DirectTLSProtocol(TLSMemoryBIOProtocol):
    """TLS over memory BIOs that sends each write's records at once, without
    reading a BIO that is empty."""

    _eof = False

    def _flushSendBIO(self):
        connection = self._tlsConnection
        if _bio_length is None or not hasattr(connection, "_from_ssl"):
            return super()._flushSendBIO()
        waiting = _bio_length(connection._from_ssl)
        if waiting <= 0:
            return
        data = connection.bio_read(waiting)
        transport = self.transport
        if isinstance(transport, _Plain):
            write_now(transport._connection, data)
        elif isinstance(transport, tcp.Connection):  # implicit TLS: plain TCP below
            write_now(transport, data)
        else:
            transport.write(data)

    def _flushReceiveBIO(self):
        connection = self._tlsConnection
        if (_bio_length is None or self._eof or not hasattr(connection, "_into_ssl")):
            return super()._flushReceiveBIO()
        into = connection._into_ssl
        while not self._lostTLSConnection:
            # Nothing received that is not decrypted yet, nothing decrypted
            # that is not read: recv would only raise WantReadError.
            if _bio_length(into) <= 0 and connection.pending() <= 0:
                break
            try:
                data = connection.recv(2**15)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                self._shutdownTLS()
                self._tlsShutdownFinished(None)
            except SSL.Error:
                self._tlsShutdownFinished(Failure())
            else:
                if not self._aborted:
                    ProtocolWrapper.dataReceived(self, data)
        self._flushSendBIO()

    def connectionLost(self, reason):
        # After the end of the stream, recv reports how the peer ended (a
        # close alert or not): read the way Twisted does.
        self._eof = True
        super().connectionLost(reason)


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
        write_now(self._connection, data)

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
