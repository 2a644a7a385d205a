"""Tiny, architecture-shaped ONNX packs and odd images for fast pipeline/CLI tests.

Not a test module (no `test_` prefix): test_pipeline.py and test_cli.py import it. The
detector maps an image's channel means to yolov5-shaped raw rows (N, R, 8), so different
images get different detections; the classifier maps each crop's channel means to logits.
Both are batch-independent, like the real networks, so results must not depend on batching.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

LABELS = [
    "f1856211-cfb7-4a5b-9158-c0f72fd09ee6;;;;;;blank",
    "1f689929-883d-4dae-958c-3d57ab5b6c16;;;;;;animal",
    "990ae9dd-7a59-4344-afcb-1b7b21368000;mammalia;primates;hominidae;homo;sapiens;human",
    "e2895ed5-780b-48f6-8a11-9e27cb594511;;;;;;vehicle",
    "00000000-0000-0000-0000-000000000001;mammalia;carnivora;felidae;panthera;leo;lion",
    "00000000-0000-0000-0000-000000000002;mammalia;carnivora;felidae;panthera;pardus;leopard",
    "00000000-0000-0000-0000-000000000003;mammalia;proboscidea;elephantidae;loxodonta;africana;"
    "african elephant",
    "00000000-0000-0000-0000-000000000004;aves;struthioniformes;struthionidae;struthio;camelus;"
    "common ostrich",
    "00000000-0000-0000-0000-000000000005;mammalia;carnivora;felidae;;;felidae family",
]
ROWS = 4


def _detector_model(path: Path, seed: int = 0) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = rng.normal(0, 4.0, (3, ROWS * 8)).astype(np.float32)
    b = rng.normal(0, 1.0, (ROWS * 8,)).astype(np.float32)
    # Boxes centred in a 1280x960 letterbox (cx, cy, w, h in pixels), then obj and 3 classes.
    scale = np.array([640, 480, 500, 400, 1, 1, 1, 1], dtype=np.float32)
    offset = np.array([320, 240, 150, 150, 0, 0, 0, 0], dtype=np.float32)
    shape = np.array([0, ROWS, 8], dtype=np.int64)
    nodes = [
        helper.make_node("GlobalAveragePool", ["images"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "w"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["lin"]),
        helper.make_node("Sigmoid", ["lin"], ["sig"]),
        helper.make_node("Reshape", ["sig", "shape"], ["rows"]),
        helper.make_node("Mul", ["rows", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "offset"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", ROWS, 8])],
        initializer=[
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(b, "b"),
            numpy_helper.from_array(scale, "scale"),
            numpy_helper.from_array(offset, "offset"),
            numpy_helper.from_array(shape, "shape"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)


def _classifier_model(path: Path, n_labels: int, seed: int = 1) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = rng.normal(0, 20.0, (3, n_labels)).astype(np.float32)
    b = rng.normal(0, 1.0, (n_labels,)).astype(np.float32)
    nodes = [
        helper.make_node("Transpose", ["input"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("GlobalAveragePool", ["nchw"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["mean"], axis=1),
        helper.make_node("MatMul", ["mean", "w"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 480, 480, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", n_labels])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)


def build_tiny_pack(root: Path, pack_type: str = "always_crop") -> Path:
    """Write a complete tiny pack (info.json, two ONNX models, labels, taxonomy, geofence)."""
    root.mkdir(parents=True, exist_ok=True)
    _detector_model(root / "detector.onnx")
    _classifier_model(root / "classifier.onnx", len(LABELS))
    (root / "labels.txt").write_text("\n".join(LABELS) + "\n", encoding="utf-8")
    (root / "taxonomy.txt").write_text("\n".join(LABELS) + "\n", encoding="utf-8")
    geofence = {
        LABELS[4]: {"allow": {"KEN": [], "TZA": []}},
        LABELS[6]: {"block": {"USA": []}},
    }
    (root / "geofence.json").write_text(json.dumps(geofence), encoding="utf-8")
    info = {
        "version": "tiny-test",
        "type": pack_type,
        "classifier": "classifier.onnx",
        "classifier_labels": "labels.txt",
        "detector": "detector.onnx",
        "taxonomy": "taxonomy.txt",
        "geofence": "geofence.json",
    }
    (root / "info.json").write_text(json.dumps(info), encoding="utf-8")
    # World-readable whatever the umask: some tests run edgenet as an unprivileged user.
    root.chmod(0o755)
    for path in root.iterdir():
        path.chmod(0o644)
    return root


def write_images(folder: Path, seed: int = 0) -> list[Path]:
    """Small images of a few shapes (equal shapes repeat, for batching) plus odd files."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sizes = [(160, 120), (160, 120), (120, 160), (200, 100), (160, 120)]
    paths = []
    for i, (w, h) in enumerate(sizes):
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        arr[: h // 2] = rng.integers(0, 256, 3, dtype=np.uint8)  # distinct means per image
        path = folder / f"img {i:02d}.jpg"
        Image.fromarray(arr).save(path, quality=90)
        paths.append(path)
    rgba = np.dstack([rng.integers(0, 256, (90, 90, 3), dtype=np.uint8),
                      np.full((90, 90), 128, np.uint8)])
    png = folder / "rgba.PNG"
    Image.fromarray(rgba, "RGBA").save(png)
    paths.append(png)
    grey = folder / "sub" / "grey.jpeg"
    grey.parent.mkdir(exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (100, 150), dtype=np.uint8), "L").save(grey)
    paths.append(grey)
    empty = folder / "zero.jpg"
    empty.write_bytes(b"")
    paths.append(empty)
    text = folder / "text.jpg"
    text.write_text("not an image", encoding="utf-8")
    paths.append(text)
    return paths
