"""DKIM keys: their selectors, their generation and their DNS records.

Pure functions, no I/O: the store keeps the keys, the command line prints the
records, the signer (elsewhere) signs with them. A key is kept as PEM text
(PKCS#8, unencrypted), the form both C{cryptography} and dkimpy read.
"""
from __future__ import annotations

import base64
import secrets
import string

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

#: what a selector is made of after its prefix: lower case, so that it reads
#: the same in any DNS tool (names compare without regard to case anyway)
SELECTOR_ALPHABET = string.ascii_lowercase + string.digits
SELECTOR_PREFIX = "mailgw-"
#: the key algorithms a domain may have: RSA (RFC 6376) and Ed25519 (RFC 8463)
ALGORITHMS = ("rsa", "ed25519")
#: RFC 8301 requires at least 1024 bits and recommends 2048; longer keys make
#: TXT records that some DNS hosting panels refuse
RSA_BITS = 2048
#: the longest character-string of a TXT record (RFC 1035 section 3.3)
TXT_STRING_MAX = 255


def new_selector() -> str:
    """A fresh selector, C{mailgw-} and 6 random lower-case letters or
    digits: new with every key, so that a rotation publishes the new key
    beside the old one (RFC 6376 section 3.1)."""
    return SELECTOR_PREFIX + "".join(secrets.choice(SELECTOR_ALPHABET) for _ in range(6))


def generate_key(algorithm: str = "rsa") -> str:
    """A new private key as unencrypted PKCS#8 PEM text.

    Generating an RSA key takes tens of milliseconds: call this off the
    reactor thread.

    @param algorithm: C{"rsa"} (2048 bits) or C{"ed25519"} (RFC 8463).
    @raise ValueError: another algorithm.
    """
    if algorithm == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    elif algorithm == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(f"unknown DKIM key algorithm {algorithm!r}: use "
                         f"{' or '.join(ALGORITHMS)}")
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode("ascii")


def key_algorithm(private_key_pem: str) -> str:
    """C{"rsa"} or C{"ed25519"}: the algorithm of a key from L{generate_key}.

    @raise ValueError: not such a key.
    """
    key = _load(private_key_pem)
    return "rsa" if isinstance(key, rsa.RSAPrivateKey) else "ed25519"


def _load(private_key_pem: str):
    key = serialization.load_pem_private_key(private_key_pem.encode("ascii"), password=None)
    if not isinstance(key, (rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)):
        raise ValueError("not an RSA or Ed25519 private key")
    return key


def signing_secret(private_key_pem: str, algorithm: str) -> bytes:
    """The private key in the form dkimpy signs with: the PEM text for RSA,
    and for Ed25519 the base64 of its raw 32-byte seed (RFC 8032 section
    5.1.5), which is how dkimpy (through PyNaCl) takes it.

    @raise ValueError: the PEM does not hold a key of C{algorithm}.
    """
    if algorithm == "rsa":
        # dkimpy parses it (and refuses what is not an RSA key); loading it
        # here too would cost more than the signature (cryptography checks
        # an RSA key's consistency on every load)
        return private_key_pem.encode("ascii")
    key = _load(private_key_pem)
    if algorithm == "ed25519" and isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
        return base64.b64encode(raw)
    raise ValueError(f"the key stored as {algorithm} is not a {algorithm} key")


def dns_value(private_key_pem: str) -> str:
    """The DKIM key record's text for the public half of C{private_key_pem}
    (RFC 6376 section 3.6.1): C{v=DKIM1; k=rsa; p=<base64>}, C{p=} being
    the DER SubjectPublicKeyInfo for RSA, and for Ed25519 the bare 32-byte
    public key (RFC 8463 section 4.2), with C{k=ed25519}."""
    public = _load(private_key_pem).public_key()
    if isinstance(public, rsa.RSAPublicKey):
        kind = "rsa"
        data = public.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    else:
        kind = "ed25519"
        data = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"v=DKIM1; k={kind}; p={base64.b64encode(data).decode('ascii')}"


def split_txt(value: str) -> list[str]:
    """C{value} as the character-strings of one TXT record, each at most
    255 bytes (RFC 1035 section 3.3): a 2048-bit RSA key's record is about
    400. Verifiers join them with nothing between (RFC 6376 section 3.6.2.2,
    as RFC 7208 section 3.3 does for SPF), so the split may fall anywhere;
    it falls between characters, never inside a UTF-8 sequence."""
    strings, current, size = [], [], 0
    for ch in value:
        width = len(ch.encode("utf-8"))
        if size + width > TXT_STRING_MAX:
            strings.append("".join(current))
            current, size = [], 0
        current.append(ch)
        size += width
    if current or not strings:
        strings.append("".join(current))
    return strings


def zone_text(value: str) -> str:
    """C{value} as a zone file writes a TXT record's data: each
    character-string of L{split_txt} in double quotes, backslashes and
    quotes escaped (RFC 1035 section 5.1)."""
    return " ".join('"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
                    for s in split_txt(value))
