"""The server's TLS settings: certificate chain and key from PEM files, a
minimum version and a cipher string, built with cryptography objects (no
pyOpenSSL deprecation warnings).

L{TLSOptions} is the one TLS connection creator of every listener; it checks
the files' modification times (on SIGHUP, on a timer, or when asked) and swaps
in new options, so a renewed certificate is served to the next connection
without a restart and without dropping any.
"""
from __future__ import annotations

import os

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

log = Logger()

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


class TLSConfigError(Exception):
    """The certificate or key cannot be used; the message names the file."""


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSConfigError(f"cannot read {path}: {e.strerror}") from None


def load_certificate_options(certificate: str, private_key: str,
                             min_version: str = "1.2", ciphers: str = ""):
    """C{CertificateOptions} for the PEM chain (leaf first) and key."""
    try:
        chain = x509.load_pem_x509_certificates(_read(certificate))
    except ValueError:
        raise TLSConfigError(f"{certificate}: no PEM certificate found") from None
    try:
        key = serialization.load_pem_private_key(_read(private_key), password=None)
    except (ValueError, TypeError):
        raise TLSConfigError(f"{private_key}: not an unencrypted PEM private key") from None
    kwargs = {"raiseMinimumTo": _VERSIONS[min_version]}
    if ciphers:
        kwargs["acceptableCiphers"] = ssl.AcceptableCiphers.fromOpenSSLCipherString(ciphers)
    return ssl.CertificateOptions(privateKey=key, certificate=chain[0],
                                  extraCertChain=chain[1:], **kwargs)


@implementer(IOpenSSLServerConnectionCreator)
class TLSOptions:
    def __init__(self, certificate: str, private_key: str, min_version: str = "1.2",
                 ciphers: str = ""):
        self._files = (certificate, private_key)
        self._min_version = min_version
        self._ciphers = ciphers
        self._options = load_certificate_options(certificate, private_key,
                                                 min_version, ciphers)
        self._stamp = self._mtimes()

    @classmethod
    def from_config(cls, tls_config):
        return cls(tls_config.certificate, tls_config.private_key,
                   tls_config.min_version, tls_config.ciphers)

    def _mtimes(self):
        return tuple(os.stat(p).st_mtime_ns for p in self._files)

    def reload_if_changed(self) -> bool:
        """Re-read the files when they changed; keep the old ones on error."""
        try:
            stamp = self._mtimes()
            if stamp == self._stamp:
                return False
            options = load_certificate_options(*self._files, self._min_version,
                                               self._ciphers)
        except (OSError, TLSConfigError) as e:
            log.error("TLS certificate not reloaded: {why}", why=str(e))
            return False
        self._options, self._stamp = options, stamp
        log.info("TLS certificate reloaded from {path}", path=self._files[0])
        return True

    def server_options(self):
        """What STARTTLS starts with: the current options."""
        return self._options

    def serverConnectionForTLS(self, tlsProtocol):
        return self._options.serverConnectionForTLS(tlsProtocol)
