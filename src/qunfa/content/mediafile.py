"""What a media file is, read from its bytes: type, pixel size, duration (no Pillow, no ffprobe).

Supported headers: PNG (IHDR), GIF (logical screen), JPEG (the first SOFn segment), BMP
(BITMAPINFOHEADER), MP4/MOV (``moov/mvhd`` timescale and duration), and the magic numbers of
AMR, MP3, PDF. Parsing never raises on malformed input: a truncated or unknown file gives
``None`` for what could not be read, and ``mime = application/octet-stream`` if the type is
unknown. The platforms decide by type and size, so this is what the lint and the uploads need.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

OCTET = "application/octet-stream"
# JPEG start-of-frame markers carrying the frame size (C4 DHT, C8 JPG, CC DAC are not frames).
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
# MP4 container boxes worth descending into on the way to mvhd.
_CONTAINERS = frozenset({b"moov", b"trak", b"mdia"})

EXTENSIONS = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/gif": "gif",
    "image/bmp": "bmp",
    "video/mp4": "mp4",
    "audio/amr": "amr",
    "audio/mpeg": "mp3",
    "application/pdf": "pdf",
}


@dataclass(frozen=True)
class MediaInfo:
    """The facts the platforms' upload limits and the lint look at."""

    mime: str
    width: int | None = None
    height: int | None = None
    duration: float | None = None  # seconds

    @property
    def ext(self) -> str:
        """The canonical file extension for :attr:`mime` (``bin`` if unknown)."""
        return EXTENSIONS.get(self.mime, "bin")

    @property
    def kind(self) -> str:
        """``image``, ``video``, ``voice`` or ``file`` — the platforms' upload ``type``."""
        major = self.mime.split("/", 1)[0]
        return {"image": "image", "video": "video", "audio": "voice"}.get(major, "file")


def inspect(data: bytes) -> MediaInfo:
    """Sniff ``data``: its MIME type and, where the header says, size and duration."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return MediaInfo("image/png", *_png(data))
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return MediaInfo("image/gif", *_gif(data))
    if data.startswith(b"\xff\xd8"):
        return MediaInfo("image/jpeg", *_jpeg(data))
    if data.startswith(b"BM") and len(data) >= 26:
        return MediaInfo("image/bmp", *_bmp(data))
    if data[4:8] == b"ftyp":
        return MediaInfo("video/mp4", duration=mp4_duration(data))
    if data.startswith(b"#!AMR"):
        return MediaInfo("audio/amr")
    if data.startswith(b"ID3") or data[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"):
        return MediaInfo("audio/mpeg")
    if data.startswith(b"%PDF-"):
        return MediaInfo("application/pdf")
    return MediaInfo(OCTET)


def _png(data: bytes) -> tuple[int | None, int | None]:
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None, None
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def _gif(data: bytes) -> tuple[int | None, int | None]:
    if len(data) < 10:
        return None, None
    width, height = struct.unpack("<HH", data[6:10])
    return int(width), int(height)


def _bmp(data: bytes) -> tuple[int | None, int | None]:
    width, height = struct.unpack("<ii", data[18:26])
    return abs(int(width)), abs(int(height))  # a negative height means top-down rows


def _jpeg(data: bytes) -> tuple[int | None, int | None]:
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None, None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD9)):  # standalone markers carry no length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan: no frame header before it
            return None, None
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if length < 2:
            return None, None
        if marker in _SOF:
            if i + 9 > n:
                return None, None
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return int(width), int(height)
        i += 2 + length
    return None, None


def mp4_duration(data: bytes) -> float | None:
    """Seconds from the movie header (``moov/mvhd``): duration ÷ timescale."""
    return _boxes(data, 0, len(data), 0)


def _boxes(data: bytes, start: int, end: int, depth: int) -> float | None:
    i = start
    while i + 8 <= end and depth < 4:
        size, kind = struct.unpack(">I4s", data[i : i + 8])
        header = 8
        if size == 1:  # 64-bit largesize follows the type
            if i + 16 > end:
                return None
            (size,) = struct.unpack(">Q", data[i + 8 : i + 16])
            header = 16
        elif size == 0:  # box runs to the end of the file
            size = end - i
        if size < header or i + size > end:
            return None
        if kind == b"mvhd":
            return _mvhd(data[i + header : i + size])
        if kind in _CONTAINERS:
            found = _boxes(data, i + header, i + size, depth + 1)
            if found is not None:
                return found
        i += size
    return None


def _mvhd(body: bytes) -> float | None:
    if not body:
        return None
    if body[0] == 1:  # version 1: 64-bit times and duration
        if len(body) < 32:
            return None
        timescale, duration = struct.unpack(">IQ", body[20:32])
    else:
        if len(body) < 20:
            return None
        timescale, duration = struct.unpack(">II", body[12:20])
    if timescale == 0:
        return None
    return round(float(duration) / float(timescale), 3)


# -- tiny valid files, for tests, the demo and the sandbox ----------------------------------------
def png_header(width: int, height: int) -> bytes:
    """The first bytes of a PNG of ``width``×``height`` (enough for every reader here)."""
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk) & 0xFFFFFFFF)
    )


def jpeg_header(width: int, height: int) -> bytes:
    """SOI, an APP0 segment and a baseline SOF0 frame header of ``width``×``height``."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + sof + b"\xff\xd9"


def mp4_header(seconds: float, timescale: int = 1000) -> bytes:
    """``ftyp`` + ``moov`` with a version-0 ``mvhd`` saying ``seconds``."""
    ftyp = b"ftypisom" + b"\x00\x00\x02\x00" + b"isomiso2mp41"
    mvhd_body = struct.pack(">BxxxIIII", 0, 0, 0, timescale, round(seconds * timescale))
    mvhd_body += b"\x00" * 80  # rate, volume, matrix, next track id: not read
    mvhd = struct.pack(">I", 8 + len(mvhd_body)) + b"mvhd" + mvhd_body
    moov = struct.pack(">I", 8 + len(mvhd)) + b"moov" + mvhd
    return struct.pack(">I", 4 + len(ftyp)) + ftyp + moov
