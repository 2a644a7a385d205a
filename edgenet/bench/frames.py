"""The images a bench runs on: generated camera-trap-sized frames by default (a fresh
install has no data), or a folder's images."""

from __future__ import annotations

from pathlib import Path

from edgenet.errors import InputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp")

# ------------------------------------------------------------------------------------------
# default images

# (width, height) of common camera-trap frames; the 4:3 ones letterbox to the same 960x1280
# detector input, so batches > 1 are exercised; 16:9 gives a second shape (768x1280).
SYNTH_SIZES: tuple[tuple[int, int], ...] = (
    (2048, 1536), (2048, 1536), (2560, 1920), (1920, 1080),
    (2048, 1536), (2592, 1944), (1920, 1080), (2048, 1536),
)


def generate_images(dst: str | Path, count: int = 8, seed: int = 0) -> list[Path]:
    """Write `count` camera-trap-like JPEGs (sky, vegetation texture, ground, a few dark
    animal-shaped blobs, sensor noise) at typical trail-camera sizes; return their paths.

    Why synthetic: `edgenet bench` must run on a fresh install with no data; decode cost
    depends on size and JPEG entropy, so the images are full-size and textured, not flat."""
    import numpy as np
    from PIL import Image

    out = Path(dst)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        w, h = SYNTH_SIZES[i % len(SYNTH_SIZES)]
        # Build at quarter resolution and upscale: keeps generation fast on small machines.
        sw, sh = max(w // 4, 8), max(h // 4, 8)
        yy, xx = np.mgrid[0:sh, 0:sw].astype(np.float32)
        horizon = sh * (0.3 + 0.2 * rng.random())
        sky = np.stack([150 + 0 * yy, 180 + 0 * yy, 210 + 0 * yy], -1) - yy[..., None] * 0.2
        ground = np.stack([90 + 0 * yy, 80 + 0 * yy, 50 + 0 * yy], -1)
        img = np.where((yy < horizon)[..., None], sky, ground)
        texture = rng.normal(0, 25, (sh // 4 + 1, sw // 4 + 1, 1)).repeat(4, 0).repeat(4, 1)
        img = img + texture[:sh, :sw] * (yy >= horizon)[..., None]
        for _ in range(int(rng.integers(1, 4))):
            cx, cy = rng.uniform(0.15, 0.85) * sw, rng.uniform(0.5, 0.9) * sh
            ax, ay = rng.uniform(0.05, 0.15) * sw, rng.uniform(0.04, 0.1) * sh
            blob = ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 < 1
            img[blob] = rng.uniform(30, 110, 3)
        if i % 3 == 2:  # a night (infrared) frame: grey
            img = img.mean(-1, keepdims=True).repeat(3, -1) * 0.6
        small = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
        big = np.asarray(small.resize((w, h), Image.Resampling.BILINEAR), dtype=np.int16)
        big = big + rng.integers(-6, 7, big.shape, dtype=np.int16)
        path = out / f"synthetic_{i:03d}_{w}x{h}.jpg"
        Image.fromarray(np.clip(big, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def list_images(folder: str | Path) -> list[Path]:
    """Images directly or recursively under `folder`, sorted (bench's own simple discovery)."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError("image folder not found", path=root, fix="pass an existing --images DIR")
    found = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                   and p.is_file())
    if not found:
        raise InputError(
            "no images (.jpg/.png/.tif/.webp) in this folder", path=root,
            fix="pass a folder with images, or leave --images out to use generated ones",
        )
    return found
