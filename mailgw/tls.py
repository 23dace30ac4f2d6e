"""The server's TLS settings: certificate chain and key from PEM files, a
minimum version, cipher suites and key exchange groups, built with
cryptography objects (no pyOpenSSL deprecation warnings).

The defaults are the "intermediate" profile of Mozilla's server-side TLS
guidelines (U{https://wiki.mozilla.org/Security/Server_Side_TLS}): TLS 1.2
with ECDHE key exchange and AEAD ciphers only, and TLS 1.3. ALPN offers are
ignored (RFC 7301 section 3.2), so clients that send one (C{openssl s_client
-alpn}, HTTP clients of the HTTPS API) are served like any other.

L{TLSOptions} is the one TLS connection creator of every listener; it checks
the files' modification times (on SIGHUP, on a timer, or when asked) and swaps
in new options, so a renewed certificate is served to the next connection
without a restart and without dropping any. A certificate that does not match
its key is refused at start and at reload; one that expires soon is warned
about.
"""
from __future__ import annotations

import datetime
import os

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

log = Logger()

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}

#: The TLS 1.2 cipher suites of Mozilla's "intermediate" profile, in its
#: order, without the DHE ones: those need DH parameters of our own, and
#: every client that has DHE with an AEAD cipher has ECDHE too.
MOZILLA_INTERMEDIATE_CIPHERS = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305"))

#: The groups of Mozilla's "intermediate" profile, most preferred first (the
#: default of C{tls.curves}).
DEFAULT_CURVES = ("X25519", "P-256", "P-384")

#: The groups C{Context.set_tmp_ecdh} can select, by the names OpenSSL
#: accepts for them.
_EC_CURVES = {
    "p-256": ec.SECP256R1, "prime256v1": ec.SECP256R1, "secp256r1": ec.SECP256R1,
    "p-384": ec.SECP384R1, "secp384r1": ec.SECP384R1,
    "p-521": ec.SECP521R1, "secp521r1": ec.SECP521R1,
}
#: Groups OpenSSL knows that pyOpenSSL offers no way to select.
_OTHER_GROUPS = frozenset({"x25519", "x448"})


class TLSConfigError(Exception):
    """The certificate, the key or a TLS setting cannot be used; the message
    names the file or the setting, in one line."""


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSConfigError(f"cannot read {path}: {e.strerror}") from None


def _public_key_bytes(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def ecdh_curve(curves) -> ec.EllipticCurve | None:
    """The key exchange group to set for C{tls.curves}, or C{None} to keep
    OpenSSL's own list.

    pyOpenSSL (up to 26.4 at least) has no binding of
    C{SSL_CTX_set1_groups_list}, only C{Context.set_tmp_ecdh}, which
    restricts the context to one NIST curve and cannot name X25519. A list
    with X25519 (the default) therefore keeps OpenSSL's groups, X25519 first:
    restricting them to P-256 would make every TLS 1.3 client that sent an
    X25519 key share, which is nearly all of them, pay a HelloRetryRequest
    round trip (RFC 8446 section 4.1.4). OpenSSL's list also holds X448 and
    P-521, both strong. A list of NIST curves only restricts the server to
    its first one.

    @param curves: group names, most preferred first.
    @return: the curve for C{set_tmp_ecdh}, or C{None}.
    @raise TLSConfigError: a name is unknown, or none can be set.
    """
    unknown = [name for name in curves
               if name.lower() not in _EC_CURVES and name.lower() not in _OTHER_GROUPS]
    if unknown:
        raise TLSConfigError(f"tls.curves: unknown key exchange group {unknown[0]!r}")
    if any(name.lower() in _OTHER_GROUPS for name in curves):
        return None
    for name in curves:
        if name.lower() in _EC_CURVES:
            return _EC_CURVES[name.lower()]()
    raise TLSConfigError("tls.curves: needs one of P-256, P-384 or P-521 (X25519 and "
                         "X448 cannot be selected with this pyOpenSSL)")


def _ignore_alpn(connection, offered):
    """RFC 7301 section 3.2: a server that supports none of the client's
    protocols may ignore the extension. SMTP has no ALPN protocol id of its
    own, and our HTTP API speaks HTTP/1.1 also without ALPN, so every offer
    is ignored (Twisted's own callback would abort the handshake with an
    internal_error alert)."""
    return SSL.NO_OVERLAPPING_PROTOCOLS


def _load(certificate: str, private_key: str, min_version: str, ciphers: str,
          curves, contents: tuple[bytes, bytes] | None = None
          ) -> tuple[ssl.CertificateOptions, x509.Certificate, tuple[bytes, bytes]]:
    """Read and check the PEM chain (leaf first) and key, and build the
    options.

    @param contents: the two files' bytes, already read (by twistd's
        process, for a worker); C{None}: read them now.
    @return: C{CertificateOptions} whose context is made and finished, the
        leaf certificate, and the two files' bytes.
    @raise TLSConfigError: a file cannot be read or used, the key does not
        belong to the certificate, or a setting is wrong.
    """
    certificate_pem, key_pem = contents or (_read(certificate), _read(private_key))
    try:
        chain = x509.load_pem_x509_certificates(certificate_pem)
    except ValueError:
        raise TLSConfigError(f"{certificate}: no PEM certificate found") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise TLSConfigError(f"{private_key}: not an unencrypted PEM private key") from None
    if _public_key_bytes(chain[0].public_key()) != _public_key_bytes(key.public_key()):
        # Caught here with both file names, rather than as OpenSSL's
        # "key values mismatch" when the context is made.
        raise TLSConfigError(f"tls.private_key {private_key} does not match "
                             f"tls.certificate {certificate}")
    curve = ecdh_curve(curves)
    acceptable = ssl.AcceptableCiphers.fromOpenSSLCipherString(
        ciphers or MOZILLA_INTERMEDIATE_CIPHERS)
    try:
        options = ssl.CertificateOptions(
            privateKey=key, certificate=chain[0], extraCertChain=chain[1:],
            raiseMinimumTo=_VERSIONS[min_version], acceptableCiphers=acceptable)
    except ValueError:  # no cipher of the string is known to OpenSSL
        raise TLSConfigError(f"tls.ciphers: no usable cipher in {ciphers!r}") from None
    try:
        # The context is made now, once, and finished before any connection
        # uses it (pyOpenSSL refuses changes after that); every connection
        # of these options shares it.
        context = options.getContext()
        context.set_alpn_select_callback(_ignore_alpn)
        if curve is not None:
            context.set_tmp_ecdh(curve)
    except SSL.Error as e:
        raise TLSConfigError(f"tls.certificate {certificate}: cannot be used: {e}") from None
    return options, chain[0], (certificate_pem, key_pem)


def load_certificate_options(certificate: str, private_key: str,
                             min_version: str = "1.2", ciphers: str = "",
                             curves=DEFAULT_CURVES) -> ssl.CertificateOptions:
    """C{CertificateOptions} for the PEM chain (leaf first) and key.

    @param min_version: C{"1.2"} or C{"1.3"}.
    @param ciphers: an OpenSSL cipher string for TLS 1.2; empty means
        L{MOZILLA_INTERMEDIATE_CIPHERS}.
    @param curves: key exchange group names, most preferred first (see
        L{ecdh_curve}).
    @raise TLSConfigError: as L{TLSOptions}.
    """
    return _load(certificate, private_key, min_version, ciphers, curves)[0]


@implementer(IOpenSSLServerConnectionCreator)
class TLSOptions:
    """The TLS connection creator of every listener, serving the current
    certificate and reloading it when its files change."""

    def __init__(self, certificate: str, private_key: str, min_version: str = "1.2",
                 ciphers: str = "", *, curves=DEFAULT_CURVES,
                 expiry_warning_days: int = 14, metrics=None,
                 contents: tuple[bytes, bytes] | None = None):
        """
        @param certificate: the PEM chain, leaf first.
        @param private_key: the leaf's unencrypted PEM key.
        @param min_version: C{"1.2"} or C{"1.3"}.
        @param ciphers: an OpenSSL cipher string for TLS 1.2; empty means
            Mozilla's "intermediate" list.
        @param curves: key exchange group names, most preferred first.
        @param expiry_warning_days: a certificate that expires within this
            many days is warned about, at start and at each reload.
        @param metrics: the gateway's L{mailgw.metrics.Metrics}, whose
            C{tls_certificate_expiry} gauge gets the certificate's notAfter;
            or None.
        @param contents: the certificate's and the key's bytes as twistd's
            process read them (L{pem}), for a worker process, which may not
            be allowed to read the key (C{twistd -u}); later reloads read
            the files. C{None}: read the files now.
        @raise TLSConfigError: the files cannot be used, or a setting is wrong.
        """
        self._files = (certificate, private_key)
        self._settings = (min_version, ciphers, tuple(curves))
        self._warning_days = expiry_warning_days
        self._metrics = metrics
        self._options, leaf, self._pem = _load(certificate, private_key, *self._settings,
                                               contents=contents)
        try:
            self._stamp = self._mtimes()
        except OSError:  # a worker that cannot see them: reloads will say so
            self._stamp = None
        #: the modification times of files that failed to load, not retried
        self._refused = None
        self._check_expiry(leaf)

    @classmethod
    def from_config(cls, tls_config, metrics=None, contents=None):
        """The options of a L{mailgw.config.TLSConfig}.

        @param metrics: as for L{TLSOptions}.
        @param contents: as for L{TLSOptions}.
        """
        return cls(tls_config.certificate, tls_config.private_key,
                   tls_config.min_version, tls_config.ciphers, curves=tls_config.curves,
                   expiry_warning_days=tls_config.expiry_warning_days, metrics=metrics,
                   contents=contents)

    def pem(self) -> tuple[bytes, bytes]:
        """The certificate chain's and the key's bytes now served, for a
        worker process (docs/deployment.md, "Several processes on one
        machine")."""
        return self._pem

    def _mtimes(self):
        return tuple(os.stat(p).st_mtime_ns for p in self._files)

    def _check_expiry(self, leaf: x509.Certificate) -> None:
        """Export the leaf's notAfter, and warn when it is near or past."""
        not_after = leaf.not_valid_after_utc
        if self._metrics is not None:
            self._metrics.tls_certificate_expiry.set(not_after.timestamp())
        left = not_after - datetime.datetime.now(datetime.UTC)
        if left > datetime.timedelta(days=self._warning_days):
            return
        days = round(abs(left) / datetime.timedelta(days=1))
        when = not_after.strftime("%Y-%m-%d %H:%M:%S UTC")
        if left.total_seconds() > 0:
            log.warn("TLS certificate {path} expires in {days} days ({when})",
                     path=self._files[0], days=days, when=when)
        else:
            log.warn("TLS certificate {path} expired {days} days ago ({when})",
                     path=self._files[0], days=days, when=when)

    def reload_if_changed(self) -> bool:
        """Re-read the files when they changed; keep the old ones on error.

        A pair that fails is logged once and not tried again until the files
        change again (a renewal that writes the certificate and the key one
        after the other is picked up once both are written).

        @return: whether new options are served from now on.
        """
        try:
            stamp = self._mtimes()
            if stamp == self._stamp or stamp == self._refused:
                return False
            self._refused = stamp
            options, leaf, pem = _load(*self._files, *self._settings)
        except (OSError, TLSConfigError) as e:
            log.error("TLS certificate not reloaded: {why}", why=str(e))
            return False
        self._options, self._pem, self._stamp, self._refused = options, pem, stamp, None
        log.info("TLS certificate reloaded from {path}", path=self._files[0])
        self._check_expiry(leaf)
        return True

    def server_options(self):
        """What STARTTLS starts with: the current options."""
        return self._options

    def serverConnectionForTLS(self, tlsProtocol):
        """A connection of the current options, for implicit TLS listeners."""
        return self._options.serverConnectionForTLS(tlsProtocol)
