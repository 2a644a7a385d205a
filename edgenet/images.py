"""Image decoding, exactly as speciesnet 5.0.6 `utils.load_rgb_image`, plus safety limits.

The reference does `PIL.Image.open(path)`, `img.load()`, `img.convert("RGB")`,
`PIL.ImageOps.exif_transpose(img)`, with `PIL.ImageFile.LOAD_TRUNCATED_IMAGES = True` set at
import time, and returns `None` on any exception. We run the same four Pillow calls in the same
order (so the pixels are identical for the same Pillow version) but:

* raise `ImageLoadError` with a short reason instead of returning `None`, so the pipeline can
  record a `failures` entry and say why;
* switch `LOAD_TRUNCATED_IMAGES` on only while one of our decodes is running (reference-count
  under a lock) and restore the previous value afterwards, so importing edgenet does not change
  how other code in the same process decodes truncated files;
* refuse decompression bombs from the header size before any pixel is decoded (the lazy
  `Image.open` only parses the header). Default limit 200 megapixels, overridable with the
  `max_pixels` argument or the `EDGENET_MAX_IMAGE_PIXELS` environment variable (0 = no limit of
  ours). Pillow's own guard (`Image.MAX_IMAGE_PIXELS`, an error above ~179 megapixels) stays in
  force exactly as in the reference, so such images fail in both;
* refuse zero-byte files, directories, unreadable files and symlink loops with a clear reason;
* http/https URLs are fetched with urllib (no new dependency) with a 30 s timeout and a 64 MiB
  size cap (`EDGENET_URL_MAX_BYTES` overrides); a failed fetch is an `ImageLoadError` (one
  `failures` entry for that image, the run goes on). Cloud URLs (gs://, s3://, az://), which the
  reference reads through cloudpathlib, are refused with a clear reason: download them first.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import PIL.Image
import PIL.ImageFile
import PIL.ImageOps

from edgenet.errors import EdgenetError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageLoadError",
    "URL_MAX_BYTES",
    "URL_TIMEOUT_S",
    "load_rgb_image",
    "max_pixels_limit",
]

DEFAULT_MAX_PIXELS = 200_000_000
URL_TIMEOUT_S = 30.0
URL_MAX_BYTES = 64 * 1024 * 1024
_USER_AGENT = "edgenet/0.1 (SpeciesNet on onnxruntime)"
_CLOUD_PREFIXES = ("az://", "gs://", "s3://")


class ImageLoadError(EdgenetError):
    """One image could not be decoded. The pipeline turns it into a `failures` entry."""


_truncated_lock = threading.Lock()
_truncated_users = 0
_truncated_saved = False


@contextmanager
def _truncated_images_allowed() -> Iterator[None]:
    """Set `ImageFile.LOAD_TRUNCATED_IMAGES = True` for the duration of our decodes only.

    Why: the reference sets it globally at import, which is what makes truncated JPEGs/PNGs load
    (grey-filled) instead of failing; we need the same outcome but should not flip a global
    switch for unrelated code. A counter keeps it on while any of our threads is decoding.
    """
    global _truncated_users, _truncated_saved
    with _truncated_lock:
        if _truncated_users == 0:
            _truncated_saved = PIL.ImageFile.LOAD_TRUNCATED_IMAGES
            PIL.ImageFile.LOAD_TRUNCATED_IMAGES = True
        _truncated_users += 1
    try:
        yield
    finally:
        with _truncated_lock:
            _truncated_users -= 1
            if _truncated_users == 0:
                PIL.ImageFile.LOAD_TRUNCATED_IMAGES = _truncated_saved


def max_pixels_limit(max_pixels: int | None = None) -> int | None:
    """The decompression-bomb limit in pixels: argument, else env, else 200 MP (None = off)."""
    if max_pixels is None:
        env = os.environ.get("EDGENET_MAX_IMAGE_PIXELS", "").strip()
        if env:
            try:
                max_pixels = int(float(env))
            except ValueError as e:
                raise EdgenetError(
                    f"EDGENET_MAX_IMAGE_PIXELS={env!r} is not a number",
                    fix="set it to a pixel count such as 200000000, or 0 for no limit",
                ) from e
        else:
            max_pixels = DEFAULT_MAX_PIXELS
    return None if max_pixels <= 0 else max_pixels


def _url_max_bytes() -> int:
    env = os.environ.get("EDGENET_URL_MAX_BYTES", "").strip()
    try:
        return int(env) if env else URL_MAX_BYTES
    except ValueError:
        return URL_MAX_BYTES


def _fetch_url(url: str, timeout: float) -> bytes:
    """Download an image with a timeout and a size cap; raise ImageLoadError on any failure."""
    # Imported here: urllib.request brings http, ssl and email (~17 ms of every start).
    import urllib.error
    import urllib.request

    cap = _url_max_bytes()
    req = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > cap:
                raise ImageLoadError(
                    f"download is {int(length)} bytes, over the {cap}-byte cap", path=url
                )
            data = resp.read(cap + 1)
    except ImageLoadError:
        raise
    except urllib.error.HTTPError as e:
        raise ImageLoadError(f"HTTP error {e.code} while downloading", path=url) from e
    except (urllib.error.URLError, TimeoutError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise ImageLoadError(f"download failed ({reason})", path=url) from e
    if len(data) > cap:
        raise ImageLoadError(f"download is over the {cap}-byte cap", path=url)
    return data


def _check_local_file(path: Path, shown: str) -> None:
    """Cheap pre-checks with clear reasons (the reference would just log an exception)."""
    try:
        st = path.stat()  # follows symlinks: a loop raises ELOOP here
    except FileNotFoundError as e:
        raise ImageLoadError("file not found", path=shown) from e
    except PermissionError as e:
        raise ImageLoadError("permission denied", path=shown) from e
    except OSError as e:
        raise ImageLoadError(f"cannot stat file ({e.strerror or e})", path=shown) from e
    if path.is_dir():
        raise ImageLoadError("is a directory, not an image", path=shown)
    if st.st_size == 0:
        raise ImageLoadError("empty file (0 bytes)", path=shown)


def load_rgb_image(
    filepath: str,
    *,
    max_pixels: int | None = None,
    url_timeout: float = URL_TIMEOUT_S,
) -> PIL.Image.Image:
    """Decode `filepath` (local path or http/https URL) to an RGB PIL image as the reference does.

    Raises `ImageLoadError` (never returns None) when the reference would have returned None, or
    when a safety limit of ours trips (decompression bomb, oversize download).
    """
    shown = str(filepath)
    if shown.startswith(_CLOUD_PREFIXES):
        raise ImageLoadError(
            "cloud storage URLs are not supported", path=shown,
            fix="download the files and pass local paths (or use http/https URLs)",
        )
    limit = max_pixels_limit(max_pixels)
    source: io.BytesIO | Path
    if shown.startswith(("http://", "https://")):
        source = io.BytesIO(_fetch_url(shown, url_timeout))
    else:
        source = Path(filepath)
        _check_local_file(source, shown)

    with _truncated_images_allowed():
        try:
            img = PIL.Image.open(source)  # header only: nothing decoded yet
        except PIL.Image.DecompressionBombError as e:
            raise ImageLoadError(f"decompression bomb refused ({e})", path=shown) from e
        except PIL.UnidentifiedImageError as e:
            raise ImageLoadError("not a recognised image file", path=shown) from e
        except PermissionError as e:
            raise ImageLoadError("permission denied", path=shown) from e
        except Exception as e:  # the reference treats every error as a failure
            raise ImageLoadError(f"cannot open image ({type(e).__name__}: {e})", path=shown) from e
        try:
            width, height = img.size
            if limit is not None and width * height > limit:
                raise ImageLoadError(
                    f"image is {width}x{height} = {width * height} pixels, over the limit of "
                    f"{limit} (possible decompression bomb); not decoded",
                    path=shown,
                    fix="raise EDGENET_MAX_IMAGE_PIXELS if this image is genuine",
                )
            img.load()
            # The reference converts to RGB, then applies the EXIF orientation, and each step
            # copies the pixels. Same pixels, fewer copies (this function then holds one frame,
            # not three: 8 MP decodes 23% faster, benchmarks/NOTES.md entry 14): convert only
            # what is not RGB already, and orient in place the image this function owns.
            rgb = img if img.mode == "RGB" else img.convert("RGB")
            PIL.ImageOps.exif_transpose(rgb, in_place=True)
        except ImageLoadError:
            img.close()
            raise
        except Exception as e:  # the reference: a failure too
            img.close()
            raise ImageLoadError(
                f"cannot decode image ({type(e).__name__}: {e})", path=shown
            ) from e
    if rgb is not img:
        img.close()
    return rgb
