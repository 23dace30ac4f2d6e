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

L{DirectTLSProtocol} is Twisted's L{TLSMemoryBIOProtocol} with four changes:

  - each write is encrypted and its records handed on at once;
  - records go to the socket with one C{send} when nothing waits in the
    connection's buffer, instead of a C{startWriting}, a turn of the reactor,
    a C{send} and a C{stopWriting} (two C{epoll_ctl} calls) per reply;
  - it asks the memory BIOs how many bytes they hold before reading them,
    where Twisted reads until pyOpenSSL raises C{WantReadError}: two raised
    and caught exceptions per read from the socket;
  - once the handshake is over, it reads and writes through OpenSSL's own
    calls (L{_OpenSSLCalls}), leaving pyOpenSSL's wrappers to the handshake
    and to every call that does not succeed.

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


class _OpenSSLCalls:
    """OpenSSL's own read and write calls on a pyOpenSSL connection's
    C{SSL} object and memory BIOs, without pyOpenSSL's wrappers around them
    (a buffer allocated per call, argument checks, and eight comparisons to
    learn that a call succeeded: about a microsecond a call, four calls a
    command). Only success is handled here; anything else is handed to
    pyOpenSSL's own error handling, so it raises what pyOpenSSL would.

    The binding and the connection's C{_ssl}, C{_into_ssl} and C{_from_ssl}
    are not pyOpenSSL's public API: L{direct_calls} returns C{None} where
    they are missing, and the layer then uses pyOpenSSL's methods.
    """

    #: bytes one read takes at most (a TLS record holds 16 kB)
    READ_SIZE = 2**15

    def __init__(self, lib, ffi):
        self.ssl_read, self.ssl_write = lib.SSL_read, lib.SSL_write
        self.bio_read, self.bio_write = lib.BIO_read, lib.BIO_write
        self.ssl_pending, self._get_mem_data = lib.SSL_pending, lib.BIO_get_mem_data
        self._null, self._new, self._buffer_of = ffi.NULL, ffi.new, ffi.buffer
        # the reactor's thread alone runs the layer: one buffer serves all
        self._buffer = ffi.new("char[]", self.READ_SIZE)

    def bio_length(self, bio) -> int:
        """The bytes a memory BIO holds."""
        return self._get_mem_data(bio, self._null)

    def read(self, connection) -> bytes:
        """Decrypted bytes of C{connection} (C{SSL_read}), or what
        pyOpenSSL raises when there are none."""
        buffer = self._buffer
        n = self.ssl_read(connection._ssl, buffer, self.READ_SIZE)
        if n <= 0:
            connection._raise_ssl_error(connection._ssl, n)
            raise SSL.WantReadError()  # an error that names none: as nothing read
        return self._buffer_of(buffer, n)[:]

    def take(self, connection, count: int) -> bytes:
        """The first C{count} bytes (all it holds) of the BIO of records
        to send."""
        buffer = self._buffer if count <= self.READ_SIZE else self._new("char[]", count)
        n = self.bio_read(connection._from_ssl, buffer, count)
        if n <= 0:
            return connection.bio_read(count)
        return self._buffer_of(buffer, n)[:]


def direct_calls() -> _OpenSSLCalls | None:
    """L{_OpenSSLCalls} on pyOpenSSL's binding, or C{None} where this
    pyOpenSSL does not expose what it needs."""
    lib, ffi = getattr(SSL, "_lib", None), getattr(SSL, "_ffi", None)
    names = ("SSL_read", "SSL_write", "BIO_read", "BIO_write", "SSL_pending",
             "BIO_get_mem_data")
    if ffi is None or lib is None or not all(hasattr(lib, name) for name in names):
        return None
    return _OpenSSLCalls(lib, ffi)


_calls = direct_calls()
#: what a pyOpenSSL connection must have for L{_OpenSSLCalls}
_INTERNALS = ("_ssl", "_into_ssl", "_from_ssl", "_raise_ssl_error", "_context")


def _direct_for(connection) -> bool:
    """May L{_OpenSSLCalls} serve C{connection}? Not when this pyOpenSSL
    lacks them, and not for a context with a certificate-verify or OCSP
    callback, whose failures pyOpenSSL's wrappers report after each call.
    (The gateway's own ALPN callback returns a constant: it cannot fail.)"""
    if _calls is None or not all(hasattr(connection, name) for name in _INTERNALS):
        return False
    context = connection._context
    return (getattr(context, "_verify_helper", None) is None
            and getattr(context, "_ocsp_helper", None) is None)


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
    reading a BIO that is empty, through OpenSSL's own calls where it can
    (L{_OpenSSLCalls})."""

    _eof = False
    #: L{_direct_for} this connection: None until first asked
    _direct = None

    def _is_direct(self) -> bool:
        direct = self._direct
        if direct is None:
            direct = self._direct = _direct_for(self._tlsConnection)
        return direct

    def dataReceived(self, data):
        if self._handshakeDone and not self._appSendBuffer and self._is_direct():
            # what Twisted does once the handshake is over, without the wrapper
            connection = self._tlsConnection
            written = _calls.bio_write(connection._into_ssl, data, len(data))
            if written != len(data):  # a memory BIO takes all or fails
                connection.bio_write(data[max(written, 0):])
            self._flushReceiveBIO()
        else:
            super().dataReceived(data)

    def _write(self, data):
        if (type(data) is bytes and 0 < len(data) <= 2**14 and self._handshakeDone
                and not self._lostTLSConnection and self._is_direct()):
            connection = self._tlsConnection
            sent = _calls.ssl_write(connection._ssl, data, len(data))
            if sent == len(data):
                self._flushSendBIO()
                return
            if sent > 0:  # a partial write: the rest as Twisted would
                self._flushSendBIO()
                data = data[sent:]
        # pyOpenSSL's send, Twisted's handling of what it raises
        super()._write(data)

    def _flushSendBIO(self):
        if not self._is_direct():
            return super()._flushSendBIO()
        connection = self._tlsConnection
        waiting = _calls.bio_length(connection._from_ssl)
        if waiting <= 0:
            return
        data = _calls.take(connection, waiting)
        transport = self.transport
        if isinstance(transport, _Plain):
            write_now(transport._connection, data)
        elif isinstance(transport, tcp.Connection):  # implicit TLS: plain TCP below
            write_now(transport, data)
        else:
            transport.write(data)

    def _flushReceiveBIO(self):
        if self._eof or not self._is_direct():
            return super()._flushReceiveBIO()
        connection = self._tlsConnection
        into, ssl = connection._into_ssl, connection._ssl
        while not self._lostTLSConnection:
            # Nothing received that is not decrypted yet, nothing decrypted
            # that is not read: a read would only raise WantReadError.
            if _calls.bio_length(into) <= 0 and _calls.ssl_pending(ssl) <= 0:
                break
            try:
                data = _calls.read(connection)
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
