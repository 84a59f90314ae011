"""Every odd image mode decodes to correct RGB; bad files raise BadImage with a reason."""

import io

import numpy as np
import pytest
from PIL import Image

from imgtune.data.images import BadImage, decode_rgb


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def pixel(data: bytes, xy=(2, 2)):
    img = decode_rgb(data)
    assert img.mode == "RGB"
    return img.getpixel(xy)


def test_grey_becomes_equal_rgb():
    assert pixel(encode(Image.new("L", (8, 8), 77), "PNG")) == (77, 77, 77)


def test_16_bit_grey_is_scaled_not_clipped():
    arr = np.full((8, 8), 65535, np.uint16)
    arr[0, 0] = 32896  # half-way
    data = encode(Image.fromarray(arr), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    assert pixel(data) == (255, 255, 255)
    assert pixel(data, (0, 0)) == (128, 128, 128)


def test_transparent_pixels_become_white():
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    assert pixel(encode(rgba, "PNG")) == (255, 255, 255)
    half = Image.new("RGBA", (8, 8), (0, 0, 0, 128))
    assert pixel(encode(half, "PNG"))[0] == pytest.approx(127, abs=1)


def test_la_and_palette_with_transparency():
    la = Image.new("LA", (8, 8), (0, 0))
    assert pixel(encode(la, "PNG")) == (255, 255, 255)
    p = Image.new("P", (8, 8), 1)
    p.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    assert pixel(encode(p, "PNG")) == (0, 200, 0)
    p.info["transparency"] = 1
    assert pixel(encode(p, "PNG", transparency=1)) == (255, 255, 255)


def test_cmyk_jpeg():
    r, g, b = pixel(encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95))
    assert r > 230 and g < 30 and b < 30


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (30, 10), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 10, 10))  # white block on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = decode_rgb(encode(img, "JPEG", exif=exif, quality=95))
    assert out.size == (10, 30)
    assert out.getpixel((5, 5))[0] > 200 and out.getpixel((5, 25))[0] < 50  # white block now on top


def test_animated_gif_gives_first_frame():
    frames = [Image.new("P", (8, 8), i) for i in (1, 2)]
    for f in frames:
        f.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * 759)
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    assert pixel(buf.getvalue()) == (255, 0, 0)


def test_jpeg_draft_keeps_at_least_the_requested_size():
    data = encode(Image.new("RGB", (1600, 1200), (10, 20, 30)), "JPEG")
    img = decode_rgb(data, draft_size=224)
    assert min(img.size) >= 224 and img.size[0] < 1600


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"),
    (b"<html><body>not an image</body></html>", "not a recognised image"),
])
def test_unusable_bytes(data, reason):
    with pytest.raises(BadImage, match=reason):
        decode_rgb(data)


def test_truncated_files():
    jpeg = encode(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")
    png = encode(Image.effect_noise((64, 64), 50), "PNG")
    for data in (jpeg[: len(jpeg) // 2], png[: len(png) // 2]):
        with pytest.raises(BadImage, match="corrupt or truncated"):
            decode_rgb(data)


def test_decompression_bomb_is_refused_from_its_header(monkeypatch):
    """Refused before a single pixel is decoded (so it costs nothing, however slow the machine)."""
    from PIL import ImageFile

    data = encode(Image.new("1", (30000, 30000)), "PNG")
    assert len(data) < 200_000
    loads = []
    real = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(self.size) or real(self))
    with pytest.raises(BadImage, match="bomb"):
        decode_rgb(data)
    assert loads == []
    decode_rgb(encode(Image.new("1", (300, 300)), "PNG"))  # the patch does see a decode
    assert loads and set(loads) == {(300, 300)}
