"""What a client presents to authenticate: the SASL mechanisms' challenge and
response objects (PLAIN, LOGIN, CRAM-MD5) and the client-address credential.

Each SASL object follows Twisted's C{IChallengeResponse} (C{getChallenge},
C{setResponse}, C{moreChallenges}) and is itself the credentials handed to the
portal. Responses arrive already base64-decoded. No repr shows a secret.
"""
from __future__ import annotations

import secrets

from twisted.cred.credentials import ICredentials
from zope.interface import Attribute, implementer

from twisted.mail.interfaces import IChallengeResponse


class MalformedResponse(Exception):
    """The decoded response does not have the mechanism's shape."""


class IKeyCredentials(ICredentials):
    """A credential key given as a password (PLAIN and LOGIN)."""
    mechanism = Attribute("'PLAIN' or 'LOGIN'")
    key = Attribute("the key (str)")
    user = Attribute("the user name the client gave (str), for log lines only")


class ICramMD5Credentials(ICredentials):
    """A CRAM-MD5 answer naming a server."""
    mechanism = Attribute("'CRAM-MD5'")
    organization = Attribute("organization permalink (str)")
    server = Attribute("server permalink (str)")
    challenge = Attribute("the challenge sent (bytes)")
    digest = Attribute("the lower-case hex digest the client sent (str)")


class IAPIKey(ICredentials):
    """An C{api} credential's key, from the HTTP API's C{X-Server-API-Key}."""
    key = Attribute("the key (str)")


class IClientAddress(ICredentials):
    """The address a connection comes from, for smtp-ip credentials."""
    address = Attribute("IPv4 or IPv6 address (str)")


def _user(raw: bytes) -> str:
    # Only logged (made printable there); any bytes will do.
    return raw.decode("utf-8", "replace")


def _text(raw: bytes) -> str:
    # A key or user name that is not UTF-8 can match nothing: it is a
    # malformed response (501/535, counted as a failure), not an internal error.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedResponse("not UTF-8") from None


@implementer(IChallengeResponse, IKeyCredentials)
class PlainCredentials:
    """PLAIN (RFC 4616): C{authzid NUL authcid NUL password}; the password is the key."""

    mechanism = "PLAIN"

    def __init__(self):
        self.key = self.user = None

    def getChallenge(self) -> bytes:
        return b""

    def setResponse(self, response: bytes) -> None:
        parts = response.split(b"\0")
        if len(parts) != 3:
            raise MalformedResponse("PLAIN response needs authzid NUL authcid NUL password")
        self.user = _user(parts[1])
        self.key = _text(parts[2])

    def moreChallenges(self) -> bool:
        return self.key is None

    def __repr__(self):
        return "<PlainCredentials>"


@implementer(IChallengeResponse, IKeyCredentials)
class LoginCredentials:
    """LOGIN: prompts C{Username:} then C{Password:}; the user name is ignored."""
    mechanism = "LOGIN"
    _prompts = (b"Username:", b"Password:")

    def __init__(self):
        self._answers = []
        self.key = self.user = None

    def getChallenge(self) -> bytes:
        return self._prompts[len(self._answers)]

    def setResponse(self, response: bytes) -> None:
        self._answers.append(response)
        if len(self._answers) == 1:
            self.user = _user(response)
        if len(self._answers) == 2:
            self.key = _text(self._answers[1])

    def moreChallenges(self) -> bool:
        return len(self._answers) < 2

    def __repr__(self):
        return "<LoginCredentials>"


@implementer(IChallengeResponse, ICramMD5Credentials)
class CramMD5Credentials:
    """CRAM-MD5 (RFC 2195): C{org/server} or C{org_server} and an HMAC-MD5 digest."""

    mechanism = "CRAM-MD5"

    def __init__(self, hostname: str):
        self.challenge = f"<{secrets.token_hex(16)}@{hostname}>".encode("ascii")
        self.organization = self.server = self.digest = self.user = None
        self._answered = False

    def getChallenge(self) -> bytes:
        return self.challenge

    def setResponse(self, response: bytes) -> None:
        self._answered = True
        self.user = _user(response.rpartition(b" ")[0])
        user, space, digest = _text(response).rpartition(" ")
        if not space or not user or not digest:
            raise MalformedResponse("CRAM-MD5 response needs 'user digest'")
        # org/server or org_server: permalinks contain neither separator.
        cut = min((i for i in (user.find("/"), user.find("_")) if i >= 0), default=-1)
        if cut <= 0 or cut == len(user) - 1:
            raise MalformedResponse("CRAM-MD5 user must be org/server or org_server")
        self.organization, self.server = user[:cut], user[cut + 1:]
        self.digest = digest.lower()

    def moreChallenges(self) -> bool:
        return not self._answered

    def __repr__(self):
        return f"<CramMD5Credentials {self.organization}/{self.server}>"


@implementer(IClientAddress)
class ClientAddress:
    """The address an SMTP connection comes from (for C{smtp-ip} credentials)."""

    def __init__(self, address: str):
        self.address = address

    def __repr__(self):
        return f"<ClientAddress {self.address}>"


@implementer(IAPIKey)
class APIKey:
    """The key an HTTP API request presents."""

    mechanism = "API"

    def __init__(self, key: str):
        self.key = key
        self.user = None

    def __repr__(self):
        return "<APIKey>"
