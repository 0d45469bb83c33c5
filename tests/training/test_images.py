from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from training.model.images import ImageRejected, decode_image, load_for_model, probe_image


def _encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    out = decode_image(_encode(img, "JPEG", exif=exif))
    assert out.size == (20, 40)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "L", "CMYK", "1", "I;16"])
def test_every_mode_becomes_rgb(mode: str) -> None:
    img = Image.new(mode, (16, 16))
    fmt = "TIFF" if mode in ("CMYK", "I;16") else "PNG"
    assert decode_image(_encode(img, fmt)).mode == "RGB"


def test_transparency_is_composited_on_white() -> None:
    img = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    arr = np.asarray(decode_image(_encode(img, "PNG")))
    assert (arr == 255).all()


def test_decompression_bomb_is_refused_from_the_header() -> None:
    bomb = _encode(Image.new("1", (10_000, 10_000)), "PNG")  # 100 MP in a few kB
    assert len(bomb) < 200_000
    with pytest.raises(ImageRejected, match="too large") as err:
        decode_image(bomb)
    assert err.value.code == "image_too_large"
    # below Pillow's own bomb threshold, our configurable limit applies before any decoding
    big = _encode(Image.new("1", (8_000, 8_000)), "PNG")
    with pytest.raises(ImageRejected, match="above the limit of 50000000") as err:
        probe_image(big, max_pixels=50_000_000)
    assert err.value.code == "image_too_large"


def test_truncated_and_garbage_files_are_rejected() -> None:
    good = _encode(Image.new("RGB", (64, 64), (10, 200, 30)), "JPEG")
    with pytest.raises(ImageRejected, match="corrupt or truncated"):
        decode_image(good[: len(good) // 2])
    with pytest.raises(ImageRejected, match="not a recognised image"):
        decode_image(b"GIF89a but not really")
    with pytest.raises(ImageRejected, match="not a recognised image"):
        decode_image(b"")


def test_unsupported_format_is_refused() -> None:
    ico = _encode(Image.new("RGB", (16, 16)), "ICO")
    with pytest.raises(ImageRejected) as err:
        probe_image(ico)
    assert err.value.code == "unsupported_media_type"


def test_model_input_is_resized_and_centre_cropped() -> None:
    img = Image.new("RGB", (300, 100), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 100, 100))  # left third red: cropped away
    arr = load_for_model(_encode(img, "PNG"), 64)
    assert arr.shape == (64, 64, 3) and arr.dtype == np.uint8
    assert arr[..., 2].mean() > 250 and arr[..., 0].mean() < 5


def test_real_photos_decode(coco_mini) -> None:  # type: ignore[no-untyped-def]
    for path in sorted((coco_mini / "images").glob("*.jpg"))[:5]:
        info = probe_image(path)
        assert info.format == "JPEG" and info.width > 100
        assert load_for_model(path, 224).shape == (224, 224, 3)
