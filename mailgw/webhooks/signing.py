"""The key that signs webhook requests, and the signatures, as Postal makes
them (docs/webhooks.md):

  - C{X-Postal-Signature}: RSASSA-PKCS1-v1_5 with SHA-1 over the body, base64;
  - C{X-Postal-Signature-256}: the same with SHA-256 (RFC 8017 section 8.2);
  - C{X-Postal-Signature-KID}: which key signed, the hex SHA-256 of the public
    key's PKCS#1 DER encoding (what Postal's JWK library calls its key
    digest), so that a receiver can tell a new key from the old one.

One key serves the whole platform; it is kept in the store, so that every
node that shares a database signs with the same key. It is generated once
(at the first start, or by C{mailgw webhook key}); its private half is never
printed, logged or shown in a repr.
"""
from __future__ import annotations

import base64
import hashlib

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

#: RSA modulus bits of a new key
KEY_BITS = 2048


def generate_private_key() -> str:
    """A new signing key, PKCS#8 PEM text. Takes tens of milliseconds: not
    on the reactor thread."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode("ascii")


class RequestSigner:
    """Signs request bodies with one RSA key; C{repr} shows only its KID."""

    def __init__(self, private_pem: str):
        self._key = serialization.load_pem_private_key(private_pem.encode("ascii"),
                                                       password=None)
        if not isinstance(self._key, rsa.RSAPrivateKey):
            raise ValueError("the webhook signing key is not an RSA key")
        public = self._key.public_key()
        self.public_pem = public.public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")
        self.kid = hashlib.sha256(public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.PKCS1)).hexdigest()

    def __repr__(self) -> str:
        return f"<RequestSigner kid={self.kid}>"

    def _sign(self, body: bytes, algorithm) -> str:
        return base64.b64encode(self._key.sign(body, padding.PKCS1v15(), algorithm)).decode()

    def headers(self, body: bytes) -> dict[str, str]:
        """The signature headers of a request whose body is C{body}."""
        return {"X-Postal-Signature-KID": self.kid,
                "X-Postal-Signature": self._sign(body, hashes.SHA1()),
                "X-Postal-Signature-256": self._sign(body, hashes.SHA256())}


def verify(public_pem: str | bytes, body: bytes, signature: str, sha256: bool = True) -> bool:
    """Whether C{signature} (base64) is the signature of C{body} by the key
    C{public_pem}: what a receiver does (docs/webhooks.md has it standalone).
    """
    from cryptography.exceptions import InvalidSignature
    if isinstance(public_pem, str):
        public_pem = public_pem.encode("ascii")
    key = serialization.load_pem_public_key(public_pem)
    try:
        key.verify(base64.b64decode(signature), body, padding.PKCS1v15(),
                   hashes.SHA256() if sha256 else hashes.SHA1())
    except (InvalidSignature, ValueError):
        return False
    return True
