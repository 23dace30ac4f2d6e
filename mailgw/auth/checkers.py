"""Credential checkers: each turns presented credentials into an L{Identity}
(the credential and its server) or fails with C{UnauthorizedLogin}.

Keys and digests are compared in constant time, and an unknown server costs
the same HMAC work as a known one, so timing tells an attacker nothing about
which part was wrong.
"""
from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.error import UnauthorizedLogin
from zope.interface import implementer

from mailgw.auth.credentials import (
    IAPIKey, IClientAddress, ICramMD5Credentials, IKeyCredentials,
)
from mailgw.model import Credential, Server


@dataclass(frozen=True)
class Identity:
    """Who a session acts for: the avatar id the realm receives."""
    credential: Credential
    server: Server
    #: "PLAIN", "LOGIN", "CRAM-MD5", "IP" or "API"
    mechanism: str

    @property
    def by_auth(self) -> bool:
        return self.mechanism != "IP"


def _found(result, mechanism):
    if result is None:
        raise UnauthorizedLogin()
    credential, server = result
    return Identity(credential, server, mechanism)


@implementer(ICredentialsChecker)
class KeyChecker:
    """PLAIN and LOGIN: the password is an C{smtp} credential's key."""
    credentialInterfaces = (IKeyCredentials,)

    def __init__(self, directory, credential_type: str = "smtp"):
        self._directory = directory
        self._type = credential_type

    def requestAvatarId(self, credentials):
        d = self._directory.credential_by_key(credentials.key or "", self._type)
        return d.addCallback(_found, credentials.mechanism)


@implementer(ICredentialsChecker)
class APIKeyChecker(KeyChecker):
    """The HTTP API: C{X-Server-API-Key} is an C{api} credential's key."""
    credentialInterfaces = (IAPIKey,)

    def __init__(self, directory):
        super().__init__(directory, "api")


def cram_md5_digest(key: str, challenge: bytes) -> str:
    return hmac.new(key.encode("utf-8"), challenge, hashlib.md5).hexdigest()


@implementer(ICredentialsChecker)
class CramMD5Checker:
    """CRAM-MD5: the digest is compared with every smtp credential of the
    named server (all of them, so the time does not tell which matched)."""
    credentialInterfaces = (ICramMD5Credentials,)

    def __init__(self, directory):
        self._directory = directory

    def requestAvatarId(self, credentials):
        d = self._directory.credentials_of_server(
            credentials.organization, credentials.server, "smtp")
        return d.addCallback(self._match, credentials)

    @staticmethod
    def _match(found, credentials):
        server, candidates = found if found is not None else (None, [])
        given = credentials.digest.encode("ascii", "replace")
        match = None
        for credential in candidates or [None]:
            key = credential.key if credential is not None else "\0unknown"
            expected = cram_md5_digest(key, credentials.challenge).encode("ascii")
            if hmac.compare_digest(expected, given) and credential is not None:
                match = credential
        if match is None:
            raise UnauthorizedLogin()
        return Identity(match, server, "CRAM-MD5")


@implementer(ICredentialsChecker)
class ClientAddressChecker:
    """smtp-ip credentials: the most specific network holding the address."""
    credentialInterfaces = (IClientAddress,)

    def __init__(self, directory):
        self._directory = directory

    def requestAvatarId(self, credentials):
        d = self._directory.credential_for_address(credentials.address)
        return d.addCallback(_found, "IP")
