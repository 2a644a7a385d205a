"""Build a folder holding every bad image input of issue 5 (item 3), with expected outcomes.

Why: "odd input never stops a run" is only credible when the odd inputs are made by the tests
themselves, on every machine, in a fresh folder. `make_bad_inputs(dst)` writes:

    dst/images/...          the odd files (found by `--folders dst/images`)
    dst/instances.json      every file above plus a missing file and a closed http URL

and returns `{filepath: "prediction" | "failure"}` for every instance in `instances.json`,
keyed by the exact filepath string the predictions file will hold (for `--folders
dst/images` these are the same strings, minus the missing file and the URL).

Expected outcomes follow the reference's decoder (speciesnet 5.0.6 `load_rgb_image`: PIL
open, load, convert RGB, exif_transpose, truncated images allowed, any exception -> failure),
plus edgenet's documented extras (decompression bombs refused from the header, closed URLs a
failure after a fast connection refusal).

Unreadable files: the file is made with `chmod 000`, but root (and any process with
CAP_DAC_OVERRIDE) reads it anyway. The expected outcome is therefore decided by
`os.access(path, os.R_OK)` after the chmod: "failure" for a normal user, "prediction" when the
current process can still read it (as root). Tests that must see the permission failure as
root run edgenet under an unprivileged uid (`setpriv`), see tests/test_reliability_inputs.py.
"""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import sys
import zlib
from pathlib import Path

import numpy as np

PREDICTION = "prediction"
FAILURE = "failure"

__all__ = [
    "FAILURE",
    "PREDICTION",
    "closed_loopback_url",
    "make_bad_inputs",
    "make_image_set",
    "png_bytes",
    "running_as_root",
]


def running_as_root() -> bool:
    """True when file permissions do not stop this process (root on POSIX)."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC over type+data."""
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_bytes(
    width: int,
    height: int,
    *,
    bit_depth: int = 8,
    color_type: int = 2,
    rows: bytes | None = None,
) -> bytes:
    """A PNG file written by hand (signature, IHDR, one IDAT, IEND).

    Why by hand: a decompression bomb must *declare* 30000x30000 pixels without anyone ever
    allocating them, which an image library cannot write for us. `rows` is the raw scanline
    data (filter byte + pixels per row) to compress into the IDAT; by default a single zero
    scanline, so a huge declared image costs a few bytes (the file is then also truncated,
    which a decoder would only notice after passing the header checks).
    """
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color_type]
    if rows is None:
        row_bytes = (width * channels * bit_depth + 7) // 8
        rows = b"\x00" * (1 + row_bytes)
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(rows, 9))
        + _chunk(b"IEND", b"")
    )


def _rgb16_png(width: int, height: int, rng: np.random.Generator) -> bytes:
    """A complete 16-bit-per-channel RGB PNG (colour type 2, depth 16), big-endian samples."""
    pixels = rng.integers(0, 65536, (height, width, 3), dtype=np.uint16).astype(">u2")
    raw = b"".join(b"\x00" + pixels[y].tobytes() for y in range(height))
    return png_bytes(width, height, bit_depth=16, color_type=2, rows=raw)


def closed_loopback_url(path: str = "image.jpg") -> str:
    """An http URL to a 127.0.0.1 port that nothing listens on (connection refused at once).

    The port is one the kernel just handed out and we closed, so it is very unlikely to be
    reused within the test; a refusal is immediate, so a fetch that honours its timeout does
    not slow the run.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/{path}"


def _photo(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A small RGB array with structure (gradient + a bright block) so detectors vary."""
    y, x = np.mgrid[0:height, 0:width]
    base = rng.integers(0, 256, 3)
    arr = np.stack(
        [(base[c] + x * (c + 1) + y * (3 - c)) % 256 for c in range(3)], axis=-1
    ).astype(np.uint8)
    bx, by = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
    arr[by : by + height // 3, bx : bx + width // 3] = rng.integers(0, 256, 3, dtype=np.uint8)
    return arr


def make_image_set(
    dst: Path,
    count: int,
    *,
    seed: int = 0,
    size: tuple[int, int] = (96, 72),
    subfolders: int = 4,
) -> list[Path]:
    """Write `count` small distinct JPEGs under `dst` (spread over a few subfolders).

    Why: kill-and-resume needs a few hundred images that decode fast; distinct contents make
    each image's prediction distinct, so a mixed-up or duplicated prediction is detectable.
    Sizes alternate between landscape and portrait so detector batches see both.
    """
    from PIL import Image

    dst.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        w, h = size if i % 3 else (size[1], size[0])
        sub = dst / f"part{i % max(1, subfolders):02d}" if subfolders > 1 else dst
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"img_{i:05d}.jpg"
        Image.fromarray(_photo(rng, w, h)).save(path, quality=85)
        paths.append(path)
    return paths


def make_bad_inputs(dst: Path, *, seed: int = 0) -> dict[str, str]:
    """Create every bad input of issue 5 item 3 under `dst`; return expected outcomes.

    See the module docstring for the layout. The returned dict maps each instance filepath
    (as written in `dst/instances.json`, and as `--folders dst/images` discovers it) to
    "prediction" or "failure".
    """
    from PIL import Image

    dst = Path(dst)
    images = dst / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    expected: dict[str, str] = {}

    def key(path: Path) -> str:
        return path.as_posix()

    def put(name: str, outcome: str) -> Path:
        path = images / name
        path.parent.mkdir(parents=True, exist_ok=True)
        expected[key(path)] = outcome
        return path

    # A normal control image, so a run that fails everything is caught.
    Image.fromarray(_photo(rng, 120, 90)).save(put("normal.jpg", PREDICTION), quality=90)

    # Truncated JPEG: the reference loads it (grey-filled) because truncated images are allowed.
    buf = io.BytesIO()
    Image.fromarray(_photo(rng, 160, 120)).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    put("truncated.jpg", PREDICTION).write_bytes(data[: len(data) * 6 // 10])

    # Zero-byte file.
    put("zero_bytes.jpg", FAILURE).write_bytes(b"")

    # CMYK JPEG and greyscale JPEG.
    cmyk = rng.integers(0, 256, (80, 100, 4), dtype=np.uint8)
    Image.fromarray(cmyk, "CMYK").save(put("cmyk.jpg", PREDICTION), quality=90)
    Image.fromarray(rng.integers(0, 256, (90, 110), dtype=np.uint8), "L").save(
        put("greyscale.jpg", PREDICTION), quality=90
    )

    # 16-bit PNGs: greyscale (Pillow mode I;16) and RGB with 16-bit samples.
    grey16 = (rng.integers(0, 65536, (70, 90))).astype(np.uint16)
    Image.fromarray(grey16).save(put("grey16.png", PREDICTION))
    put("rgb16.png", PREDICTION).write_bytes(_rgb16_png(64, 48, rng))

    # Palette and RGBA PNGs.
    Image.fromarray(_photo(rng, 100, 80)).convert("P", palette=Image.Palette.ADAPTIVE).save(
        put("palette.png", PREDICTION)
    )
    rgba = np.dstack([_photo(rng, 90, 90), rng.integers(0, 256, (90, 90), dtype=np.uint8)])
    Image.fromarray(rgba, "RGBA").save(put("rgba.png", PREDICTION))

    # EXIF-rotated JPEG (orientation 6: the reference rotates it after converting to RGB).
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(_photo(rng, 120, 60)).save(
        put("exif_rotated.jpg", PREDICTION), quality=90, exif=exif.tobytes()
    )

    # A PNG named .jpg (decoders sniff content, not names) and a text file named .jpg.
    Image.fromarray(_photo(rng, 80, 60)).save(put("png_named.jpg", PREDICTION), format="PNG")
    put("text_named.jpg", FAILURE).write_text("this is not an image\n", encoding="utf-8")

    # Decompression bomb: 30000x30000 declared in a ~1 kB file, never decodable here.
    put("bomb_30000x30000.png", FAILURE).write_bytes(png_bytes(30000, 30000))

    # Non-ASCII and space-containing names (also in a non-ASCII subfolder).
    Image.fromarray(_photo(rng, 100, 75)).save(put("with space 1.jpg", PREDICTION), quality=90)
    Image.fromarray(_photo(rng, 100, 75)).save(
        put("Ünïcödé 鹿 élan/caméra été.jpg", PREDICTION), quality=90
    )

    # A file name that is not valid UTF-8 (a Latin-1 byte, as old cameras/FAT cards write
    # them): Python sees a lone surrogate; predictions must still be written and resumable.
    if os.name == "posix" and sys.getfilesystemencoding().lower() in ("utf-8", "utf8"):
        raw = os.fsencode(images) + b"/latin1_caf\xe9.jpg"
        buf = io.BytesIO()
        Image.fromarray(_photo(rng, 90, 70)).save(buf, "JPEG", quality=90)
        try:
            with open(raw, "wb") as fh:
                fh.write(buf.getvalue())
            expected[key(Path(os.fsdecode(raw)))] = PREDICTION
        except OSError:  # file systems that insist on UTF-8 names (e.g. APFS)
            pass

    # A directory named like an image (the reference's globs match it; loading it fails).
    put("folder_named.jpg", FAILURE).mkdir(exist_ok=True)

    # Symlink loops: a directory link back to its parent (discovery must not follow it) and a
    # file link to itself (stat fails with ELOOP -> failure). Skipped where symlinks are not
    # allowed (Windows without developer mode).
    try:
        (images / "loop_subdir").mkdir(exist_ok=True)
        os.symlink("..", images / "loop_subdir" / "up", target_is_directory=True)
        self_loop = images / "self_loop.jpg"
        os.symlink(self_loop.name, self_loop)
        expected[key(self_loop)] = FAILURE
    except (OSError, NotImplementedError):
        pass

    # Unreadable permissions (see the module docstring for root).
    unreadable = images / "unreadable.jpg"
    Image.fromarray(_photo(rng, 90, 70)).save(unreadable, quality=90)
    os.chmod(unreadable, 0)
    expected[key(unreadable)] = PREDICTION if os.access(unreadable, os.R_OK) else FAILURE

    # Instances JSON: everything above, a missing file and a closed loopback URL.
    missing = images / "missing_file.jpg"
    expected[key(missing)] = FAILURE
    expected[closed_loopback_url("camera/IMG_0001.JPG")] = FAILURE
    instances = {"instances": [{"filepath": fp} for fp in expected]}
    (dst / "instances.json").write_text(
        # ensure_ascii: a non-UTF-8 file name (lone surrogate) is written as its \u escape.
        json.dumps(instances, ensure_ascii=True, indent=1), encoding="utf-8"
    )
    return expected


def restore_permissions(dst: Path) -> None:
    """Make everything under `dst` removable again (undo the chmod 000), ignoring errors."""
    for root, dirs, files in os.walk(dst):
        for name in dirs + files:
            path = Path(root) / name
            if path.is_symlink():
                continue
            try:
                os.chmod(path, 0o755 if path.is_dir() else 0o644)
            except OSError:
                pass
