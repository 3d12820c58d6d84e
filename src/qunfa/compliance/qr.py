"""QR codes in images: found, decoded and reported before an image is sent.

Platforms punish QR codes that induce following another account or lead off the platform
(the seeds: 诱导关注, 外链), and a QR code hides its link from the text checks. So every image a
campaign sends is scanned; each code found becomes a ``media.qr_code`` finding whose action is
``review`` (a person decides), carrying the decoded text so the reviewer sees where it leads,
and a decoded link is checked like any link in the text.

OpenCV's QR detector (``opencv-python-headless``) does the finding and decoding; it is imported
on first use, so processes that never check an image do not load it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class QrCode:
    text: str  # what the code says ("" when found but not decodable)
    box: tuple[tuple[int, int], ...]  # its corners in the image, in pixels


class ImageError(ValueError):
    """The bytes are not an image OpenCV can read."""


def scan_image(data: bytes) -> list[QrCode]:
    """Every QR code in the image ``data`` (PNG, JPEG, BMP, GIF's first frame …)."""
    import cv2
    import numpy as np

    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise ImageError("not an image OpenCV can read (PNG, JPEG, BMP, WebP, TIFF)")
    detector = cv2.QRCodeDetector()
    ok, texts, points, _ = detector.detectAndDecodeMulti(image)
    if ok and points is not None and all(texts):
        return [QrCode(t, _corners(p)) for t, p in zip(texts, points, strict=True)]
    # The multi detector misses some single, large codes the single one finds, and each
    # misses some small codes (e.g. "oy:2") that the ArUco-based detector finds: try all three,
    # keeping the first answer that decodes and else the first that at least located a code.
    found: list[QrCode] = []
    if ok and points is not None:
        found = [QrCode(t, _corners(p)) for t, p in zip(texts, points, strict=True)]
    text, pts, _ = detector.detectAndDecode(image)
    if pts is not None:
        if text:
            return [QrCode(text, _corners(pts[0]))]
        found = found or [QrCode(text, _corners(pts[0]))]
    aruco = cv2.QRCodeDetectorAruco()
    ok, texts, points, _ = aruco.detectAndDecodeMulti(image)
    if ok and points is not None and any(texts):
        return [QrCode(t, _corners(p)) for t, p in zip(texts, points, strict=True)]
    return found


def _corners(points: Any) -> tuple[tuple[int, int], ...]:
    return tuple((int(x), int(y)) for x, y in points)


def finding(code: QrCode, path: str) -> dict[str, Any]:
    """The review finding for one code, in the shape of the check's lint findings."""
    shown = code.text or "(a code that could not be decoded)"
    return {
        "rule": "media.qr_code",
        "message": f"the image contains a QR code: {shown}",
        "path": path,
        "suggestion": "a reviewer must approve QR codes: platforms punish codes that induce "
        "following or lead off the platform; remove it or get the campaign approved",
        "action": "review",
        "verdict": "review",
        "value": code.text,
    }
