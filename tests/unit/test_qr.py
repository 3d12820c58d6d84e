"""QR codes in images: found and decoded (compliance/qr.py)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qunfa.compliance.qr import ImageError, finding, scan_image


def qr_png(text: str, scale: int = 8, border: int = 40, ext: str = ".png") -> bytes:
    """An image holding one QR code of ``text`` (made with OpenCV's encoder)."""
    img = cv2.QRCodeEncoder.create().encode(text)
    img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    img = cv2.copyMakeBorder(img, border, border, border, border, cv2.BORDER_CONSTANT, value=255)
    ok, data = cv2.imencode(ext, img)
    assert ok
    return bytes(data.tobytes())


def test_a_qr_code_is_found_and_decoded_in_png_and_jpeg() -> None:
    for ext in (".png", ".jpg"):
        codes = scan_image(qr_png("https://weixin.example/follow?id=1", ext=ext))
        assert [c.text for c in codes] == ["https://weixin.example/follow?id=1"]
        assert len(codes[0].box) == 4


def test_a_photo_without_a_code_has_none() -> None:
    rng = np.random.default_rng(7)
    noise = (rng.random((300, 300)) * 255).astype(np.uint8)
    ok, data = cv2.imencode(".png", noise)
    assert ok and scan_image(bytes(data.tobytes())) == []


def test_not_an_image_is_a_clear_error() -> None:
    with pytest.raises(ImageError, match="not an image"):
        scan_image(b"%PDF-1.4 not an image")


@settings(max_examples=25, deadline=None)
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789:/.?=", min_size=1, max_size=60))
def test_any_ascii_payload_round_trips(text: str) -> None:
    assert [c.text for c in scan_image(qr_png(text))] == [text]


def test_the_finding_asks_for_review_and_names_the_link() -> None:
    (code,) = scan_image(qr_png("http://1.2.3.4/x"))
    f = finding(code, "material.media.qr[0]")
    assert f["action"] == "review" and f["rule"] == "media.qr_code"
    assert "http://1.2.3.4/x" in f["message"]
