"""A generated corpus of odd and broken image files: what real folders of photos contain."""

import io
import os
import struct
import zlib

import numpy as np
from conftest import make_image
from PIL import Image


def _png_with_bad_crc(img) -> bytes:
    data = bytearray(_encode(img, "PNG"))
    data[29] ^= 0xFF  # the IHDR chunk's CRC
    return bytes(data)


def _encode(img, fmt, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def bomb_png() -> bytes:
    """A 30000x30000 PNG header in a few hundred bytes."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))


def write_corpus(folder, cls: str, seed: int = 0) -> tuple[list[str], dict[str, str]]:
    """Odd-but-good and bad files of one class in `folder` -> (good paths, {bad path: expected reason})."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    base = make_image(cls, rng, size=48)
    good, bad = {}, {}
    good["cmyk.jpg"] = _encode(base.convert("CMYK"), "JPEG")
    good["grey16.png"] = _encode(Image.fromarray((np.asarray(base.convert("L"), np.uint16) * 257)), "PNG")
    pal = base.convert("P", palette=Image.Palette.ADAPTIVE)
    pal.info["transparency"] = 0
    good["palette_transparent.png"] = _encode(pal, "PNG", transparency=0)
    good["la.png"] = _encode(base.convert("LA"), "PNG")
    for orientation in range(2, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        good[f"exif_{orientation}.jpg"] = _encode(base, "JPEG", exif=exif.tobytes())
    frames = [base, make_image(cls, rng, size=48)]
    good["animated.gif"] = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    good["one_pixel.png"] = _encode(base.resize((1, 1)), "PNG")
    good["image.webp"] = _encode(base, "WEBP")
    good["pages.tiff"] = _encode(frames[0], "TIFF", save_all=True, append_images=frames[1:])
    bad["zero.jpg"] = (b"", "empty file")
    jpeg, png = _encode(base, "JPEG"), _encode(Image.effect_noise((64, 64), 60), "PNG")
    bad["truncated.jpg"] = (jpeg[: len(jpeg) // 2], "truncated")
    bad["truncated.png"] = (png[: len(png) // 2], "truncated")
    bad["bad_crc.png"] = (_png_with_bad_crc(base), "corrupt")
    bad["page.jpg"] = (b"<!DOCTYPE html><html><body>404</body></html>", "not a recognised image format")
    bad["bomb.png"] = (bomb_png(), "bomb")
    paths = []
    for name, data in good.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
        paths.append(os.path.join(str(folder), name))
    non_utf8 = os.path.join(os.fsencode(folder), b"caf\xe9.png")  # a Latin-1 name, invalid as UTF-8
    with open(non_utf8, "wb") as f:
        f.write(_encode(base, "PNG"))
    paths.append(os.fsdecode(non_utf8))
    reasons = {}
    for name, (data, reason) in bad.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
        reasons[os.path.join(str(folder), name)] = reason
    loop = os.path.join(str(folder), "loop.jpg")
    os.symlink("loop.jpg", loop)  # points at itself
    reasons[loop] = "cannot read the file"
    locked = os.path.join(str(folder), "locked.png")
    with open(locked, "wb") as f:
        f.write(_encode(base, "PNG"))
    os.chmod(locked, 0)
    if os.geteuid() == 0:  # root reads it anyway: then it is simply a good image
        paths.append(locked)
    else:
        reasons[locked] = "cannot read the file"
    return paths, reasons
