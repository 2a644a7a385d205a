"""`edgenet demo`: the whole pipeline, offline, with the bundled tiny SYNTHETIC pack.

Real weights need a download (`edgenet models pull`); the demo shows a newcomer that the
install works end to end (decode, letterbox, detector, NMS, crops, classifier, ensemble,
atomic predictions file) without one. Its predictions are meaningless -- the weights are
random -- and every line it prints says so.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

from edgenet.errors import PackError

SYNTHETIC_BANNER = "SYNTHETIC WEIGHTS: these predictions are meaningless (random tiny models)."


def demo_pack_dir() -> Path:
    """The committed tiny synthetic pack (edgenet/data/demo_pack)."""
    return Path(__file__).resolve().parent / "data" / "demo_pack"


def shared_images_dir() -> Path | None:
    """../shared/images next to the checkout (or the working directory), when present."""
    candidates = [
        Path(__file__).resolve().parents[2] / "shared" / "images",
        Path.cwd().parent / "shared" / "images",
        Path.cwd() / "shared" / "images",
    ]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return None


def generate_demo_images(dst: Path, count: int = 4, seed: int = 0) -> list[Path]:
    """A few small synthetic scenes (sky, ground, dark blobs) as JPEG and PNG files."""
    import numpy as np
    from PIL import Image

    dst.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sizes = [(640, 480), (800, 600), (480, 640), (1024, 576)]
    paths = []
    for i in range(count):
        w, h = sizes[i % len(sizes)]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        horizon = h * (0.3 + 0.2 * rng.random())
        img = np.where(
            (yy < horizon)[..., None],
            np.array([150.0, 180.0, 210.0]),
            np.array([90.0, 80.0, 50.0]),
        ) + rng.normal(0, 10, (h, w, 1))
        for _ in range(int(rng.integers(1, 4))):
            cx, cy = rng.uniform(0.15, 0.85) * w, rng.uniform(0.5, 0.9) * h
            ax, ay = rng.uniform(0.05, 0.15) * w, rng.uniform(0.04, 0.1) * h
            img[((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 < 1] = rng.uniform(30, 110, 3)
        arr = np.clip(img, 0, 255).astype(np.uint8)
        path = dst / (f"scene_{i:02d}.jpg" if i % 2 == 0 else f"scene_{i:02d}.png")
        Image.fromarray(arr).save(path)
        paths.append(path)
    return paths


def summarise(predictions: dict) -> list[str]:
    """A few human lines: counts of images, failures, detections, top classes."""
    preds = predictions.get("predictions", [])
    failures = sum(1 for p in preds if p.get("failures"))
    detections: Counter[str] = Counter()
    classes: Counter[str] = Counter()
    for p in preds:
        for det in p.get("detections") or []:
            detections[det.get("label", det.get("category"))] += 1
            processed = det.get("processed_classification")
            if processed:
                classes[processed["class"].split(";")[-1] or processed["class"]] += 1
    lines = [
        f"{len(preds)} image(s), {failures} with failures",
        "detections: " + (", ".join(f"{k} {v}" for k, v in detections.most_common()) or "none"),
        "top classes: " + (", ".join(f"{k} {v}" for k, v in classes.most_common(5)) or "none"),
    ]
    return lines


def run_demo(
    output: Path,
    images: Path | None = None,
    quiet: bool = False,
    echo: Callable[[str], None] = print,
    max_images: int | None = 16,
) -> int:
    """Run the demo; returns an exit code (0 ok, 2 when the demo pack is missing).

    At most `max_images` images (the first in discovery order; None = all) keep the demo to
    seconds on a laptop CPU.
    """
    from edgenet import pipeline
    from edgenet.instances import prepare_instances
    from edgenet.progress import ProgressBar

    pack_dir = demo_pack_dir()
    if not (pack_dir / "info.json").is_file():
        raise PackError(
            "the bundled synthetic demo pack is missing from this installation",
            path=pack_dir,
            fix="reinstall edgenet, or build it with `edgenet models synth --tiny "
            f"{pack_dir}`; for real predictions use `edgenet models pull` and `edgenet run`",
        )
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    folder = images or shared_images_dir()
    if folder is None:
        folder = output / "images"
        generate_demo_images(folder)
        source = f"{folder} (generated)"
    else:
        source = str(folder)
    echo(f"edgenet demo -- {SYNTHETIC_BANNER}")
    echo(f"pack: {pack_dir}")
    echo(f"images: {source}")
    instances = prepare_instances(folders=[str(folder)])
    if max_images is not None and len(instances) > max_images:
        echo(f"using the first {max_images} of {len(instances)} images (--max-images)")
        instances = instances[:max_images]
    out_json = output / "predictions.json"
    config = pipeline.PipelineConfig(
        instances=instances,
        mode="full",
        predictions_json=out_json,
        model=pack_dir,
        resume=False,
        workers=0,
        device="cpu",
    )
    runner = pipeline.PipelineRun(config)
    runner.config.progress = ProgressBar(len(runner.todo), enabled=not quiet)
    predictions, stats = runner.run()
    for line in summarise(predictions):
        echo(line)
    generated = source.endswith("(generated)")
    if generated and not any(p.get("detections") for p in predictions.get("predictions", [])):
        # The synthetic detector was conditioned on real photos; flat generated scenes do not
        # excite it (a known limitation, models/README.md). Say so rather than look broken.
        echo("note: the synthetic demo detector fires on real camera-trap photos, not on these "
             "generated scenes; try `edgenet demo --images FOLDER` with a few real images")
    echo(f"wrote {out_json} in {stats['wall_s']:.1f} s")
    echo(f"reminder -- {SYNTHETIC_BANNER} Real weights: `edgenet models pull`.")
    return 130 if stats["interrupted"] else 0
