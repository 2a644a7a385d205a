"""Synthetic SpeciesNet classifier in the real file formats (.keras, Keras 2 .h5, onnx2torch .pt).

Why: real SpeciesNet weights are large and licensed downloads; tests, benchmarks and the
comparison with the reference need an architecture-faithful stand-in. Plain random weights are
useless for fidelity work (BatchNorm at mean 0 / variance 1 makes activations explode, so fp32
and fp64 disagree by whole logits), so the weights are conditioned on real images:

1. BatchNorm statistics are recalibrated: one forward pass in training mode with momentum 0
   (and dropout / stochastic depth off) sets every layer's moving mean/variance to the batch
   statistics of its own, already normalised, input — a layer-by-layer calibration in one pass.
2. The Dense head is replaced: features are centred and whitened per channel on the
   calibration images and projected with a Gaussian matrix scaled so the median top-1 softmax
   is ~0.6 (trained classifiers are confident but not saturated), and different images get
   different top classes.

Stages run in separate interpreters (TF and torch cannot share one here):
`keras3` (build, calibrate, save .keras, export ONNX for the .pt, then the `tfkeras` step in
the same interpreter: same architecture built with tf_keras = Keras 2, same weights by layer
name, saved as .h5), `torch` (onnx2torch, torch.save of the whole module).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from converters.child import run_child
from converters.efficientnet import (
    IMG_SIZE,
    build_classifier,
    compare_logits,
    fidelity_failures,
    generated_crops,
    load_crops,
)
from converters.errors import ConvertError

#: Median top-1 softmax the head is scaled to on the calibration images.
TARGET_MEDIAN_TOP1 = 0.6
#: Calibration batch per size; full V2-M at 480x480 costs ~25 GFLOP per image on 2 cores.
CALIB_BATCH = {"tiny": 16, "full": 8}
#: Images the fp32-vs-fp64 drift is measured on (fp64 is slow on CPU).
DRIFT_IMAGES = {"tiny": 4, "full": 2}


def _stage_failed(stage: str, proc: Any) -> ConvertError:
    lines = [ln for ln in (proc.stderr or "").splitlines() if ln.strip()][-25:]
    return ConvertError(
        f"synthetic classifier stage '{stage}' failed (exit {proc.returncode}):\n"
        + "\n".join(lines),
        fix="install the convert extra (tensorflow-cpu, tf-keras, tf2onnx, torch, onnx2torch)",
    )


def build_synthetic_classifier(
    dst_dir: Path,
    size: str,
    num_labels: int,
    calib_images: list[Path],
    seed: int = 0,
    *,
    stem: str | None = None,
    formats: tuple[str, ...] = ("keras", "h5", "pt"),
) -> dict[str, Any]:
    """Writes `<stem>.keras`, `<stem>.h5` and `<stem>.pt` into dst_dir; returns the info dict.

    `stem` defaults to `always_crop_synth_<size>` (speciesnet's naming puts the crop mode
    first). Files: `.keras` Keras 3 zip; `.h5` Keras 2 HDF5 written by tf_keras (SpeciesNet
    4.0.0a era); `.pt` whole onnx2torch module saved with torch.save, NHWC float input, as
    SpeciesNet >= 4.0.1 ships it. All three hold the same weights; the info dict reports the
    calibration, the fp32-vs-fp64 drift, and how closely .h5 and .pt reproduce the .keras logits.
    """
    if size not in ("tiny", "full"):
        raise ValueError(f"size must be 'tiny' or 'full', got {size!r}")
    if num_labels < 2:
        raise ValueError("num_labels must be >= 2")
    dst_dir = Path(dst_dir)
    dst_dir.mkdir(parents=True, exist_ok=True)
    stem = stem or f"always_crop_synth_{size}"
    work = Path(tempfile.mkdtemp(dir=dst_dir, prefix=".synth-cls-"))
    try:
        calib_json = work / "calib.json"
        calib_json.write_text(json.dumps([str(p) for p in calib_images]))
        common = ["--work", str(work), "--stem", stem, "--dst", str(dst_dir)]
        t0 = time.monotonic()
        proc = run_child(
            "converters.synth_classifier",
            ["keras3", *common, "--size", size, "--num-labels", str(num_labels),
             "--seed", str(seed), "--calib", str(calib_json),
             "--onnx", "1" if "pt" in formats else "0", "--h5", "1" if "h5" in formats else "0"],
        )
        if proc.returncode != 0:
            raise _stage_failed("keras3", proc)
        info = json.loads((work / "keras3.json").read_text())
        info["seconds"]["keras_process"] = round(time.monotonic() - t0, 1)
        if "h5" in formats:
            stage = json.loads((work / "tfkeras.json").read_text())
            info["files"]["h5"] = stage.pop("files_h5")
            info.update(stage)
        if "pt" in formats:
            t0 = time.monotonic()
            proc = run_child("converters.synth_classifier", ["torch", *common])
            if proc.returncode != 0:
                raise _stage_failed("torch", proc)
            stage = json.loads((work / "torch.json").read_text())
            info["files"]["pt"] = stage.pop("files_pt")
            info.update(stage)
            info["seconds"]["torch_process"] = round(time.monotonic() - t0, 1)
        # The three files must hold the same model: fail rather than hand out a mismatch.
        for key in ("h5_vs_keras", "pt_vs_keras"):
            problems = fidelity_failures(info[key]) if key in info else []
            if problems:
                raise ConvertError(
                    f"synthetic classifier: {key} out of tolerance: " + "; ".join(problems),
                    path=dst_dir, fix="report this; rerun with another --seed meanwhile",
                )
        if "keras" not in formats:
            (dst_dir / info["files"]["keras"]).unlink(missing_ok=True)
            info["files"].pop("keras")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info["paths"] = {k: str(dst_dir / v) for k, v in info["files"].items()}
    return info


# ----------------------------------------------------------------------------- keras 3 stage


def _calibration_batch(paths: list[Path], n: int, seed: int) -> tuple[Any, dict[str, int]]:
    """Real crops (generated 'photos' to fill up) plus a quarter of uniform-noise tensors.

    Why noise too: the converters verify on random tensors as well as on photos. Statistics
    taken on photos only leave noise inputs so far out of range that the 50+ residual blocks
    of V2-M amplify them to logits of 1e5 that no two fp32 implementations agree on.
    """
    import numpy as np

    n_noise = max(1, n // 4)
    n_img = n - n_noise
    real = load_crops(paths, limit=n_img)
    gen = generated_crops(n_img - len(real), seed) if len(real) < n_img else real[:0]
    rng = np.random.default_rng(seed + 2)
    noise = rng.uniform(0.0, 1.0, (n_noise, IMG_SIZE, IMG_SIZE, 3)).astype(np.float32)
    photos = np.concatenate([real, gen], axis=0).astype(np.float32) / 255.0
    batch = np.concatenate([photos.astype(np.float32), noise], axis=0)
    counts = {"n_real": int(len(real)), "n_generated": int(len(gen)), "n_noise": int(n_noise)}
    return batch, counts


#: BatchNorm gamma of the last layer of every residual branch. Why: trained EfficientNets keep
#: these small (residual blocks stay close to identity); with gamma 1 the identity paths of
#: V2-M's 57 blocks add up unit-variance branches and the network turns chaotic.
RESIDUAL_BRANCH_GAMMA = 0.2


def damp_residual_branches(model: Any) -> int:
    """Sets the final BatchNorm gamma of each residual branch (blocks with an `*add` layer)."""
    import numpy as np

    n = 0
    names = {layer.name for layer in model.layers}
    for layer in model.layers:
        if layer.name.endswith("_add") or (layer.name.endswith("add") and "block" in layer.name):
            prefix = layer.name[: -len("add")]
            bn_name = prefix + "project_bn"
            if bn_name not in names:
                continue
            bn = model.get_layer(bn_name)
            weights = bn.get_weights()  # gamma, beta, moving_mean, moving_variance
            weights[0] = np.full_like(weights[0], RESIDUAL_BRANCH_GAMMA)
            bn.set_weights(weights)
            n += 1
    return n


def calibrate_batchnorm(model: Any, x: Any) -> int:
    """Sets every BatchNorm's moving stats to its batch stats in one training-mode pass."""
    import keras

    saved = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            saved.append((layer, "momentum", layer.momentum))
            layer.momentum = 0.0
        elif isinstance(layer, keras.layers.Dropout):
            saved.append((layer, "rate", layer.rate))
            layer.rate = 0.0
    try:
        model(x, training=True)
    finally:
        for layer, attr, value in saved:
            setattr(layer, attr, value)
    return sum(1 for _, attr, _ in saved if attr == "momentum")


def _top1_probs(logits: Any) -> Any:
    import numpy as np

    z = logits - logits.max(axis=-1, keepdims=True)
    p = np.exp(z)
    return (p / p.sum(axis=-1, keepdims=True)).max(axis=-1)


def calibrate_head(model: Any, x: Any, seed: int, n_photos: int | None = None) -> dict[str, Any]:
    """Replaces the Dense head so logits vary per image with a trained-looking confidence."""
    import keras
    import numpy as np

    feat_model = keras.Model(model.inputs, model.get_layer("avg_pool").output)
    feats = np.concatenate([np.asarray(feat_model(x[i : i + 4], training=False))
                            for i in range(0, len(x), 4)]).astype(np.float64)
    dense = model.get_layer("predictions")
    c, k = dense.kernel.shape
    mu = feats.mean(axis=0)
    # Floor the per-channel spread at a fraction of the typical one: channels that barely move
    # on the calibration images would otherwise be amplified without bound on unusual inputs.
    spread = feats.std(axis=0)
    sigma = np.sqrt(spread**2 + (0.5 * float(np.median(spread)) + 1e-12) ** 2)
    rng = np.random.default_rng(seed + 1)
    g = rng.standard_normal((c, k)) / np.sqrt(c)
    z = (feats - mu) / sigma @ g  # per-image logits before scaling, ~unit spread

    n_photos = len(x) if n_photos is None else n_photos
    zp = z[:n_photos]  # the confidence target is about photos, not noise
    lo, hi = 0.1, 200.0
    for _ in range(60):  # bisection on the logit scale for the median top-1 probability
        mid = np.sqrt(lo * hi)
        if np.median(_top1_probs(mid * zp)) < TARGET_MEDIAN_TOP1:
            lo = mid
        else:
            hi = mid
    scale = float(np.sqrt(lo * hi))
    kernel = scale * g / sigma[:, None]
    bias = -(mu / sigma) @ g * scale
    dense.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    logits = scale * zp
    probs = _top1_probs(logits)
    return {
        "head_scale": scale,
        "top1_prob": {"min": float(probs.min()), "median": float(np.median(probs)),
                      "max": float(probs.max())},
        "distinct_top1": int(len(set(logits.argmax(-1).tolist()))),
        "n_images": int(n_photos),
        "noise_logit_scale": float(np.abs(scale * z[n_photos:]).max()) if len(x) > n_photos
        else None,
    }


def fp64_drift(model: Any, size: str, num_labels: int, groups: dict[str, Any]) -> dict[str, Any]:
    """fp32 model vs the same weights in fp64 (the reference), per group of inputs."""
    import keras
    import numpy as np

    from converters.classifier_keras import keras_logits

    old, old_policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")  # the policy is cached once any layer exists
    try:
        m64 = build_classifier(keras, size, num_labels, legacy=False)
        m64.set_weights([w.astype(np.float64) for w in model.get_weights()])
        y64 = {k: keras_logits(m64, x.astype(np.float64), batch=2) for k, x in groups.items()}
        if any(str(np.asarray(y).dtype) != "float64" for y in y64.values()):
            raise RuntimeError("fp64 reference model did not run in float64")
    finally:
        keras.config.set_floatx(old)
        keras.config.set_dtype_policy(old_policy)
    return {k: compare_logits(y64[k], keras_logits(model, x, batch=2)) for k, x in groups.items()}


def _stage_keras3(ns: argparse.Namespace) -> int:
    import keras
    import numpy as np
    import tensorflow as tf

    from converters.classifier_keras import keras_logits, keras_model_to_onnx, versions
    from converters.efficientnet import check_inputs

    keras.utils.set_random_seed(ns.seed)
    tf.config.experimental.enable_op_determinism()
    work, dst = Path(ns.work), Path(ns.dst)
    clock = [time.monotonic()]
    seconds: dict[str, float] = {}

    def lap(name: str) -> None:
        now = time.monotonic()
        seconds[name] = round(now - clock[0], 1)
        clock[0] = now

    model = build_classifier(keras, ns.size, ns.num_labels, legacy=False)
    lap("build")
    calib_paths = [Path(p) for p in json.loads(Path(ns.calib).read_text())]
    x, src_counts = _calibration_batch(calib_paths, CALIB_BATCH[ns.size], ns.seed)
    n_damped = damp_residual_branches(model)
    n_bn = calibrate_batchnorm(model, x)
    n_photos = len(x) - src_counts["n_noise"]
    lap("calibrate_batchnorm")
    head = calibrate_head(model, x, ns.seed, n_photos=n_photos)
    lap("calibrate_head")
    n_drift = DRIFT_IMAGES[ns.size]
    drift = fp64_drift(model, ns.size, ns.num_labels,
                       {"photos": x[:n_drift], "noise": x[n_photos : n_photos + 1]})

    lap("fp64_drift")
    keras_path = dst / f"{ns.stem}.keras"
    model.save(str(keras_path))
    # Weights by layer name: tf_keras builds the same layer names, so this is how they travel.
    weights = {f"{layer.name}/{i}": w for layer in model.layers
               for i, w in enumerate(layer.get_weights())}
    np.savez(work / "weights.npz", **weights)
    # Reference logits on the converters' standard check inputs (random + real crops).
    xc, names = check_inputs(None if not calib_paths else calib_paths)
    ref = keras_logits(model, xc)
    np.savez(work / "reference.npz", x=xc, logits=ref)
    lap("save_keras_and_reference")
    check_top1 = ref[len(names) - sum(n.startswith("image") for n in names):].argmax(-1)
    if int(ns.onnx):
        onnx_proto = keras_model_to_onnx(model, 17)
        import onnx

        onnx.save(onnx_proto, str(work / "model.onnx"))
        lap("tf2onnx_for_pt")
    if int(ns.h5):
        # tf_keras imports fine beside Keras 3 (TF_USE_LEGACY_KERAS only redirects tf.keras),
        # so the Keras 2 file is written here, saving a TensorFlow start-up.
        rc = _stage_tfkeras(ns)
        if rc:
            return rc
        lap("tf_keras_h5")
    info = {
        "size": ns.size,
        "architecture": "EfficientNetV2-M" if ns.size == "full" else "EfficientNetV2-tiny",
        "num_labels": ns.num_labels,
        "seed": ns.seed,
        "params": int(model.count_params()),
        "input": {"shape": [None, IMG_SIZE, IMG_SIZE, 3], "layout": "NHWC",
                  "dtype": "float32", "range": [0.0, 1.0]},
        "output": "logits (softmax applied by the caller, as speciesnet does)",
        "files": {"keras": keras_path.name},
        "calibration": {"batchnorm_layers": n_bn, "damped_residual_branches": n_damped,
                        "residual_branch_gamma": RESIDUAL_BRANCH_GAMMA, **src_counts, **head,
                        "distinct_top1_on_check_images": int(len(set(check_top1.tolist())))},
        "drift_fp32_vs_fp64": drift,
        "versions": versions(),
        "seconds": seconds,
    }
    (work / "keras3.json").write_text(json.dumps(info, indent=2))
    return 0


# ----------------------------------------------------------------------------- tf_keras stage


def _stage_tfkeras(ns: argparse.Namespace) -> int:
    import numpy as np
    import tf_keras

    from converters.classifier_keras import keras_logits

    work, dst = Path(ns.work), Path(ns.dst)
    model = build_classifier(tf_keras, ns.size, ns.num_labels, legacy=True)
    weights = np.load(work / "weights.npz")
    by_layer: dict[str, list[tuple[int, Any]]] = {}
    for key in weights.files:
        name, idx = key.rsplit("/", 1)
        by_layer.setdefault(name, []).append((int(idx), weights[key]))
    missing = []
    for layer in model.layers:
        n = len(layer.get_weights())
        if not n:
            continue
        got = sorted(by_layer.pop(layer.name, []), key=lambda t: t[0])
        if len(got) != n:
            missing.append(layer.name)
            continue
        layer.set_weights([w for _, w in got])
    if missing or by_layer:
        print(f"weight transfer mismatch: missing {missing[:5]}, unused {list(by_layer)[:5]}",
              file=sys.stderr)
        return 2
    h5_path = dst / f"{ns.stem}.h5"
    model.save(str(h5_path), save_format="h5")
    ref = np.load(work / "reference.npz")
    out = keras_logits(model, ref["x"])
    info = {"files_h5": h5_path.name, "h5_vs_keras": compare_logits(ref["logits"], out),
            "tf_keras_version": tf_keras.__version__}
    (work / "tfkeras.json").write_text(json.dumps(info, indent=2))
    return 0


# ----------------------------------------------------------------------------- torch stage


def _stage_torch(ns: argparse.Namespace) -> int:
    import importlib.metadata as md

    import numpy as np
    import onnx
    import onnx2torch
    import torch

    work, dst = Path(ns.work), Path(ns.dst)
    module = onnx2torch.convert(onnx.load(str(work / "model.onnx")))
    module.eval()
    pt_path = dst / f"{ns.stem}.pt"
    torch.save(module, str(pt_path))
    # Reload exactly as speciesnet does, then compare with the Keras logits.
    loaded = torch.load(str(pt_path), map_location="cpu", weights_only=False)
    loaded.eval()
    ref = np.load(work / "reference.npz")
    outs = []
    with torch.no_grad():
        for i in range(0, len(ref["x"]), 4):
            outs.append(loaded(torch.from_numpy(ref["x"][i : i + 4])).numpy())
    out = np.concatenate(outs)
    info = {
        "files_pt": pt_path.name,
        "pt_vs_keras": compare_logits(ref["logits"], out),
        "torch_versions": {"torch": torch.__version__, "onnx2torch": md.version("onnx2torch"),
                           "onnx": onnx.__version__},
    }
    (work / "torch.json").write_text(json.dumps(info, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stage entry point: `python -m converters.synth_classifier {keras3|tfkeras|torch} ...`."""
    ap = argparse.ArgumentParser(prog="converters.synth_classifier")
    sub = ap.add_subparsers(dest="stage", required=True)
    for name in ("keras3", "tfkeras", "torch"):
        p = sub.add_parser(name)
        p.add_argument("--work", required=True)
        p.add_argument("--dst", required=True)
        p.add_argument("--stem", required=True)
        if name != "torch":
            p.add_argument("--size", choices=["tiny", "full"], required=True)
            p.add_argument("--num-labels", type=int, required=True)
        if name == "keras3":
            p.add_argument("--seed", type=int, default=0)
            p.add_argument("--calib", required=True)
            p.add_argument("--onnx", default="1")
            p.add_argument("--h5", default="1")
    ns = ap.parse_args(argv)
    stage = {"keras3": _stage_keras3, "tfkeras": _stage_tfkeras, "torch": _stage_torch}
    return stage[ns.stage](ns)


if __name__ == "__main__":
    sys.exit(main())
