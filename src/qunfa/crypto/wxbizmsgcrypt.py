"""WXBizMsgCrypt: the message encryption WeChat Official Accounts (safe mode) and WeCom use.

One module for both sides: the sandbox encrypts the callbacks it posts, and qunfa's callback
receiver verifies and decrypts them. The algorithm (reference §2):

* key  = base64decode(EncodingAESKey + "=")  (43 characters give 32 bytes, AES-256)
* AES-256-CBC, IV = key[:16], PKCS#7 padding to a 32-byte block (pad values 1..32)
* plaintext = random(16) ‖ len(msg) as 4-byte big-endian ‖ msg ‖ receive_id
  (receive_id = appid for an Official Account, corpid for WeCom)
* signature = sha1 hex of the sorted concatenation of (token, timestamp, nonce, encrypt)

Checked against the published test vector in ``tests/unit/test_wxbizmsgcrypt.py``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import string
import struct
import time
from dataclasses import dataclass
from xml.etree import ElementTree

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

BLOCK = 32
_ALNUM = string.ascii_letters + string.digits


class CryptoError(Exception):
    """A callback failed verification or decryption. ``code`` follows WXBizMsgCrypt's numbers."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


# The error numbers of the official WXBizMsgCrypt SDK, kept so logs match platform docs.
VALIDATE_SIGNATURE_ERROR = -40001
PARSE_XML_ERROR = -40002
ILLEGAL_AES_KEY = -40004
VALIDATE_APPID_ERROR = -40005
DECRYPT_ERROR = -40007
ILLEGAL_BUFFER = -40008


def signature(token: str, timestamp: str, nonce: str, encrypt: str = "") -> str:
    """sha1 over the lexically sorted parts; plain-mode OA signatures omit ``encrypt``."""
    parts = [token, timestamp, nonce] + ([encrypt] if encrypt else [])
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()


def pkcs7_pad(data: bytes) -> bytes:
    n = BLOCK - len(data) % BLOCK
    return data + bytes([n]) * n


def pkcs7_unpad(data: bytes) -> bytes:
    if not data:
        raise CryptoError(ILLEGAL_BUFFER, "empty plaintext")
    n = data[-1]
    if n < 1 or n > BLOCK:
        raise CryptoError(ILLEGAL_BUFFER, f"bad padding byte {n}")
    return data[:-n]


@dataclass(frozen=True)
class EncryptedMessage:
    """What goes on the wire for an encrypted POST: the XML body and the query parameters."""

    xml: str
    encrypt: str
    msg_signature: str
    timestamp: str
    nonce: str


class WXBizMsgCrypt:
    """Encrypts, decrypts and signs for one (token, EncodingAESKey, receive id) triple."""

    def __init__(self, token: str, encoding_aes_key: str, receive_id: str) -> None:
        if len(encoding_aes_key) != 43:
            raise CryptoError(ILLEGAL_AES_KEY, "EncodingAESKey must be 43 characters")
        try:
            key = base64.b64decode(encoding_aes_key + "=")
        except binascii.Error as exc:
            raise CryptoError(ILLEGAL_AES_KEY, "EncodingAESKey is not base64") from exc
        if len(key) != 32:
            raise CryptoError(ILLEGAL_AES_KEY, "EncodingAESKey must decode to 32 bytes")
        self.token = token
        self.receive_id = receive_id
        self._key = key

    # -- primitives ---------------------------------------------------------------------------
    def encrypt(self, msg: str, random_prefix: bytes | None = None) -> str:
        """base64 ciphertext of ``msg``; ``random_prefix`` (16 bytes) only for test vectors."""
        prefix = random_prefix or "".join(secrets.choice(_ALNUM) for _ in range(16)).encode()
        body = msg.encode()
        plain = prefix + struct.pack(">I", len(body)) + body + self.receive_id.encode()
        enc = Cipher(algorithms.AES(self._key), modes.CBC(self._key[:16])).encryptor()
        return base64.b64encode(enc.update(pkcs7_pad(plain)) + enc.finalize()).decode()

    def decrypt(self, encrypt: str) -> str:
        """Plaintext message of ``encrypt``; raises :class:`CryptoError` on any mismatch."""
        try:
            cipher = base64.b64decode(encrypt)
            dec = Cipher(algorithms.AES(self._key), modes.CBC(self._key[:16])).decryptor()
            plain = pkcs7_unpad(dec.update(cipher) + dec.finalize())
        except (binascii.Error, ValueError) as exc:
            raise CryptoError(DECRYPT_ERROR, "ciphertext does not decrypt") from exc
        if len(plain) < 20:
            raise CryptoError(ILLEGAL_BUFFER, "plaintext too short")
        (length,) = struct.unpack(">I", plain[16:20])
        msg, receive_id = plain[20 : 20 + length], plain[20 + length :]
        if receive_id.decode(errors="replace") != self.receive_id:
            raise CryptoError(VALIDATE_APPID_ERROR, "receive id does not match this account")
        return msg.decode()

    def sign(self, timestamp: str, nonce: str, encrypt: str) -> str:
        return signature(self.token, timestamp, nonce, encrypt)

    def verify(self, msg_signature: str, timestamp: str, nonce: str, encrypt: str) -> None:
        expected = self.sign(timestamp, nonce, encrypt)
        if not hmac.compare_digest(expected, msg_signature):
            raise CryptoError(VALIDATE_SIGNATURE_ERROR, "msg_signature does not match")

    # -- flows ----------------------------------------------------------------------------------
    def encrypt_message(
        self, msg: str, timestamp: str | None = None, nonce: str | None = None
    ) -> EncryptedMessage:
        """Encrypt ``msg`` into the ``<xml><Encrypt/>…`` envelope with its signature."""
        ts = timestamp or str(int(time.time()))
        nc = nonce or str(secrets.randbelow(10**9))
        enc = self.encrypt(msg)
        sig = self.sign(ts, nc, enc)
        xml = (
            f"<xml><ToUserName><![CDATA[{self.receive_id}]]></ToUserName>"
            f"<Encrypt><![CDATA[{enc}]]></Encrypt>"
            f"<MsgSignature><![CDATA[{sig}]]></MsgSignature>"
            f"<TimeStamp>{ts}</TimeStamp><Nonce><![CDATA[{nc}]]></Nonce></xml>"
        )
        return EncryptedMessage(xml=xml, encrypt=enc, msg_signature=sig, timestamp=ts, nonce=nc)

    def decrypt_message(self, xml: str, msg_signature: str, timestamp: str, nonce: str) -> str:
        """Verify the signature over the envelope's ``Encrypt`` and return the inner XML."""
        encrypt = extract_encrypt(xml)
        self.verify(msg_signature, timestamp, nonce, encrypt)
        return self.decrypt(encrypt)

    def verify_url(self, msg_signature: str, timestamp: str, nonce: str, echostr: str) -> str:
        """WeCom URL verification: the echostr is encrypted; reply with its plaintext."""
        self.verify(msg_signature, timestamp, nonce, echostr)
        return self.decrypt(echostr)


def extract_encrypt(xml: str) -> str:
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as exc:
        raise CryptoError(PARSE_XML_ERROR, "body is not XML") from exc
    node = root.find("Encrypt")
    if node is None or not node.text:
        raise CryptoError(PARSE_XML_ERROR, "no <Encrypt> element")
    return node.text


def parse_xml(xml: str) -> dict[str, str]:
    """Flat XML (``<xml><A>..</A>…</xml>``) into a dict; nested elements keep their text only."""
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as exc:
        raise CryptoError(PARSE_XML_ERROR, "body is not XML") from exc
    return {child.tag: (child.text or "") for child in root}
