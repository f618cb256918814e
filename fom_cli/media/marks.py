"""What fom writes says that it is synthetic: metadata in every file, and optionally a mark on the picture.

fom makes a person in a photo do what someone else did. Every video, GIF and PNG it writes carries, by
default, IPTC's digital source type for such media (trainedAlgorithmicMedia, what news agencies and
platforms read), the tool and its version, the model and the source image's file name:

    MP4 / MOV     container tags (ffmpeg -metadata, kept as mdta keys with use_metadata_tags)
    MKV / WebM    container tags
    PNG           an iTXt chunk with an XMP packet (Iptc4xmpExt:DigitalSourceType), and tEXt Software/Comment
    GIF           a comment extension block

`fom inspect FILE` reads them back (and a C2PA manifest, where one is). Metadata can be stripped by anyone
who re-encodes a file: it is a courtesy to whoever looks at it next, not a guarantee. The visible mark
(`--visible-mark [TEXT]`) is a small label burnt into a corner of every frame.
"""

import json
import os
import re
import struct
import zlib
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
DEFAULT_VISIBLE_MARK = "AI-generated"
# The keys fom writes into containers and reads back (fom inspect).
KEYS = ("digital_source_type", "tool", "model", "source_image")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
XMP_KEYWORD = b"XML:com.adobe.xmp"


@dataclass(frozen=True)
class SyntheticMedia:
    """What an output says about itself."""

    tool: str
    model: str
    source_image: Optional[str] = None
    digital_source_type: str = DIGITAL_SOURCE_TYPE

    def fields(self):
        return {key: value for key, value in asdict(self).items() if value is not None}

    def comment(self):
        """One line for the places that take free text (a GIF comment, PNG's Comment, a container comment)."""
        return f"Synthetic media (IPTC digital source type: {self.digital_source_type}) " + json.dumps(self.fields())

    # -- containers (ffmpeg) ------------------------------------------------------------------------

    def ffmpeg_arguments(self):
        """ffmpeg output options that write the fields as container tags (MP4 and MOV keep tags of other
        names than their own only with -movflags +use_metadata_tags)."""
        arguments = []
        for key, value in self.fields().items():
            arguments += ["-metadata", f"{key}={value}"]
        arguments += ["-metadata", f"comment={self.comment()}"]
        return arguments

    # -- PNG ----------------------------------------------------------------------------------------

    def xmp(self):
        fields = self.fields()
        escaped = {key: _xml_escape(value) for key, value in fields.items()}
        return ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
                '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
                '<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" '
                'xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmlns:fom="https://github.com/fom/ns/1.0/" '
                f'Iptc4xmpExt:DigitalSourceType="{escaped["digital_source_type"]}" '
                f'xmp:CreatorTool="{escaped["tool"]}" fom:model="{escaped["model"]}"'
                + (f' fom:sourceImage="{escaped["source_image"]}"' if "source_image" in escaped else "")
                + '/></rdf:RDF></x:xmpmeta><?xpacket end="r"?>')

    def png(self, encoded):
        """PNG bytes with the XMP packet and Software/Comment text chunks after the header chunk."""
        if not encoded.startswith(PNG_SIGNATURE):
            raise ValueError("not a PNG")
        header_end = len(PNG_SIGNATURE) + 8 + struct.unpack(">I", encoded[8:12])[0] + 4
        chunks = (_png_chunk(b"iTXt", XMP_KEYWORD + b"\0\0\0\0\0" + self.xmp().encode("utf-8"))
                  + _png_chunk(b"tEXt", b"Software\0" + self.tool.encode("latin-1", "replace"))
                  + _png_chunk(b"iTXt", b"Comment\0\0\0\0\0" + self.comment().encode("utf-8")))
        return encoded[:header_end] + chunks + encoded[header_end:]

    # -- GIF ----------------------------------------------------------------------------------------

    def gif(self, encoded):
        """GIF bytes with a comment extension after the global colour table."""
        if encoded[:6] not in (b"GIF87a", b"GIF89a"):
            raise ValueError("not a GIF")
        flags = encoded[10]
        table = 3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0
        at = 13 + table
        text = self.comment().encode("ascii", "replace")
        blocks = b"".join(bytes([len(text[i:i + 255])]) + text[i:i + 255] for i in range(0, len(text), 255))
        return b"GIF89a" + encoded[6:at] + b"\x21\xfe" + blocks + b"\0" + encoded[at:]


def _xml_escape(text):
    return (str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;"))


def _png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


# --- reading back --------------------------------------------------------------------------------------

def png_text(data):
    """{keyword: text} of a PNG's tEXt and iTXt chunks (uncompressed ones)."""
    texts, at = {}, len(PNG_SIGNATURE)
    while at + 8 <= len(data):
        length, kind = struct.unpack(">I", data[at:at + 4])[0], data[at + 4:at + 8]
        body = data[at + 8:at + 8 + length]
        if kind == b"tEXt" and b"\0" in body:
            key, value = body.split(b"\0", 1)
            texts[key.decode("latin-1")] = value.decode("latin-1")
        elif kind == b"iTXt" and b"\0" in body:
            # keyword, compression flag and method, language tag, translated keyword, text
            key, rest = body.split(b"\0", 1)
            compressed, rest = rest[0], rest[2:]
            _language, _translated, value = rest.split(b"\0", 2)
            if not compressed:
                texts[key.decode("latin-1")] = value.decode("utf-8", "replace")
        if kind == b"IEND":
            break
        at += 12 + length
    return texts


def gif_comments(data):
    """The comment extensions of a GIF, as text."""
    comments, at = [], data.find(b"\x21\xfe")
    while at != -1:
        text, cursor = b"", at + 2
        while cursor < len(data) and data[cursor] != 0:
            size = data[cursor]
            text += data[cursor + 1:cursor + 1 + size]
            cursor += 1 + size
        comments.append(text.decode("ascii", "replace"))
        at = data.find(b"\x21\xfe", cursor)
    return comments


def fields_in_text(text):
    """fom's fields from a comment or an XMP packet, or None."""
    match = re.search(r"\{.*\}", text or "")
    if match:
        try:
            fields = json.loads(match.group(0))
            if fields.get("digital_source_type"):
                return fields
        except ValueError:
            pass
    match = re.search(r'Iptc4xmpExt:DigitalSourceType="([^"]+)"', text or "")
    if match:
        fields = {"digital_source_type": match.group(1)}
        for key, attribute in (("tool", "xmp:CreatorTool"), ("model", "fom:model"), ("source_image", "fom:sourceImage")):
            found = re.search(rf'{attribute}="([^"]*)"', text)
            if found:
                fields[key] = found.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">").replace(
                    "&amp;", "&")
        return fields
    return None


def read_label(path):
    """fom's fields as a file states them ({} for none): PNG text chunks, GIF comments, container tags."""
    from fom_cli.media.ffmpeg import run_ffmpeg

    extension = os.path.splitext(os.fspath(path))[1].lower()
    if extension in (".png", ".gif"):
        with open(path, "rb") as file:
            data = file.read()
        texts = list(png_text(data).values()) if extension == ".png" else gif_comments(data)
    else:
        result = run_ffmpeg(["-v", "error", "-i", os.fspath(path), "-f", "ffmetadata", "-"])
        if result.returncode != 0:
            raise ValueError(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "ffmpeg failed")
        # ffmetadata escapes '=', ';', '#', '\\' and newlines with a backslash.
        pairs = (re.split(r"(?<!\\)=", line, maxsplit=1)
                 for line in result.stdout.splitlines() if line and line[0] != ";")
        tags = {re.sub(r"\\(.)", r"\1", pair[0]).lower(): re.sub(r"\\(.)", r"\1", pair[1], flags=re.S)
                for pair in pairs if len(pair) == 2}
        fields = {key: tags[key] for key in KEYS if key in tags}
        texts = [tags.get("comment", "")] if "digital_source_type" not in fields else []
        if fields.get("digital_source_type"):
            return fields
    for text in texts:
        fields = fields_in_text(text)
        if fields:
            return fields
    return {}


# --- the visible mark ----------------------------------------------------------------------------------

class VisibleMark:
    """A small label (white text on a dark, half-transparent box) in a corner of frames of one size: the
    corner farthest from the boxes to avoid (faces pasted back), bottom right when none."""

    def __init__(self, text, frame_size, avoid=()):
        from PIL import Image, ImageDraw, ImageFont

        height, width = frame_size
        font_size = max(10, round(min(height, width) / 24))
        try:
            font = ImageFont.load_default(size=font_size)
        except TypeError:   # Pillow before 10.1: one small bitmap font
            font = ImageFont.load_default()
        left, top, right, bottom = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((0, 0), text, font=font)
        pad = max(2, font_size // 4)
        box_width = min(width, right - left + 2 * pad)
        box_height = min(height, bottom - top + 2 * pad)
        label = Image.new("L", (box_width, box_height), 0)
        ImageDraw.Draw(label).text((pad - left, pad - top), text, fill=255, font=font)
        self.text_alpha = np.asarray(label, dtype=np.float32)[..., None] / 255
        self.margin = max(2, font_size // 3)
        corners = {
            "bottom right": (height - box_height - self.margin, width - box_width - self.margin),
            "bottom left": (height - box_height - self.margin, self.margin),
            "top right": (self.margin, width - box_width - self.margin),
            "top left": (self.margin, self.margin),
        }
        corners = {name: (max(0, y), max(0, x)) for name, (y, x) in corners.items()}

        def overlap(corner):
            y, x = corners[corner]
            return sum(max(0, min(x + box_width, right) - max(x, left)) * max(0, min(y + box_height, bottom) - max(y, top))
                       for left, top, right, bottom in avoid)

        self.corner = min(corners, key=overlap)   # the first, bottom right, among equals
        self.top, self.left = corners[self.corner]
        self.box = (self.left, self.top, self.left + box_width, self.top + box_height)

    def apply(self, frame):
        """The frame (uint8 or float [0, 1], H x W x 3) with the label drawn: a copy."""
        frame = np.array(frame, copy=True)
        scale = 255.0 if frame.dtype == np.uint8 else 1.0
        left, top, right, bottom = self.box
        region = frame[top:bottom, left:right].astype(np.float32)
        shaded = region * 0.45   # the box: the picture darkened, so the white text reads on any background
        marked = shaded + (scale - shaded) * self.text_alpha
        frame[top:bottom, left:right] = np.round(marked).astype(frame.dtype) if frame.dtype == np.uint8 else marked
        return frame
