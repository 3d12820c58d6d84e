"""Media header parsing: never raises on arbitrary bytes; the builders round-trip."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from qunfa.content.mediafile import (
    OCTET,
    MediaInfo,
    inspect,
    jpeg_header,
    mp4_duration,
    mp4_header,
    png_header,
)

MAGICS = [b"", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"\xff\xd8", b"BM", b"\0\0\0\x18ftyp", b"%PDF-"]
sizes = st.integers(1, 65535)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(MAGICS), st.binary(max_size=300))
def test_never_raises_on_arbitrary_bytes(magic: bytes, tail: bytes) -> None:
    info = inspect(magic + tail)
    assert isinstance(info, MediaInfo) and info.mime
    assert info.width is None or info.width >= 0
    assert info.duration is None or info.duration >= 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 199))
def test_truncated_valid_headers_never_raise(tail: bytes, cut: int) -> None:
    for whole in (png_header(800, 600), jpeg_header(800, 600), mp4_header(12.5)):
        info = inspect(whole[: cut % (len(whole) + 1)] + tail)
        assert isinstance(info, MediaInfo)


@given(sizes, sizes)
def test_png_round_trip(w: int, h: int) -> None:
    info = inspect(png_header(w, h) + b"\0" * 10)
    assert (info.mime, info.width, info.height, info.kind, info.ext) == (
        "image/png", w, h, "image", "png",
    )  # fmt: skip


@given(sizes, sizes)
def test_jpeg_round_trip(w: int, h: int) -> None:
    info = inspect(jpeg_header(w, h))
    assert (info.mime, info.width, info.height, info.ext) == ("image/jpeg", w, h, "jpg")


@given(st.integers(0, 10**6), st.sampled_from([1, 600, 1000, 90000]))
def test_mp4_round_trip(millis: int, timescale: int) -> None:
    seconds = millis / 1000
    info = inspect(mp4_header(seconds, timescale))
    assert info.mime == "video/mp4" and info.kind == "video"
    assert info.duration is not None
    assert abs(info.duration - round(seconds * timescale) / timescale) < 1e-3


def test_mp4_version1_mvhd_and_zero_timescale() -> None:
    body = struct.pack(">BxxxQQIQ", 1, 0, 0, 1000, 95_000) + b"\0" * 80
    mvhd = struct.pack(">I", 8 + len(body)) + b"mvhd" + body
    moov = struct.pack(">I", 8 + len(mvhd)) + b"moov" + mvhd
    assert mp4_duration(moov) == 95.0
    zero = mp4_header(10, timescale=1).replace(struct.pack(">II", 1, 10), struct.pack(">II", 0, 10))
    assert inspect(zero).duration is None


def test_other_types_and_unknown() -> None:
    assert inspect(b"GIF87a\x20\x03\x58\x02").width == 800
    bmp = b"BM" + b"\0" * 16 + struct.pack("<ii", 640, -480)
    assert (inspect(bmp).width, inspect(bmp).height) == (640, 480)  # top-down rows
    assert inspect(b"#!AMR\n").kind == "voice"
    assert inspect(b"ID3\x04").mime == "audio/mpeg"
    assert inspect(b"%PDF-1.7").kind == "file"
    unknown = inspect(b"hello")
    assert (unknown.mime, unknown.ext, unknown.kind) == (OCTET, "bin", "file")
