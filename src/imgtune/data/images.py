"""Decode any image file to an RGB PIL image, safely. The bad-file policy lives here and only here:
a file that cannot be used raises BadImage with a reason a person can act on; callers skip and report.
Input files are only ever read."""

from __future__ import annotations

import io
import os
import stat
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Pillow's own default guard (about 89 megapixels): a 4000x3000 photo passes, a 30000x30000 bomb doesn't.
MAX_PIXELS = 89_478_485


class BadImage(Exception):
    """This file cannot be used as an image; `str()` is the reason."""


def not_regular(path: str | os.PathLike) -> str | None:
    """Why `path` is not a regular file (a FIFO, socket or device would block or never end on read),
    found without opening it; None for a regular file. A missing file is left to the caller's open."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    kind = ("a folder" if stat.S_ISDIR(mode) else "a named pipe (FIFO)" if stat.S_ISFIFO(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "not a regular file")
    return f"{kind}, not a regular file: skipped without opening it"


def read_bytes(path: str) -> bytes:
    reason = not_regular(path)
    if reason:
        raise BadImage(reason)
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise BadImage(f"cannot read the file ({e.strerror or e})") from None


def decode_rgb(data: bytes, *, draft_size: int | None = None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Bytes of an image file -> RGB image, EXIF orientation applied, first frame of animations.

    `draft_size` lets JPEG decode at a reduced scale (DCT scaling) while keeping both sides at least that
    large: the full-size pixels of a 12-megapixel photo are never made when a 224 px input is wanted.
    """
    if not data:
        raise BadImage("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise BadImage(f"image declares {w}x{h} = {w * h:,} pixels, over the limit of "
                               f"{max_pixels:,} (decompression bomb guard)")
            if w < 1 or h < 1:
                raise BadImage(f"image has no pixels ({w}x{h})")
            if draft_size and img.format == "JPEG":
                img.draft("RGB", (draft_size, draft_size))
            img.load()
            img = _oriented(img)
            return to_rgb(img)
    except BadImage:
        raise
    except UnidentifiedImageError:
        kind = _claimed_format(data)
        raise BadImage(f"corrupt {kind} file (its header cannot be read)" if kind
                       else "not a recognised image format") from None
    except Image.DecompressionBombError as e:
        raise BadImage(f"decompression bomb guard: {e}") from None
    except (OSError, SyntaxError, ValueError, TypeError, EOFError, MemoryError) as e:
        raise BadImage(f"corrupt or truncated image ({type(e).__name__}: {e})") from None


def decoded_pixels(source, *, draft_size: int | None = None) -> int:
    """How many pixels `decode_rgb` would make of this file (bytes, or a binary file object, left at its
    start), read from its header alone: JPEG's reduced-scale decoding counted. 0 for anything Pillow
    cannot open, which decoding then refuses with its reason."""
    f = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(f) as img:
                if draft_size and img.format == "JPEG":
                    img.draft("RGB", (draft_size, draft_size))
                w, h = img.size
                return w * h
    except Exception:  # noqa: BLE001 - whatever it is, decoding names it
        return 0
    finally:
        f.seek(0)


_SIGNATURES = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF8": "GIF", b"BM": "BMP",
               b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}


def _claimed_format(data: bytes) -> str | None:
    """The format a file's first bytes claim, when Pillow could not open it anyway."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((kind for magic, kind in _SIGNATURES.items() if data.startswith(magic)), None)


def load_rgb(path: str | os.PathLike, **kw) -> Image.Image:
    return decode_rgb(read_bytes(str(path)), **kw)


def _oriented(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag; a broken EXIF block leaves the pixels as stored."""
    try:
        return ImageOps.exif_transpose(img)
    except (OSError, ValueError, TypeError, KeyError, SyntaxError):
        return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB. High-bit-depth greys are scaled to 0..255, not clipped; transparent
    pixels are laid on white (what a viewer shows), not on whatever colour they happen to store."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_scale_to_uint8(np.asarray(img)), "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def _scale_to_uint8(arr: np.ndarray) -> np.ndarray:
    arr = arr.astype(np.float64)
    if arr.dtype.kind == "f" and arr.size and arr.max() <= 1.0 and arr.min() >= 0.0 and arr.max() > 0:
        full = 1.0
    else:
        # 16-bit data stays in 0..65535; values past 255 say it is not already 8-bit.
        full = 65535.0 if arr.size and arr.max() > 255 else 255.0
    return np.clip(np.round(arr / full * 255.0), 0, 255).astype(np.uint8)
