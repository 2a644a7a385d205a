"""EfficientNetV2 classifier architecture and the numpy helpers shared by the classifier converters.

Why this module exists: the synthetic SpeciesNet classifier must be written twice, once with
Keras 3 (`.keras`) and once with Keras 2 / tf_keras (`.h5`, the seed-era 4.0.0a format), with
identical weights. Both Keras packages ship the same `EfficientNetV2` builder (only the `name`
keyword differs), so building through one function that receives the Keras module guarantees
identical layer names, which is how weights travel between the two.

Import-light on purpose: nothing here imports TensorFlow, Keras, torch or onnx at module level
(the caller passes the Keras module in), so the torch side and the TF side can both use the
image and fidelity helpers without mixing frameworks in one process (that segfaults here).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

#: SpeciesNet's classifier input side (speciesnet.classifier.SpeciesNetClassifier.IMG_SIZE).
IMG_SIZE = 480

#: Input / output names of every classifier ONNX graph this project writes.
ONNX_INPUT_NAME = "input"
ONNX_OUTPUT_NAME = "logits"

#: Fidelity tolerance for fp32 conversions, on max|a - b| / max|reference logits|.
#: Why 1e-4: both sides compute in fp32 (24-bit mantissa, ~6e-8 unit round-off); different
#: kernels (oneDNN vs MLAS, different summation orders and Winograd/GEMM choices) give per-op
#: relative errors of a few ulp that accumulate over ~80 conv layers with BatchNorm to about
#: 1e-6..1e-5 of the logit scale. An order of magnitude above what we measure still catches any
#: real conversion bug (a wrong op, layout or constant moves logits by >1e-2 of their scale).
FP32_REL_TOLERANCE = 1e-4

# Tiny EfficientNetV2: every block type of V2-M (fused-MBConv without expansion, fused-MBConv
# with expansion and residual, MBConv with squeeze-excitation and residual), one or two repeats.
TINY_BLOCKS_ARGS: list[dict[str, Any]] = [
    {"kernel_size": 3, "num_repeat": 1, "input_filters": 24, "output_filters": 24,
     "expand_ratio": 1, "se_ratio": 0, "strides": 1, "conv_type": 1},
    {"kernel_size": 3, "num_repeat": 2, "input_filters": 24, "output_filters": 48,
     "expand_ratio": 4, "se_ratio": 0, "strides": 2, "conv_type": 1},
    {"kernel_size": 3, "num_repeat": 2, "input_filters": 48, "output_filters": 80,
     "expand_ratio": 4, "se_ratio": 0.25, "strides": 2, "conv_type": 0},
    {"kernel_size": 3, "num_repeat": 1, "input_filters": 80, "output_filters": 160,
     "expand_ratio": 6, "se_ratio": 0.25, "strides": 2, "conv_type": 0},
]
TINY_WIDTH = 0.25


def build_classifier(keras: Any, size: str, num_labels: int, *, legacy: bool) -> Any:
    """Builds the SpeciesNet-shaped classifier with `keras` (Keras 3 or tf_keras).

    Input is NHWC float in [0, 1] (speciesnet divides uint8 crops by 255 itself), so the built-in
    EfficientNetV2 preprocessing (which expects [0, 255]) is off and an explicit Rescaling maps
    [0, 1] to the [-1, 1] range the network body expects. Output is logits: speciesnet applies
    softmax after the model, so the Dense head has no activation.
    """
    if size not in ("tiny", "full"):
        raise ValueError(f"size must be 'tiny' or 'full', got {size!r}")
    layers = keras.layers
    inp = layers.Input(shape=(IMG_SIZE, IMG_SIZE, 3), name="input")
    x = layers.Rescaling(scale=2.0, offset=-1.0, name="rescale_unit_to_pm1")(inp)
    name_kw = "model_name" if legacy else "name"
    if size == "full":
        kwargs: dict[str, Any] = {
            "width_coefficient": 1.0, "depth_coefficient": 1.0, "blocks_args": "default",
            name_kw: "efficientnetv2-m",
        }
    else:
        kwargs = {
            "width_coefficient": TINY_WIDTH, "depth_coefficient": 1.0,
            "blocks_args": [dict(b) for b in TINY_BLOCKS_ARGS], name_kw: "efficientnetv2-tiny",
        }
    if legacy:
        from tf_keras.src.applications import efficientnet_v2 as ev2
    else:
        from keras.src.applications import efficientnet_v2 as ev2
    if size == "full" and kwargs["blocks_args"] == "default":
        kwargs["blocks_args"] = ev2.DEFAULT_BLOCKS_ARGS["efficientnetv2-m"]
    model = ev2.EfficientNetV2(
        default_size=IMG_SIZE,
        include_top=True,
        weights=None,
        input_tensor=x,
        classes=num_labels,
        classifier_activation=None,
        include_preprocessing=False,
        **kwargs,
    )
    return model


# ----------------------------------------------------------------------------- images


def shared_images_dir() -> Path:
    """`../shared/images` next to the checkout (the project's real test images), maybe absent."""
    env = os.environ.get("EDGENET_SHARED_DIR")
    root = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared"
    return root / "images"


def default_image_paths(limit: int = 8) -> list[Path]:
    """Real camera-trap images for calibration and fidelity checks (empty when absent)."""
    root = shared_images_dir()
    if not root.is_dir():
        return []
    exts = {".jpg", ".jpeg", ".png"}
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in exts and p.is_file())
    return paths[:limit] if limit else paths


def load_crops(paths: list[Path] | None, limit: int | None = None) -> np.ndarray:
    """Decodes images to (N, 480, 480, 3) uint8, skipping unreadable files.

    Why a plain full-image resize: the fidelity checks need realistic pixel statistics, not
    speciesnet's exact crop geometry (that is edgenet.classifier's job).
    """
    from PIL import Image

    out = []
    for p in paths or []:
        if limit is not None and len(out) >= limit:
            break
        try:
            with Image.open(p) as im:
                im.load()
                rgb = im.convert("RGB").resize((IMG_SIZE, IMG_SIZE), Image.BILINEAR)
                out.append(np.asarray(rgb, dtype=np.uint8))
        except Exception:  # noqa: BLE001 - corrupt test images are expected; skip them
            continue
    if not out:
        return np.zeros((0, IMG_SIZE, IMG_SIZE, 3), np.uint8)
    return np.stack(out)


def generated_crops(n: int, seed: int) -> np.ndarray:
    """Smooth synthetic 'photos' (gradients + blobs + noise) when no real image is available.

    Why not white noise: BatchNorm calibrated on noise sees statistics unlike any photo.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:IMG_SIZE, 0:IMG_SIZE].astype(np.float32) / IMG_SIZE
    imgs = []
    for _ in range(n):
        base = rng.uniform(0.2, 0.8, 3)[None, None, :]
        grad = (rng.uniform(-0.3, 0.3, 3)[None, None, :] * yy[..., None]
                + rng.uniform(-0.3, 0.3, 3)[None, None, :] * xx[..., None])
        img = base + grad
        for _ in range(rng.integers(2, 6)):
            cy, cx = rng.uniform(0, 1, 2)
            r = rng.uniform(0.05, 0.3)
            mask = np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)))[..., None]
            img = img + mask * rng.uniform(-0.4, 0.4, 3)[None, None, :]
        img = img + rng.normal(0, 0.03, img.shape)
        imgs.append(np.clip(img * 255.0, 0, 255).astype(np.uint8))
    return np.stack(imgs)


def check_inputs(
    check_images: list[Path] | None, *, n_random: int = 2, n_real: int = 4, seed: int = 0
) -> tuple[np.ndarray, list[str]]:
    """The inputs every conversion is verified on: random tensors + real crops as uint8/255.

    `check_images=None` means the shared test images when present; `[]` means random only.
    Returns (N, 480, 480, 3) float32 in [0, 1] and a name per row for the report.
    """
    rng = np.random.default_rng(seed)
    rand = rng.uniform(0.0, 1.0, (n_random, IMG_SIZE, IMG_SIZE, 3)).astype(np.float32)
    names = [f"random{i}" for i in range(n_random)]
    paths = default_image_paths(limit=0) if check_images is None else list(check_images)
    real = load_crops(paths, limit=n_real)
    names += [f"image{i}" for i in range(len(real))]
    arr = np.concatenate([rand, (real.astype(np.float32) / 255.0).astype(np.float32)], axis=0)
    return arr, names


# ----------------------------------------------------------------------------- fidelity


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def compare_logits(reference: np.ndarray, candidate: np.ndarray, *, k: int = 5) -> dict[str, Any]:
    """Fidelity numbers between two (N, num_labels) logit arrays.

    Relative difference is max|a - b| / max|reference|: per-element relative error is
    meaningless for logits near zero, while the logit scale is what decides softmax and ranking.
    Top-5 agreement is set equality of the top-5 classes, top-1 is exact index equality.
    """
    ref = np.asarray(reference, np.float64)
    cand = np.asarray(candidate, np.float64)
    if ref.shape != cand.shape:
        raise ValueError(f"logit shapes differ: {ref.shape} vs {cand.shape}")
    diff = np.abs(ref - cand)
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    k = min(k, ref.shape[-1]) if ref.ndim == 2 and ref.shape[-1] else 1
    top1 = (ref.argmax(-1) == cand.argmax(-1)) if ref.size else np.zeros(0, bool)
    ref_top = np.argsort(-ref, axis=-1)[:, :k]
    cand_top = np.argsort(-cand, axis=-1)[:, :k]
    top5 = np.array([set(a) == set(b) for a, b in zip(ref_top, cand_top, strict=True)], bool)
    # A top-1 flip is only excusable on a near tie: the reference logits of the two classes
    # involved differ by no more than twice that row's largest difference.
    srt = np.sort(ref, axis=-1)
    gaps = srt[:, -1] - srt[:, -2] if ref.shape[-1] > 1 else np.full(len(ref), np.inf)
    rows = np.nonzero(~top1)[0]
    flip_gap = ref[rows, ref.argmax(-1)[rows]] - ref[rows, cand.argmax(-1)[rows]]
    unexplained = int((flip_gap > 2 * diff[rows].max(axis=-1)).sum()) if len(rows) else 0
    prob_diff = np.abs(_softmax(ref) - _softmax(cand)).max() if ref.size else 0.0
    return {
        "n": int(ref.shape[0]),
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
        "logit_scale": scale,
        "max_rel_diff": float(diff.max() / scale) if scale > 0 else float(diff.max(initial=0.0)),
        "max_softmax_diff": float(prob_diff),
        "top1_agreement": float(top1.mean()) if top1.size else 1.0,
        f"top{k}_agreement": float(top5.mean()) if top5.size else 1.0,
        "topk_k": k,
        "min_top1_gap": float(gaps.min()) if gaps.size else float("inf"),
        "top1_flips_not_near_tie": unexplained,
    }


def fidelity_failures(cmp: dict[str, Any], rel_tol: float = FP32_REL_TOLERANCE) -> list[str]:
    """Why a comparison is out of tolerance (empty list when it is fine).

    A top-1 / top-k disagreement fails unless the logits are within tolerance and every flip
    is a genuine near tie (the two classes' reference logits differ by at most twice the row's
    largest difference), which no fp32 implementation can settle.
    """
    problems = []
    if not np.isfinite(cmp["max_abs_diff"]):
        problems.append("non-finite logits")
    if cmp["max_rel_diff"] > rel_tol:
        problems.append(
            f"max relative logit difference {cmp['max_rel_diff']:.3g} > tolerance {rel_tol:g} "
            f"(max abs {cmp['max_abs_diff']:.3g} on logit scale {cmp['logit_scale']:.3g})"
        )
    k = cmp["topk_k"]
    excusable = not problems and cmp["top1_flips_not_near_tie"] == 0
    if cmp["top1_agreement"] < 1.0 and not excusable:
        problems.append(f"top-1 agreement {cmp['top1_agreement']:.3f} < 1")
    if cmp[f"top{k}_agreement"] < 1.0 and cmp["max_rel_diff"] > rel_tol:
        problems.append(f"top-{k} agreement {cmp[f'top{k}_agreement']:.3f} < 1")
    return problems


def sha256_file(path: Path) -> str:
    """sha256 of a file, or of a SavedModel directory's files in sorted order."""
    h = hashlib.sha256()
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fp:
            for chunk in iter(lambda: fp.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def run_onnx(path: Path, x: np.ndarray, batch: int = 4) -> np.ndarray:
    """Runs an ONNX classifier on CPU in chunks (fp32, all graph optimisations on)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    outs = [sess.run(None, {name: x[i : i + batch]})[0] for i in range(0, len(x), batch)]
    return np.concatenate(outs, axis=0)


def grouped_fidelity(
    reference: np.ndarray, candidate: np.ndarray, names: list[str],
    rel_tol: float = FP32_REL_TOLERANCE,
) -> tuple[dict[str, Any], list[str]]:
    """Fidelity for all inputs and separately for random tensors and real crops.

    Why separately: random noise is far outside a classifier's training distribution and
    yields much larger logits, so pooled relative numbers would hide how real crops fare.
    Every group must be within tolerance.
    """
    groups = {"all": np.ones(len(names), bool),
              "random": np.array([n.startswith("random") for n in names], bool),
              "images": np.array([n.startswith("image") for n in names], bool)}
    report: dict[str, Any] = {}
    failures: list[str] = []
    for group, mask in groups.items():
        if not mask.any():
            continue
        cmp = compare_logits(reference[mask], candidate[mask])
        report[group] = cmp
        failures += [f"{group}: {p}" for p in fidelity_failures(cmp, rel_tol)]
    return report, failures
