"""gzip of /metrics that compresses again only what changed since the last scrape.

At level 1 (exporter.outputs.prometheus.GZIP_LEVEL) zlib takes ~3 ms per MB:
~25 ms for the 7.6 MB of 1,000 containers x 50 syscalls, a third of a
scrape once the collect and the render cost what changed. The renderer
hands the body in pieces: a RowFamily's chunks already deflated (below),
the other families' text as bytes. Each bytes piece of
CACHE_MIN characters or more is deflated on its own, ended with a full
flush (byte-aligned, no back-references across it: pigz's trick), and kept
with its CRC-32 and length until a scrape no longer has it; smaller pieces
are deflated together each time. The stream is one gzip member (RFC 1952)
whatever the split, so every client decodes it, and the CRC of the whole is
chained over the pieces (zlib.crc32, ~1 GB/s).

A RowFamily's chunks are kept compressed only (`Deflated`, made by
exporter.outputs.exposition.row_chunks): their text, ~7 MB at 1,000
containers x 50 syscalls, would be the biggest thing orb8 holds, while the
deflated form is ~25x smaller (label prefixes repeat). A gzip scrape splices
the deflated bytes as they are and chains the CRC without the text (the
CRC of the zeros trick below); a plain scrape inflates them (`plain`).
"""

from __future__ import annotations

import struct
import threading
import zlib
from collections.abc import Iterable

CACHE_MIN = 4096  # bytes: smaller pieces are compressed with their neighbours
# Level of the row chunks kept deflated: BestSpeed, as /metrics' own gzip
# (exporter.outputs.prometheus.GZIP_LEVEL).
CHUNK_LEVEL = 1
_ZEROS = memoryview(bytes(1 << 16))
HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # no name, no mtime, OS unknown
FINAL = b"\x03\x00"  # an empty final fixed-Huffman block


def _deflate(data: bytes, level: int) -> bytes:
    compressor = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush(zlib.Z_FULL_FLUSH)


def _crc_of_zeros(size: int, crc: int = 0) -> int:
    """zlib.crc32 of `size` zero bytes, continuing from `crc`."""
    while size > 0:
        step = min(size, len(_ZEROS))
        crc = zlib.crc32(_ZEROS[:step], crc)
        size -= step
    return crc


class Deflated:
    """A piece of /metrics kept deflated: raw deflate ended with a full flush
    (it splices into any gzip member), the CRC-32 and length of its text.

    `chain` extends a body's CRC by this piece from those numbers, without
    the text: CRC-32 is affine over GF(2), so crc(A + B) =
    crc(A + zeros(len B)) ^ crc(B) ^ crc(zeros(len B)). zlib's crc32_combine
    does it in O(log n), but Python's module does not expose it (and ctypes
    stays in exporter/kernel/); the zeros cost what the text would, as much
    as the CRC of the whole text did."""

    __slots__ = ("crc", "data", "size", "zeros_crc")

    def __init__(self, text: bytes, level: int = CHUNK_LEVEL) -> None:
        self.data = _deflate(text, level)
        self.crc = zlib.crc32(text)
        self.size = len(text)
        self.zeros_crc = _crc_of_zeros(self.size)

    def text(self) -> bytes:
        return zlib.decompressobj(-zlib.MAX_WBITS).decompress(self.data)

    def chain(self, crc: int) -> int:
        """The CRC of (text before, whose CRC is `crc`) + this piece's text."""
        return _crc_of_zeros(self.size, crc) ^ self.crc ^ self.zeros_crc


Piece = bytes | Deflated


def plain(pieces: Iterable[Piece]) -> bytes:
    """The text of the pieces, one after the other."""
    return b"".join(p.text() if isinstance(p, Deflated) else p for p in pieces)


class GzipCache:
    """Compressed pieces of the last scrape, by piece."""

    def __init__(self, level: int) -> None:
        self.level = level
        self._lock = threading.Lock()
        self._cache: dict[bytes, bytes] = {}  # piece -> deflated

    def compress(self, pieces: Iterable[Piece], tail: bytes = b"") -> bytes:
        """gzip of plain(pieces) + tail."""
        with self._lock:
            out = [HEADER]
            crc, size = 0, 0
            pending: list[bytes] = []
            kept: dict[bytes, bytes] = {}

            def flush() -> None:
                if pending:
                    out.append(_deflate(b"".join(pending), self.level))
                    pending.clear()

            for piece in pieces:
                if isinstance(piece, Deflated):
                    flush()
                    out.append(piece.data)
                    crc, size = piece.chain(crc), size + piece.size
                    continue
                crc, size = zlib.crc32(piece, crc), size + len(piece)
                if len(piece) < CACHE_MIN:
                    pending.append(piece)
                    continue
                deflated = kept.get(piece) or self._cache.get(piece)
                if deflated is None:
                    deflated = _deflate(piece, self.level)
                flush()
                kept[piece] = deflated
                out.append(deflated)
            if tail:
                pending.append(tail)
                crc, size = zlib.crc32(tail, crc), size + len(tail)
            flush()
            self._cache = kept  # pieces gone (series, old values) go with this scrape
            out.append(FINAL)
            out.append(struct.pack("<II", crc, size & 0xFFFFFFFF))
            return b"".join(out)
