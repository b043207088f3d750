"""Small valid images for tests and benchmarks, made here rather than shipped as files."""

import struct
import zlib


def png_bytes(width: int = 1, height: int = 1, filler: int = 0) -> bytes:
    """A valid PNG image (`filler` extra bytes of pixel rows make it as large as a test needs)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = (b"\x00" + b"\xff\x00\x00" * width) * height
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    text = chunk(b"tEXt", b"pad\x00" + b"x" * filler) if filler else b""
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + text + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))
