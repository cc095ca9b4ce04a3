"""Our metadata in PNG, JPEG and WebP files, edited at the container level: the image data is never decoded.

    PNG   an iTXt chunk `cityclf` (the record, UTF-8 JSON) and a tEXt chunk `aesthetic_score`, put before
          the first IDAT (where readers that stop at the image data still see them); CRCs checked and written
    JPEG  an XMP packet in an APP1 segment (`http://ns.adobe.com/xap/1.0/`): our rdf:Description is added to
          the file's packet, or a packet of its own after the APP0/APP1 segments; the scan data is untouched
    WebP  the same XMP in the RIFF `XMP ` chunk, with the VP8X header's XMP flag (a VP8X header is added to
          a simple-format file); the VP8/VP8L/ALPH/ANIM chunks are untouched

`set_metadata(data, record)` returns the new bytes (equal to `data` when nothing changes); `strip_metadata`
is its exact inverse (what the file was before we first wrote into it: used to recognise a file whose
content changed since it was scored); `read_metadata` returns our record. Everything not ours is kept
byte for byte. A damaged or unusual file raises ContainerError and is left alone.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from xml.sax.saxutils import escape, unescape

from .errors import CityClfError
from .image_metadata import AESTHETIC_KEY, RECORD_KEY, record_text

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
XMP_NS = "urn:cityclf:xmp:1/"
_OURS_START = f'<rdf:Description rdf:about="" xmlns:cityclf="{XMP_NS}"'
_OURS = re.compile(re.escape(_OURS_START) + r'[^>]*>.*?</rdf:Description>', re.S)
_SKELETON = ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
             '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">{}</rdf:RDF></x:xmpmeta>'
             '<?xpacket end="w"?>')
_JPEG_MAX_SEGMENT = 0xFFFF - 2


class ContainerError(CityClfError):
    """A file whose container is damaged or not one we edit; it is left untouched."""


def kind_of(data: bytes) -> str:
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    raise ContainerError("not a PNG, JPEG or WebP file (by its first bytes)")


def set_metadata(data: bytes, record: dict) -> bytes:
    """`data` with our record in it (replacing an earlier one of ours); other metadata and image data kept."""
    kind = kind_of(data)
    if kind == "png":
        return _png_set(data, record)
    return _xmp_edit(data, kind, record)


def strip_metadata(data: bytes) -> bytes:
    """`data` as it was before we wrote our record into it (unchanged when it has none)."""
    kind = kind_of(data)
    if kind == "png":
        return _png_join(_png_strip(_png_chunks(data)))
    return _xmp_edit(data, kind, None)


def read_metadata(data: bytes) -> dict | None:
    """Our record in `data`, or None."""
    kind = kind_of(data)
    if kind == "png":
        for ctype, body in _png_chunks(data):
            text = _png_text(ctype, body)
            if text and text[0] == RECORD_KEY:
                return json.loads(text[1])
        return None
    packet = _xmp_packet(data, kind)[1]
    m = _OURS.search(packet or "")
    if not m:
        return None
    inner = re.search(r"<cityclf:json>(.*?)</cityclf:json>", m.group(0), re.S)
    return json.loads(unescape(inner.group(1))) if inner else None


# ---------------------------------------------------------------- PNG


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """[(type, body)] of a PNG, every CRC checked; IHDR first, IEND last, nothing after it."""
    pos, chunks = len(PNG_SIGNATURE), []
    while pos < len(data):
        if pos + 12 > len(data):
            raise ContainerError(f"PNG chunk header cut short at byte {pos} (the file is truncated)")
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 8 + length
        if end + 4 > len(data):
            raise ContainerError(f"PNG chunk {ctype!r} at byte {pos} runs past the end (the file is truncated)")
        body = data[pos + 8 : end]
        if zlib.crc32(ctype + body) != struct.unpack(">I", data[end : end + 4])[0]:
            raise ContainerError(f"PNG chunk {ctype.decode('latin-1')!r} at byte {pos} is damaged (CRC mismatch)")
        chunks.append((ctype, body))
        pos = end + 4
        if ctype == b"IEND":
            break
    if not chunks or chunks[0][0] != b"IHDR" or chunks[-1][0] != b"IEND":
        raise ContainerError("PNG without IHDR first and IEND last (damaged or truncated)")
    if pos != len(data):
        raise ContainerError(f"{len(data) - pos} byte(s) after the PNG's IEND chunk; not edited")
    if not any(c == b"IDAT" for c, _ in chunks):
        raise ContainerError("PNG without image data (IDAT)")
    return chunks


def _png_join(chunks) -> bytes:
    out = [PNG_SIGNATURE]
    for ctype, body in chunks:
        out.append(struct.pack(">I4s", len(body), ctype) + body + struct.pack(">I", zlib.crc32(ctype + body)))
    return b"".join(out)


def _png_text(ctype: bytes, body: bytes) -> tuple[str, str] | None:
    """(keyword, text) of a tEXt or uncompressed iTXt chunk; None for other chunks."""
    if ctype == b"tEXt":
        key, _, text = body.partition(b"\x00")
        return key.decode("latin-1"), text.decode("latin-1")
    if ctype == b"iTXt":
        key, _, rest = body.partition(b"\x00")
        if rest[:1] != b"\x00":  # compressed: never ours
            return key.decode("latin-1"), ""
        _, _, rest = rest[2:].partition(b"\x00")  # language tag
        _, _, text = rest.partition(b"\x00")  # translated keyword
        return key.decode("latin-1"), text.decode("utf-8", "replace")
    if ctype == b"zTXt":
        return body.partition(b"\x00")[0].decode("latin-1"), ""
    return None


def _png_strip(chunks):
    """The chunks without ours: the `cityclf` record, and the aesthetic_score chunk that record says we wrote."""
    ours = None
    for ctype, body in chunks:
        t = _png_text(ctype, body)
        if t and t[0] == RECORD_KEY:
            try:
                ours = json.loads(t[1])
            except ValueError:
                ours = {}
    if ours is None:
        return chunks
    written = ours.get(AESTHETIC_KEY) if isinstance(ours, dict) else None
    kept = []
    for ctype, body in chunks:
        t = _png_text(ctype, body)
        if t and (t[0] == RECORD_KEY or (ctype == b"tEXt" and t[0] == AESTHETIC_KEY and t[1] == written)):
            continue
        kept.append((ctype, body))
    return kept


def _png_set(data: bytes, record: dict) -> bytes:
    chunks = _png_strip(_png_chunks(data))
    record = dict(record)
    foreign_score = any((t := _png_text(c, b)) and t[0] == AESTHETIC_KEY for c, b in chunks)
    if foreign_score:  # another tool's aesthetic_score: kept, and ours not added beside it
        record.pop(AESTHETIC_KEY, None)
    new = [(b"iTXt", RECORD_KEY.encode() + b"\x00\x00\x00\x00\x00" + record_text(record).encode("utf-8"))]
    if AESTHETIC_KEY in record:
        new.append((b"tEXt", AESTHETIC_KEY.encode() + b"\x00" + record[AESTHETIC_KEY].encode("latin-1")))
    at = next(i for i, (c, _) in enumerate(chunks) if c == b"IDAT")
    out = _png_join(chunks[:at] + new + chunks[at:])
    return data if out == data else out


def png_image_data(data: bytes) -> list[bytes]:
    """The image-data chunks of a PNG (IDAT, and an APNG's fdAT), for checking they were not touched."""
    return [body for c, body in _png_chunks(data) if c in (b"IDAT", b"fdAT")]


# ---------------------------------------------------------------- XMP (JPEG and WebP)


def _our_block(record: dict, added: list[str]) -> str:
    attrs = "".join(f' cityclf:{k}="{escape(v, {chr(34): "&quot;"})}"' for k, v in
                    ((AESTHETIC_KEY, record.get(AESTHETIC_KEY)), ("added", " ".join(added))) if v)
    return f"{_OURS_START}{attrs}><cityclf:json>{escape(record_text(record))}</cityclf:json></rdf:Description>"


def _added_of(block: str) -> list[str]:
    m = re.search(r'cityclf:added="([^"]*)"', block[: block.index(">")])
    return m.group(1).split() if m else []


def _xmp_edit(data: bytes, kind: str, record: dict | None) -> bytes:
    """Set (record) or strip (None) our XMP block in a JPEG or WebP.

    Our block lists in `cityclf:added` what else we added to the file (`packet`: the whole XMP packet;
    WebP `vp8x`: the VP8X header, `flag`: its XMP flag), so that stripping undoes exactly that."""
    parts, packet = _xmp_packet(data, kind)
    added: list[str] = []
    if packet is not None:
        m = _OURS.search(packet)
        if m:
            added = _added_of(m.group(0))
            packet = packet[: m.start()] + packet[m.end():]
    if record is None:
        out = (_jpeg_with if kind == "jpeg" else _webp_with)(parts, None if "packet" in added else packet, added)
        return data if out == data else out
    if packet is None:
        added.append("packet")
    if kind == "webp":
        head = parts["chunks"][0]
        if head[0] != b"VP8X" and "vp8x" not in added:
            added.append("vp8x")
        elif head[0] == b"VP8X" and not head[1][0] & 0x04 and "flag" not in added:
            added.append("flag")
    if packet is None:
        packet = _SKELETON.format(_our_block(record, added))
    else:
        end = packet.rfind("</rdf:RDF>")
        if end < 0:
            raise ContainerError("its XMP packet has no rdf:RDF element we can add to; left untouched")
        packet = packet[:end] + _our_block(record, added) + packet[end:]
    out = (_jpeg_with if kind == "jpeg" else _webp_with)(parts, packet, [])
    return data if out == data else out


def _xmp_packet(data: bytes, kind: str):
    parts = _jpeg_parts(data) if kind == "jpeg" else _webp_parts(data)
    raw = parts["xmp"]
    if raw is None:
        return parts, None
    try:
        return parts, raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ContainerError("its XMP packet is not UTF-8; left untouched") from None


# ---------------------------------------------------------------- JPEG


def _jpeg_parts(data: bytes) -> dict:
    """The segments before the scan ([(marker, payload)]), the index of the XMP one, and the rest of the file."""
    pos, segments = 2, []
    while True:
        while pos < len(data) and data[pos] == 0xFF and pos + 1 < len(data) and data[pos + 1] == 0xFF:
            pos += 1  # fill bytes
        if pos + 4 > len(data) or data[pos] != 0xFF:
            raise ContainerError(f"JPEG marker expected at byte {pos} (damaged or truncated)")
        marker = data[pos + 1]
        if marker == 0xDA:  # start of scan: the rest is image data, kept as it is
            break
        if marker in (0x01, *range(0xD0, 0xD9)):
            raise ContainerError(f"unexpected JPEG marker 0xFF{marker:02X} before the image data")
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        if length < 2 or pos + 2 + length > len(data):
            raise ContainerError(f"JPEG segment 0xFF{marker:02X} at byte {pos} runs past the end (truncated)")
        segments.append((marker, data[pos + 4 : pos + 2 + length]))
        pos += 2 + length
    xmp = [i for i, (m, p) in enumerate(segments) if m == 0xE1 and p.startswith(XMP_HEADER)]
    if len(xmp) > 1:
        raise ContainerError("more than one XMP segment; left untouched")
    index = xmp[0] if xmp else None
    return {"segments": segments, "index": index, "tail": data[pos:],
            "xmp": segments[index][1][len(XMP_HEADER):] if index is not None else None}


def _jpeg_with(parts: dict, packet: str | None, removed: list[str]) -> bytes:
    segments, index = list(parts["segments"]), parts["index"]
    if packet is None:
        if index is not None:
            del segments[index]
    else:
        payload = XMP_HEADER + packet.encode("utf-8")
        if len(payload) > _JPEG_MAX_SEGMENT:
            raise ContainerError("the XMP packet would exceed a JPEG segment's 64 KB; left untouched")
        if index is not None:
            segments[index] = (0xE1, payload)
        else:  # after the leading APP0 (JFIF) / APP1 (Exif) segments
            at = next((i for i, (m, _) in enumerate(segments) if m not in (0xE0, 0xE1)), len(segments))
            segments.insert(at, (0xE1, payload))
    out = [b"\xff\xd8"] + [struct.pack(">BBH", 0xFF, m, len(p) + 2) + p for m, p in segments]
    return b"".join(out) + parts["tail"]


def jpeg_image_data(data: bytes) -> bytes:
    """Everything from the JPEG's start of scan on (the compressed image), for checking it was not touched."""
    return _jpeg_parts(data)["tail"]


# ---------------------------------------------------------------- WebP (RIFF)


def _webp_parts(data: bytes) -> dict:
    size = struct.unpack("<I", data[4:8])[0]
    if size + 8 != len(data):
        raise ContainerError(f"WebP RIFF size says {size + 8} bytes, the file has {len(data)} (damaged or truncated)")
    pos, chunks = 12, []
    while pos < len(data):
        if pos + 8 > len(data):
            raise ContainerError(f"WebP chunk header cut short at byte {pos}")
        fourcc, length = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        end = pos + 8 + length
        if end > len(data):
            raise ContainerError(f"WebP chunk {fourcc!r} at byte {pos} runs past the end (truncated)")
        chunks.append((fourcc, data[pos + 8 : end]))
        pos = end + (length & 1)
    if not chunks or chunks[0][0] not in (b"VP8 ", b"VP8L", b"VP8X"):
        raise ContainerError("WebP without a VP8, VP8L or VP8X chunk first")
    if chunks[0][0] != b"VP8X" and len(chunks) != 1:
        raise ContainerError("simple-format WebP with extra chunks; left untouched")
    xmp = [i for i, (c, _) in enumerate(chunks) if c == b"XMP "]
    if len(xmp) > 1:
        raise ContainerError("more than one XMP chunk; left untouched")
    index = xmp[0] if xmp else None
    return {"chunks": chunks, "index": index, "xmp": chunks[index][1] if index is not None else None}


def _vp8x_for(fourcc: bytes, body: bytes) -> bytes:
    """A VP8X header (flags, canvas size) for a simple-format WebP's one image chunk."""
    if fourcc == b"VP8 ":
        if len(body) < 10 or body[3:6] != b"\x9d\x01\x2a":
            raise ContainerError("WebP VP8 chunk without its frame header")
        w, h = (struct.unpack("<H", body[6:8])[0] & 0x3FFF), (struct.unpack("<H", body[8:10])[0] & 0x3FFF)
        flags = 0
    else:
        if len(body) < 5 or body[0] != 0x2F:
            raise ContainerError("WebP VP8L chunk without its signature")
        bits = struct.unpack("<I", body[1:5])[0]
        w, h = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        flags = 0x10 if (bits >> 28) & 1 else 0
    return bytes([flags, 0, 0, 0]) + (w - 1).to_bytes(3, "little") + (h - 1).to_bytes(3, "little")


def _webp_with(parts: dict, packet: str | None, removed: list[str]) -> bytes:
    """The WebP with `packet` as its XMP (None: no XMP chunk), undoing the structures in `removed`."""
    chunks, index = list(parts["chunks"]), parts["index"]
    if packet is None:
        if index is not None:
            del chunks[index]
    elif index is not None:
        chunks[index] = (b"XMP ", packet.encode("utf-8"))
    else:
        chunks.append((b"XMP ", packet.encode("utf-8")))
    if packet is not None and chunks[0][0] != b"VP8X":
        chunks.insert(0, (b"VP8X", _vp8x_for(*chunks[0])))
    if packet is not None:
        chunks[0] = (b"VP8X", bytes([chunks[0][1][0] | 0x04]) + chunks[0][1][1:])
    if "vp8x" in removed and chunks[0][0] == b"VP8X":
        chunks = chunks[1:]
    elif "flag" in removed and chunks[0][0] == b"VP8X":
        chunks[0] = (b"VP8X", bytes([chunks[0][1][0] & ~0x04 & 0xFF]) + chunks[0][1][1:])
    return _webp_join(chunks)


def _webp_join(chunks) -> bytes:
    body = b"WEBP" + b"".join(c + struct.pack("<I", len(d)) + d + (b"\x00" if len(d) & 1 else b"") for c, d in chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def webp_image_data(data: bytes) -> list[bytes]:
    """The image chunks of a WebP (VP8, VP8L, ALPH, ANMF), for checking they were not touched."""
    return [d for c, d in _webp_parts(data)["chunks"] if c in (b"VP8 ", b"VP8L", b"ALPH", b"ANMF")]


def image_data(data: bytes):
    """The compressed image data of a PNG, JPEG or WebP (what a metadata write must leave byte-identical)."""
    return {"png": png_image_data, "jpeg": jpeg_image_data, "webp": webp_image_data}[kind_of(data)](data)


__all__ = ["ContainerError", "image_data", "kind_of", "read_metadata", "set_metadata", "strip_metadata"]
