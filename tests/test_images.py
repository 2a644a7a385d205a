"""edgenet.images: decode like speciesnet 5.0.6, fail with a reason, refuse dangerous inputs."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import struct
import subprocess
import threading
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageFile
import pytest

from edgenet.images import ImageLoadError, load_rgb_image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def _shared_files(*folders: Path) -> list[Path]:
    return sorted(p for d in folders for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _png_bytes(img: PIL.Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height RGB but carries almost no data (a bomb stand-in)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# ------------------------------------------------------------------ shared odd images


@pytest.mark.slow
def test_shared_images_outcomes(speciesnet_images: Path, extra_images: Path) -> None:
    """Every shared image loads as RGB except the zero-byte one (the reference's outcome)."""
    for path in _shared_files(speciesnet_images, extra_images):
        if path.stat().st_size == 0:
            with pytest.raises(ImageLoadError, match="empty"):
                load_rgb_image(str(path))
            continue
        img = load_rgb_image(str(path))
        assert img.mode == "RGB", path
        assert img.width > 0 and img.height > 0


def test_odd_shared_images_decode_as_reference_steps(speciesnet_images: Path,
                                                      extra_images: Path) -> None:
    """CMYK, grey, EXIF-rotated, truncated, RGBA, PNG-named-.JPG: the documented conversions."""
    cmyk = speciesnet_images / "african_elephants_cmyk.jpg"
    with PIL.Image.open(cmyk) as raw:
        assert raw.mode == "CMYK"
        want = np.asarray(raw.convert("RGB"))
    np.testing.assert_array_equal(np.asarray(load_rgb_image(str(cmyk))), want)

    grey = speciesnet_images / "african_elephants_bw.jpg"
    arr = np.asarray(load_rgb_image(str(grey)))
    assert arr.shape[2] == 3

    rotated = speciesnet_images / "african_elephants_with_exif_orientation.jpg"
    with PIL.Image.open(rotated) as raw:
        orientation = raw.getexif().get(0x0112)
        raw_size = raw.size
    img = load_rgb_image(str(rotated))
    assert orientation in (5, 6, 7, 8)  # a 90-degree rotation: width and height swap
    assert img.size == (raw_size[1], raw_size[0])

    truncated = speciesnet_images / "african_elephants_truncated_file.jpg"
    before = PIL.ImageFile.LOAD_TRUNCATED_IMAGES
    with PIL.Image.open(truncated) as raw, pytest.raises(OSError):
        raw.load()  # Pillow's default refuses it ...
    img = load_rgb_image(str(truncated))  # ... the reference (and we) accept it
    assert img.size == (2048, 1536)
    assert PIL.ImageFile.LOAD_TRUNCATED_IMAGES == before  # switch restored afterwards

    rgba = extra_images / "md_skyisland_rgba.png"
    with PIL.Image.open(rgba) as raw:
        assert raw.mode == "RGBA"
        want = np.asarray(raw.convert("RGB"))
    np.testing.assert_array_equal(np.asarray(load_rgb_image(str(rgba))), want)

    png_as_jpg = extra_images / "ct_png_named_jpg.JPG"
    with PIL.Image.open(png_as_jpg) as raw:
        assert raw.format == "PNG"
    assert load_rgb_image(str(png_as_jpg)).mode == "RGB"


@pytest.mark.reference
def test_shared_images_identical_to_reference(ref_python: Path, speciesnet_images: Path,
                                              extra_images: Path) -> None:
    """Same files load/fail and the loaded pixels are byte-identical to speciesnet's."""
    files = [str(p) for p in _shared_files(speciesnet_images, extra_images)]
    script = (
        "import sys, json, hashlib\n"
        "import numpy as np\n"
        "from speciesnet.utils import load_rgb_image\n"
        "out = {}\n"
        "for f in sys.argv[1:]:\n"
        "    img = load_rgb_image(f)\n"
        "    out[f] = None if img is None else hashlib.sha256(np.asarray(img).tobytes())"
        ".hexdigest() + str(np.asarray(img).shape)\n"
        "print('JSON' + json.dumps(out))\n"
    )
    proc = subprocess.run([str(ref_python), "-c", script, *files], capture_output=True,
                          text=True, timeout=600, check=True)
    ref = json.loads(proc.stdout.split("JSON", 1)[1])
    ours: dict[str, str | None] = {}
    for f in files:
        try:
            arr = np.asarray(load_rgb_image(f))
            ours[f] = hashlib.sha256(arr.tobytes()).hexdigest() + str(arr.shape)
        except ImageLoadError:
            ours[f] = None
    assert ours == ref
    assert sum(v is None for v in ref.values()) == 1  # the zero-byte JPEG


# ------------------------------------------------------------------ bad inputs made here


def test_generated_odd_formats(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    cases = {
        "grey16.png": PIL.Image.fromarray(rgb[..., 0].astype(np.uint16) * 257),
        "palette.png": PIL.Image.fromarray(rgb).convert("P"),
        "rgba.png": PIL.Image.fromarray(np.dstack([rgb, rgb[..., :1]])),
        "grey.png": PIL.Image.fromarray(rgb[..., 1]),
    }
    for name, img in cases.items():
        path = tmp_path / name
        img.save(path)
        out = load_rgb_image(str(path))
        assert out.mode == "RGB" and out.size == (30, 20), name
        np.testing.assert_array_equal(np.asarray(out), np.asarray(img.convert("RGB")))


def test_non_ascii_and_space_path(tmp_path: Path) -> None:
    folder = tmp_path / "caméra trap ü"
    folder.mkdir()
    path = folder / "wolf ñ 1.jpg"
    PIL.Image.new("RGB", (8, 6), (10, 20, 30)).save(path)
    assert load_rgb_image(str(path)).size == (8, 6)


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_text("this is not a picture\n"), "not a recognised image"),
        (lambda p: p.mkdir(), "directory"),
        (lambda p: None, "not found"),
        (lambda p: p.write_bytes(_png_bytes(PIL.Image.new("RGB", (64, 64)))[:40]),
         "cannot decode|cannot open|not a recognised"),
    ],
    ids=["zero-byte", "text-as-jpg", "directory", "missing", "header-only-png"],
)
def test_bad_files_raise_with_reason(tmp_path: Path, make, reason: str) -> None:
    path = tmp_path / "bad.jpg"
    make(path)
    with pytest.raises(ImageLoadError, match=reason) as err:
        load_rgb_image(str(path))
    assert str(path) in str(err.value)


def test_symlink_loop(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    a.symlink_to(b)
    b.symlink_to(a)
    with pytest.raises(ImageLoadError):
        load_rgb_image(str(a))


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads anything")
def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "locked.jpg"
    PIL.Image.new("RGB", (4, 4)).save(path)
    path.chmod(0)
    try:
        with pytest.raises(ImageLoadError, match="permission"):
            load_rgb_image(str(path))
    finally:
        path.chmod(0o644)


def test_decompression_bomb_refused_without_allocating(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(30000, 30000))
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(ImageLoadError, match="decompression bomb"):
            load_rgb_image(str(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 2.0
    assert peak < 20 * 1024 * 1024  # a decoded 30000x30000 RGB image would be 2.7 GB


def test_pixel_limit_argument_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(_png_header_only(5000, 5000))  # 25 MP: under Pillow's own limit
    with pytest.raises(ImageLoadError, match="over the limit of 1000000"):
        load_rgb_image(str(path), max_pixels=1_000_000)
    monkeypatch.setenv("EDGENET_MAX_IMAGE_PIXELS", "2000000")
    with pytest.raises(ImageLoadError, match="over the limit of 2000000"):
        load_rgb_image(str(path))
    small = tmp_path / "small.png"
    PIL.Image.new("RGB", (100, 100)).save(small)
    assert load_rgb_image(str(small)).size == (100, 100)


@pytest.mark.parametrize("preset", [False, True])
def test_truncated_switch_is_scoped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    preset: bool) -> None:
    """The truncated-images switch is on only during our decode, then restored as it was."""
    full = _png_bytes(PIL.Image.fromarray(
        np.random.default_rng(2).integers(0, 256, (64, 64, 3), np.uint8)))
    path = tmp_path / "cut.png"
    path.write_bytes(full[: len(full) // 2])
    monkeypatch.setattr(PIL.ImageFile, "LOAD_TRUNCATED_IMAGES", preset)
    assert load_rgb_image(str(path)).size == (64, 64)  # loads even when the switch is off
    assert PIL.ImageFile.LOAD_TRUNCATED_IMAGES is preset


def test_cloud_urls_refused() -> None:
    with pytest.raises(ImageLoadError, match="cloud storage"):
        load_rgb_image("gs://bucket/image.jpg")


# ------------------------------------------------------------------ http(s)


class _Handler(http.server.BaseHTTPRequestHandler):
    payloads: dict[str, bytes] = {}

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        body = self.payloads.get(self.path)
        if body is None:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def http_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_url_fetch(http_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    img = PIL.Image.fromarray(np.random.default_rng(1).integers(0, 256, (12, 16, 3), np.uint8))
    _Handler.payloads = {"/ok.png": _png_bytes(img)}
    out = load_rgb_image(http_server + "/ok.png")
    np.testing.assert_array_equal(np.asarray(out), np.asarray(img))
    with pytest.raises(ImageLoadError, match="HTTP error 404"):
        load_rgb_image(http_server + "/missing.png")
    monkeypatch.setenv("EDGENET_URL_MAX_BYTES", "100")
    with pytest.raises(ImageLoadError, match="cap"):
        load_rgb_image(http_server + "/ok.png")


def test_url_unreachable() -> None:
    with pytest.raises(ImageLoadError, match="download failed"):
        load_rgb_image("http://127.0.0.1:9/none.jpg", url_timeout=2)
