"""Safe, fast image decoding shared by training, indexing and the service.

Every image that enters the system goes through `decode_image`, so the limits
(pixel count, formats) and the normalisations (EXIF orientation, colour modes)
are the same for a dataset on disk and for an upload over HTTP.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pillow_heif
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# HEIC/HEIF (what iPhones write) through libheif; AVIF is Pillow's own plugin.
pillow_heif.register_heif_opener()

#: Formats we decode. Anything else (PSD, EPS, ...) is refused before decoding.
ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO", "AVIF", "HEIF"})
#: File suffixes that folder scans and archives treat as images; other files are skipped with a reason.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif", ".heic",
                            ".heif"})
#: Default pixel budget: 64 MP is above any phone photo and far below a bomb.
DEFAULT_MAX_PIXELS = 64_000_000

# A truncated JPEG is a corrupt file, not a partially valid image.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageRejected(ValueError):
    """An input that is not an image we accept; the message says why, for the user."""

    def __init__(self, message: str, code: str = "invalid_image") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int

    @property
    def mime(self) -> str:
        return Image.MIME.get(self.format, "application/octet-stream")


def _open(source: bytes | str | Path) -> Image.Image:
    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(fp)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(f"image is too large to decode safely: {exc}", "image_too_large") from exc
    except UnidentifiedImageError as exc:
        raise ImageRejected("not a recognised image file "
                            "(expected JPEG, PNG, WebP, AVIF, HEIC, GIF, BMP or TIFF)") from exc
    except OSError as exc:
        raise ImageRejected(f"corrupt or truncated image: {exc}") from exc


def probe_image(source: bytes | str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Read only the header: format and size, and apply the format and pixel limits."""
    img = _open(source)
    try:
        return _check(img, max_pixels)
    finally:
        img.close()


#: EXIF orientations (5-8) whose transpose swaps width and height.
_SWAPS_AXES = frozenset({5, 6, 7, 8})


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1))
    except Exception:  # a broken EXIF block is no reason to refuse the pixels
        return 1


def _check(img: Image.Image, max_pixels: int) -> ImageInfo:
    """Format and pixel limits; the size reported is the upright one (after the EXIF rotation we apply)."""
    fmt = img.format or "?"
    if fmt not in ALLOWED_FORMATS:
        raise ImageRejected(f"unsupported image format {fmt}", "unsupported_media_type")
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageRejected("image has no pixels")
    if w * h > max_pixels:
        raise ImageRejected(
            f"image is {w}x{h} = {w * h} pixels, above the limit of {max_pixels} (max_image_pixels)", "image_too_large"
        )
    if _orientation(img) in _SWAPS_AXES:
        w, h = h, w
    return ImageInfo(fmt, w, h)


def to_rgb(img: Image.Image) -> Image.Image:
    """Flatten any mode to RGB; transparency is composited on white, not black."""
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "RGBa"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float32)
        hi = float(arr.max()) or 1.0
        return Image.fromarray((arr / hi * 255.0).astype(np.uint8)).convert("RGB")
    return img.convert("RGB")


def decode_image(
    source: bytes | str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None
) -> Image.Image:
    """Decode to an upright RGB image.

    `draft_size` lets JPEG decode at a reduced scale (DCT scaling) when the
    consumer only needs a small image: a 4000x3000 photo for a 224 px model
    decodes several times faster and never holds 36 MB of pixels.
    """
    return _decode_with_info(source, max_pixels, draft_size)[0]


def _decode_with_info(source: bytes | str | Path, max_pixels: int, draft_size: int | None
                      ) -> tuple[Image.Image, ImageInfo]:
    img = _open(source)
    try:
        info = _check(img, max_pixels)
        if draft_size and img.format in ("JPEG", "MPO"):
            img.draft("RGB", (draft_size, draft_size))
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()
        img = ImageOps.exif_transpose(img) or img
        return to_rgb(img), info
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(f"image is too large to decode safely: {exc}", "image_too_large") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageRejected(f"corrupt or truncated image: {exc}") from exc


def resize_center_crop(img: Image.Image, size: int) -> np.ndarray:
    """Shortest side to `size` (bicubic), centre crop: CLIP's own eval transform, as uint8 HWC."""
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (nw - size) // 2, (nh - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8)


def load_for_model(source: bytes | str | Path, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode and prepare one image for a `size`-pixel model input (uint8 HWC)."""
    return load_with_info(source, size, max_pixels)[0]


def load_with_info(source: bytes | str | Path, size: int, max_pixels: int = DEFAULT_MAX_PIXELS
                   ) -> tuple[np.ndarray, ImageInfo]:
    """`load_for_model` plus the original's format and size, from one header parse."""
    img, info = _decode_with_info(source, max_pixels, size * 2)
    return resize_center_crop(img, size), info
