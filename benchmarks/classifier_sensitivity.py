#!/usr/bin/env python
"""How far a pack's classifier moves its scores for rounding-sized changes, on the CPU.

    python benchmarks/classifier_sensitivity.py PACK [--images DIR] [--crops 4]

Why: GPU runs differ from speciesnet in classifier scores (NOTES.md entry 9) and a random-
weight network can amplify rounding into large score changes, which would make any such
comparison meaningless. This measures the amplification directly on real crops (a centre box
of the first images in DIR, cut as the pipeline cuts them): the same graph with onnxruntime's
optimisations on vs off (other kernels, other summation order), each input nudged by one
float32 ulp, and Gaussian noise of 1e-3 (a quarter of one 8-bit level). It prints the largest
logit and softmax-score change and the top-1 agreement for each.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

DEFAULT_IMAGES = REPO.parent / "shared" / "images" / "speciesnet_test_data"


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _session(path: Path, optimise: bool) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimise
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def crops_from(images: Path, n: int) -> np.ndarray:
    """(n, 480, 480, 3) float32 classifier inputs: the centre box of the first n images."""
    from PIL import ImageFile

    from edgenet.classifier import crop_for_classifier, image_array
    from edgenet.images import load_rgb_image

    ImageFile.LOAD_TRUNCATED_IMAGES = True  # the test set has a truncated file, as in runs
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))[:n]
    crops = [np.asarray(crop_for_classifier(image_array(load_rgb_image(str(f))),
                                            [0.25, 0.25, 0.5, 0.5])) for f in files]
    return np.stack(crops).astype(np.float32) / np.float32(255)


def sensitivity(model: Path, x: np.ndarray) -> dict[str, dict[str, float]]:
    base_sess = _session(model, optimise=True)
    name = base_sess.get_inputs()[0].name
    base = base_sess.run(None, {name: x})[0]
    rng = np.random.default_rng(0)
    toward = np.where(rng.random(x.shape) < 0.5, 0, 2).astype(np.float32)
    cases = {
        "optimisations off (other kernels and summation order)":
            _session(model, optimise=False).run(None, {name: x})[0],
        "each input nudged by one ulp": base_sess.run(None, {name: np.nextafter(x, toward)})[0],
        "input noise, sigma 1e-3": base_sess.run(
            None, {name: x + rng.normal(0, 1e-3, x.shape).astype(np.float32)})[0],
    }
    p0 = _softmax(base)
    out = {}
    for label, logits in cases.items():
        p = _softmax(logits)
        out[label] = {"max_logit_diff": float(np.abs(logits - base).max()),
                      "logit_scale": float(np.abs(base).max()),
                      "max_score_diff": float(np.abs(p - p0).max()),
                      "top1_agreement": float(np.mean(p.argmax(-1) == p0.argmax(-1)))}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("pack", type=Path)
    p.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    p.add_argument("--crops", type=int, default=4)
    a = p.parse_args(argv)
    import json

    info = json.loads((a.pack / "info.json").read_text())
    x = crops_from(a.images, a.crops)
    for label, r in sensitivity(a.pack / info["classifier"], x).items():
        print(f"{label}: max |logit diff| {r['max_logit_diff']:.3g} (largest logit "
              f"{r['logit_scale']:.3g}); max |score diff| {r['max_score_diff']:.3g}; "
              f"top-1 agreement {r['top1_agreement']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
