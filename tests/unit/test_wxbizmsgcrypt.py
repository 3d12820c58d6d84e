"""WXBizMsgCrypt against the published test vector (reference §2) and round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qunfa.crypto.wxbizmsgcrypt import (
    CryptoError,
    WXBizMsgCrypt,
    parse_xml,
    pkcs7_pad,
    pkcs7_unpad,
    signature,
)

TOKEN = "123456"
AES_KEY = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR"
CORPID = "wx49f0ab532d5d035a"
ECHOSTR = "4ByGGj+sVCYcvGeQYhaKIk1o0pQRNbRjxybjTGblXrBaXlTXeOo1+bXFXDQQb1o6co6Yh9Bv41n7hOchLF6p+Q=="


def crypt() -> WXBizMsgCrypt:
    return WXBizMsgCrypt(TOKEN, AES_KEY, CORPID)


def test_published_vector_signature_and_decrypt() -> None:
    c = crypt()
    assert c.sign("1411443780", "437374425", ECHOSTR) == "dd6b9c95b495b3f7e2901bfbc76c664930ffdb96"
    msg = c.verify_url(
        "dd6b9c95b495b3f7e2901bfbc76c664930ffdb96", "1411443780", "437374425", ECHOSTR
    )
    assert msg == "5927782489442352469"


ENCRYPTED = (
    "9s4gMv99m88kKTh/H8IdkOiMg6bisoy3ypwy9H4hvSPe9nsGaqyw5hhSjdYbcrKk+j3nba4HMOTzHrluLBYqxgNcBqGsL8Gq"
    "xlhZgURnAtObvesEl5nZ+uBE8bviY0LWke8Zy9V/QYKxNV2FqllNXcfmstttyIkMKCCmVbCFM2JTF5wY0nFhHZSjPUL2Q1qv"
    "SUCUld+/WIXrx0oyKQmpB6o8NRrrNrsDf03oxI1p9FxUgMnwKKZeOA/uu+2IEvEBtb7muXsVbwbgX05UPPJvFurDXafG0RQy"
    "PR+mf1nDnAtQmmNOuiR5MIkdQ39xn1vWwi1O5oazPoQJz0nTYjxxEE8kv3kFxtAGVRe3ypD3WeK2XeFYFMNMpatF9XiKzHo3"
)
REPLY = (
    "<xml>\n<MsgType><![CDATA[text]]></MsgType>\n<Content><![CDATA[test]]></Content>\n"
    "<FromUserName><![CDATA[wx49f0ab532d5d035a]]></FromUserName>\n"
    "<ToUserName><![CDATA[messense]]></ToUserName>\n<AgentID>1</AgentID>\n"
    "<CreateTime>1411525903</CreateTime>\n</xml>"
)


def test_published_vector_encrypt_side() -> None:
    # wechatpy's encrypt vector: fixed random prefix, nonce 461056294, timestamp 1411525903.
    c = crypt()
    enc = c.encrypt(REPLY, random_prefix=b"1234567890123456")
    assert enc == ENCRYPTED
    assert c.sign("1411525903", "461056294", enc) == "407518b7649e86ef23978113f92d27afa9296533"
    assert c.decrypt(enc) == REPLY


def test_wrong_signature_is_rejected() -> None:
    c = crypt()
    with pytest.raises(CryptoError) as exc:
        c.verify_url("0" * 40, "1411443780", "437374425", ECHOSTR)
    assert exc.value.code == -40001


def test_wrong_receive_id_is_rejected() -> None:
    other = WXBizMsgCrypt(TOKEN, AES_KEY, "wx0000000000000000")
    with pytest.raises(CryptoError) as exc:
        other.decrypt(ECHOSTR)
    assert exc.value.code == -40005


def test_bad_key_length() -> None:
    with pytest.raises(CryptoError):
        WXBizMsgCrypt(TOKEN, AES_KEY[:-1], CORPID)


def test_message_envelope_round_trip() -> None:
    c = crypt()
    env = c.encrypt_message("<xml><Event>MASSSENDJOBFINISH</Event></xml>", "1", "2")
    inner = c.decrypt_message(env.xml, env.msg_signature, env.timestamp, env.nonce)
    assert parse_xml(inner) == {"Event": "MASSSENDJOBFINISH"}


def test_plain_signature_omits_encrypt() -> None:
    assert signature("t", "1", "2") == signature("t", "2", "1")  # order-independent (sorted)
    assert signature("t", "1", "2") != signature("t", "1", "2", "x")


@given(st.binary(max_size=200))
def test_pkcs7_round_trip(data: bytes) -> None:
    padded = pkcs7_pad(data)
    assert len(padded) % 32 == 0 and len(padded) > len(data)
    assert pkcs7_unpad(padded) == data


@given(st.text(max_size=300))
def test_encrypt_decrypt_round_trip(text: str) -> None:
    c = crypt()
    assert c.decrypt(c.encrypt(text)) == text
