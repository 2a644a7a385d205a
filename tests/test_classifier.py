"""edgenet.classifier: crops bit-identical to torchvision, softmax/top-k, target species, ONNX."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgenet.classifier import (
    ClassifierModel,
    CropError,
    classifications,
    crop_for_classifier,
    full_image_crop,
    preprocess_input,
    read_target_species,
    select_detections_for_classification,
)
from edgenet.errors import EdgenetError

# ------------------------------------------------------------------ torch ground truth


@pytest.fixture(scope="module", params=[(2, "generic"), (1, "single_thread")],
                ids=["torch-2-threads", "torch-1-thread"])
def torch_ref(request):
    """The reference's preprocessing written with torch/torchvision (as speciesnet 5.0.6).

    PyTorch picks a different bilinear kernel with exactly one intra-op thread (see
    edgenet.classifier's docstring): each thread setting is compared with its edgenet kernel.
    """
    torch = pytest.importorskip("torch")
    tvf = pytest.importorskip("torchvision.transforms.functional")
    threads, kernel = request.param
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)

    def to_tensor(u8: np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(u8)).permute(2, 0, 1).contiguous()
        return tvf.convert_image_dtype(t, torch.float32)

    def finish(crop):
        crop = tvf.resize(crop, [480, 480], antialias=False)
        return tvf.convert_image_dtype(crop, torch.uint8).permute(1, 2, 0).numpy()

    def crop(u8: np.ndarray, bbox: list[float]) -> np.ndarray | None:
        h, w = u8.shape[:2]
        c = tvf.crop(to_tensor(u8), int(bbox[1] * h), int(bbox[0] * w), int(bbox[3] * h),
                     int(bbox[2] * w))
        try:
            return finish(c)
        except RuntimeError:
            return None

    def full(u8: np.ndarray) -> np.ndarray | None:
        h, w = u8.shape[:2]
        th = max(int(h * (1.0 - 0.3)), h - 400)
        try:
            return finish(tvf.center_crop(to_tensor(u8), [th, w]))
        except RuntimeError:
            return None

    def ours_crop(u8: np.ndarray, bbox: list[float]) -> np.ndarray | None:
        return _ours(lambda: crop_for_classifier(u8, bbox, kernel=kernel))

    def ours_full(u8: np.ndarray) -> np.ndarray | None:
        return _ours(lambda: full_image_crop(u8, kernel=kernel))

    yield crop, full, ours_crop, ours_full
    torch.set_num_threads(saved)


def _ours(fn, *args, **kwargs) -> np.ndarray | None:
    try:
        return fn(*args, **kwargs)
    except CropError:
        return None


def _random_boxes(rng: np.random.Generator, n: int) -> list[list[float]]:
    boxes = []
    for i in range(n):
        if i % 3 == 0:  # inside the image
            xy = rng.uniform(0, 0.6, 2)
            wh = rng.uniform(0.001, 0.4, 2)
        else:  # anywhere, including outside and partly outside
            xy = rng.uniform(-0.4, 1.2, 2)
            wh = rng.uniform(0.0, 0.9, 2)
        boxes.append([float(xy[0]), float(xy[1]), float(wh[0]), float(wh[1])])
    return boxes


def test_crops_bit_exact_vs_torch(torch_ref) -> None:
    crop, _, ours, _ = torch_ref
    rng = np.random.default_rng(1234)
    compared = 0
    for _ in range(8):
        h, w = int(rng.integers(1, 900)), int(rng.integers(1, 1300))
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        for bbox in _random_boxes(rng, 4):
            want, got = crop(img, bbox), ours(img, bbox)
            assert (want is None) == (got is None), (h, w, bbox)
            if want is not None:
                assert got.dtype == np.uint8 and got.shape == (480, 480, 3)
                np.testing.assert_array_equal(got, want, err_msg=f"{h}x{w} {bbox}")
                compared += 1
    assert compared >= 15


@pytest.mark.parametrize(
    "bbox",
    [
        [0.0, 0.0, 1.0, 1.0],          # the whole image
        [0.5, 0.5, 0.9, 0.9],          # runs off the right/bottom: zero padded
        [-0.2, -0.3, 0.5, 0.6],        # starts before the top-left: zero padded
        [-0.9, -0.9, 0.5, 0.5],        # ends before the image: negative end slices wrap
        [1.1, 1.1, 0.2, 0.2],          # entirely outside: all zeros
        [0.2, 0.3, 0.0004, 0.5],       # narrower than a pixel: empty, torch raises
        [0.999, 0.999, 0.001, 0.001],  # one pixel at the corner
        [0.1, 0.1, 0.5, 0.5],          # exactly 480x480 after truncation? (no-op resize path)
    ],
)
def test_edge_boxes_vs_torch(torch_ref, bbox: list[float]) -> None:
    crop, _, ours, _ = torch_ref
    img = np.random.default_rng(7).integers(0, 256, (960, 960, 3), dtype=np.uint8)
    want, got = crop(img, bbox), ours(img, bbox)
    assert (want is None) == (got is None)
    if want is not None:
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("kernel", ["generic", "single_thread"])
def test_same_size_crop_is_identity_round_trip(kernel: str) -> None:
    img = np.random.default_rng(3).integers(0, 256, (480, 480, 3), dtype=np.uint8)
    out = crop_for_classifier(img, [0.0, 0.0, 1.0, 1.0], kernel=kernel)
    # float32(v/255) * 255.999 truncated gives v back for every uint8 v
    np.testing.assert_array_equal(out, img)


def test_resize_kernel_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgenet.classifier import resize_kernel

    assert resize_kernel() == "generic"
    monkeypatch.setenv("EDGENET_RESIZE_KERNEL", "single_thread")
    assert resize_kernel() == "single_thread"
    assert resize_kernel("generic") == "generic"
    with pytest.raises(EdgenetError, match="unknown resize kernel"):
        resize_kernel("bicubic")


def test_full_image_crop_vs_torch(torch_ref) -> None:
    _, full, _, ours_full = torch_ref
    rng = np.random.default_rng(99)
    # heights with odd margins exercise center_crop's round-half-even offset
    for h, w in [(1536, 2048), (1001, 1303), (1335, 800), (479, 640), (2, 3), (1, 5)]:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        want, got = full(img), ours_full(img)
        assert (want is None) == (got is None), (h, w)
        if want is not None:
            np.testing.assert_array_equal(got, want, err_msg=f"{h}x{w}")


def test_pil_and_array_inputs_agree() -> None:
    pil = pytest.importorskip("PIL.Image")
    arr = np.random.default_rng(5).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    box = [0.1, 0.2, 0.3, 0.4]
    np.testing.assert_array_equal(crop_for_classifier(pil.fromarray(arr), box),
                                  crop_for_classifier(arr, box))


# ------------------------------------------------------------------ selection


def test_select_detections_for_classification() -> None:
    dets = [{"conf": c} for c in (0.05, 0.9, 0.1, 0.5, 0.9, 0.3)]
    assert select_detections_for_classification(dets, 0.1) == [1, 2, 3, 4, 5]
    assert select_detections_for_classification(dets, 0.1, None) == [1, 2, 3, 4, 5]
    assert select_detections_for_classification(dets, 0.1, -1) == [1, 2, 3, 4, 5]
    assert select_detections_for_classification(dets, 0.1, 0) == []
    # two tied 0.9s: stable sort keeps both, then 0.5
    assert select_detections_for_classification(dets, 0.1, 3) == [1, 3, 4]
    assert select_detections_for_classification(dets, 0.1, 1) == [1]
    assert select_detections_for_classification(dets, 0.95, 2) == []
    assert select_detections_for_classification([], 0.1, 2) == []


# ------------------------------------------------------------------ scores


def test_softmax_topk_match_torch() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    logits = (rng.standard_normal((6, 50)) * 4).astype(np.float32)
    labels = [f"label{i}" for i in range(50)]
    out = classifications(logits, 5, labels)
    t_scores, t_idx = torch.topk(torch.softmax(torch.from_numpy(logits), dim=-1), k=5, dim=-1)
    for row, item in enumerate(out):
        assert item["classes"] == [labels[i] for i in t_idx[row].tolist()]
        np.testing.assert_allclose(item["scores"], t_scores[row].numpy(), rtol=1e-5, atol=1e-7)
        assert set(item) == {"classes", "scores"}
    assert len(classifications(logits, None, labels)[0]["classes"]) == 50
    assert len(classifications(logits, 500, labels)[0]["classes"]) == 50
    assert classifications(np.zeros((0, 50), np.float32), 5, labels) == []


def test_topk_ties_lower_index_first() -> None:
    logits = np.array([[0.0, 2.0, 1.0, 2.0, 2.0]], dtype=np.float32)
    out = classifications(logits, 4, ["a", "b", "c", "d", "e"])[0]
    assert out["classes"] == ["b", "d", "e", "c"]


def test_target_species(tmp_path: Path) -> None:
    labels = ["wolf", "fox", "deer", "blank"]
    txt = tmp_path / "targets.txt"
    txt.write_text("deer\nunicorn\n  wolf  \ndeer\n", encoding="utf-8")
    names, idx = read_target_species(txt, labels)
    assert names == ["deer", "wolf", "deer"]  # unknown dropped, stripped, duplicates kept
    assert idx == [2, 0, 2]
    logits = np.array([[1.0, 2.0, 3.0, 4.0], [-1.0, -2.0, -3.0, -4.5]], dtype=np.float32)
    out = classifications(logits, 2, labels, (names, idx))
    assert out[0]["target_classes"] == names
    assert out[0]["target_logits"] == [3.0, 1.0, 3.0]
    assert out[1]["target_logits"] == [-3.0, -1.0, -3.0]  # each crop's own row
    with pytest.raises(EdgenetError, match="not found"):
        read_target_species(tmp_path / "nope.txt", labels)


def test_preprocess_input_matches_reference_division() -> None:
    u8 = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=3)
    want = np.stack([u8[0] / 255.0], axis=0, dtype=np.float32)  # the reference's expression
    got = preprocess_input(u8)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------------ ONNX model


def _tiny_classifier(path: Path, n_labels: int, fp16: bool = False) -> np.ndarray:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(0).standard_normal((3, n_labels)).astype(np.float32)
    elem = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    nodes = [helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=0)]
    inits = [numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "axes")]
    if fp16:
        nodes.append(helper.make_node("Cast", ["m"], ["m32"], to=TensorProto.FLOAT))
        nodes.append(helper.make_node("MatMul", ["m32", "w"], ["logits"]))
    else:
        nodes.append(helper.make_node("MatMul", ["m", "w"], ["logits"]))
    inits.append(numpy_helper.from_array(weights, "w"))
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", elem, ["N", 480, 480, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", n_labels])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return weights


def test_classifier_model_infer_and_classify(tmp_path: Path) -> None:
    path = tmp_path / "cls.onnx"
    weights = _tiny_classifier(path, 4)
    labels = ["a", "b", "c", "d"]
    txt = tmp_path / "t.txt"
    txt.write_text("c\n", encoding="utf-8")
    model = ClassifierModel(path, labels, device="cpu", threads=1, target_species_txt=txt)
    crops = np.random.default_rng(1).integers(0, 256, (3, 480, 480, 3), dtype=np.uint8)
    logits = model.infer(crops)
    assert logits.shape == (3, 4) and logits.dtype == np.float32
    want = (crops / 255.0).astype(np.float32).mean(axis=(1, 2), dtype=np.float64) @ weights
    np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-5)
    rows = model.classifications(logits, 2)
    assert [len(r["classes"]) for r in rows] == [2, 2, 2]
    assert rows[1]["target_logits"] == [float(logits[1, 2])]
    assert model.infer(np.zeros((0, 480, 480, 3), np.uint8)).shape == (0, 4)


def test_classifier_model_fp16_input(tmp_path: Path) -> None:
    path = tmp_path / "cls16.onnx"
    _tiny_classifier(path, 3, fp16=True)
    model = ClassifierModel(path, ["a", "b", "c"], device="cpu")
    assert model.input_dtype == np.float16
    assert model.infer(np.full((2, 480, 480, 3), 128, np.uint8)).shape == (2, 3)


@pytest.mark.parametrize("fp16", [False, True])
def test_crop_scaling_graph_is_preprocess_input_bit_for_bit(fp16: bool) -> None:
    """The graph `EDGENET_DEVICE_PIXELS=classifier` runs (Cast, Div 255[, Cast fp16], NHWC
    kept) gives exactly `preprocess_input` (then `astype(float16)`) for all 256 values."""
    import onnxruntime as ort

    from edgenet.onnx_writer import unit_float_model_bytes

    sess = ort.InferenceSession(unit_float_model_bytes(fp16, nchw=False),
                                providers=["CPUExecutionProvider"])
    ramp = np.repeat(np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1), 3, axis=3)
    rng = np.random.default_rng(3)
    for crops in (ramp, rng.integers(0, 256, (3, 8, 12, 3), dtype=np.uint8)):
        got = sess.run(None, {"pixels": crops})[0]
        want = preprocess_input(crops)
        want = want.astype(np.float16) if fp16 else want
        assert got.dtype == want.dtype and got.shape == want.shape == crops.shape
        assert got.tobytes() == want.tobytes()


@pytest.mark.parametrize("fp16", [False, True])
def test_classifier_infers_the_same_from_pixels(tmp_path: Path, fp16: bool,
                                                monkeypatch) -> None:
    from edgenet import providers

    path = tmp_path / "cls.onnx"
    _tiny_classifier(path, 4, fp16=fp16)
    model = ClassifierModel(path, ["a", "b", "c", "d"], device="cpu", threads=1)
    crops = np.random.default_rng(4).integers(0, 256, (3, 480, 480, 3), dtype=np.uint8)
    want = model.infer(crops)
    model.device_pixels, model.fixed_batch = True, 2  # and padded to 2 rows, as on a GPU
    calls: list[str] = []
    real = providers.run_chain_rows

    def pixels(*args):
        calls.append("pixels")
        return real(*args)

    monkeypatch.setattr(providers, "run_chain_rows", pixels)
    got = model.infer(crops)
    assert calls and got.dtype == np.float32 and got.tobytes() == want.tobytes()
    # Float input (already scaled) still goes straight to the model.
    calls.clear()
    scaled = model.infer(preprocess_input(crops))
    assert not calls and scaled.tobytes() == want.tobytes()


def test_classifier_model_label_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "cls.onnx"
    _tiny_classifier(path, 4)
    with pytest.raises(EdgenetError, match="4 outputs but 3 labels"):
        ClassifierModel(path, ["a", "b", "c"], device="cpu")


# ------------------------------------------------------------------ the real reference

_REF_SCRIPT = r"""
import json, sys, types
import numpy as np
import torch
torch.set_num_threads(int(sys.argv[3]))
from speciesnet.classifier import SpeciesNetClassifier
from speciesnet.utils import BBox, load_rgb_image
jobs = json.loads(sys.argv[1])
out = {}
for mode in ("always_crop", "full_image"):
    fake = types.SimpleNamespace(model_info=types.SimpleNamespace(type_=mode))
    for path, boxes in jobs.items():
        img = load_rgb_image(path)
        res = []
        items = [[b] for b in boxes] if mode == "always_crop" else [[]]
        for bb in items:
            try:
                r = SpeciesNetClassifier.preprocess(fake, img, bboxes=[BBox(*b) for b in bb])
                res.append(r[0].arr)
            except RuntimeError:
                res.append(None)
        out[mode + "|" + path] = res
np.savez(sys.argv[2], **{f"{k}#{i}": a for k, v in out.items() for i, a in enumerate(v)
                         if a is not None})
print(json.dumps({k: [a is None for a in v] for k, v in out.items()}))
"""


@pytest.mark.reference
@pytest.mark.parametrize("threads, kernel", [(2, "generic"), (1, "single_thread")])
def test_preprocess_identical_to_reference(ref_python: Path, speciesnet_images: Path,
                                           extra_images: Path, tmp_path: Path, threads: int,
                                           kernel: str) -> None:
    """speciesnet's own `SpeciesNetClassifier.preprocess` on real images, edge boxes included,
    with torch on 2 threads (generic kernel) and on 1 thread (channels-last kernel)."""
    from edgenet.images import load_rgb_image

    rng = np.random.default_rng(2024)
    names = ["african_elephants.jpg", "african_elephants_with_exif_orientation.jpg",
             "african_elephants_cmyk.jpg", "ocelot.jpg", "human.jpg"]
    files = [speciesnet_images / n for n in names]
    files += [extra_images / "md_skyisland_rgba.png", extra_images / "ct_png_named_jpg.JPG",
              extra_images / "ct_serengeti_giraffes_small.JPG"]
    fixed = [[0.0, 0.0, 1.0, 1.0], [0.7, 0.6, 0.5, 0.6], [-0.1, 0.2, 0.3, 0.3],
             [0.3, 0.3, 0.0001, 0.2], [0.1234, 0.4321, 0.2222, 0.1111]]
    jobs = {str(f): fixed + _random_boxes(rng, 3) for f in files}
    npz = tmp_path / "ref.npz"
    proc = subprocess.run([str(ref_python), "-c", _REF_SCRIPT, json.dumps(jobs), str(npz),
                           str(threads)],
                          capture_output=True, text=True, timeout=900, check=True)
    failed = json.loads(proc.stdout.strip().splitlines()[-1])
    ref = np.load(npz)
    compared = 0
    for mode in ("always_crop", "full_image"):
        for path, boxes in jobs.items():
            img = load_rgb_image(path)
            arr = np.asarray(img)
            items = boxes if mode == "always_crop" else [None]
            for i, box in enumerate(items):
                key = f"{mode}|{path}"
                ours = (_ours(crop_for_classifier, arr, box, kernel=kernel) if box
                        else _ours(full_image_crop, arr, kernel=kernel))
                assert (ours is None) == failed[key][i], (key, box)
                if ours is not None:
                    np.testing.assert_array_equal(ours, ref[f"{key}#{i}"], err_msg=f"{key} {box}")
                    compared += 1
    assert compared >= 60


# ------------------------------------------------------------------ fma emulation


def _round_to_f32_exact(x) -> np.float32:
    """Correctly rounded float32 of an exact Fraction (nearest, ties to even)."""
    from fractions import Fraction

    guess = np.float32(float(x))
    cands = [np.nextafter(guess, np.float32(-np.inf)), guess,
             np.nextafter(guess, np.float32(np.inf))]
    best = min(cands, key=lambda c: (abs(Fraction(float(c)) - x),
                                     int(np.array(c).view(np.int32)) & 1))
    return np.float32(best)


def test_fma32_single_rounding() -> None:
    from fractions import Fraction

    from edgenet.classifier import _fma32

    f = np.float32
    # exact sum lies just below a float32 tie; rounding via float64 first would hit the tie
    # and round to even (up): a correctly rounded fma rounds down.
    a = np.array([f(2.0**-24 * (1 + 2.0**-23))])
    b = np.array([f(1 - 2.0**-23)])
    c = np.array([f(1 + 2.0**-23)])
    naive = (a.astype(np.float64) * b + c).astype(np.float32)
    assert naive[0] == f(1 + 2.0**-22)
    assert _fma32(a, b, c)[0] == f(1 + 2.0**-23)
    rng = np.random.default_rng(0)
    a = rng.random(500).astype(np.float32)
    b = rng.random(500).astype(np.float32)
    c = (rng.random(500) * 2.0 ** rng.integers(-30, 2, 500)).astype(np.float32)
    got = _fma32(a, b, c)
    for i in range(500):
        exact = Fraction(float(a[i])) * Fraction(float(b[i])) + Fraction(float(c[i]))
        assert got[i] == _round_to_f32_exact(exact)


def test_fast_resize_equals_the_exact_emulation_everywhere(monkeypatch) -> None:
    """The generic kernel's float32 estimate plus exact fix-up gives, value for value, what
    the exact fma emulation (the torch-verified arithmetic) gives at every output pixel:
    random, flat, black-and-white, gradient and low-contrast images, crops in and off the
    image, up- and downscaled. The fix-up path must have been taken."""
    from edgenet import classifier as cls

    fixed = []
    real_exact = cls._exact_values

    def counting_exact(*args):
        values = real_exact(*args)
        fixed.append(len(values))
        return values

    monkeypatch.setattr(cls, "_exact_values", counting_exact)
    rng = np.random.default_rng(11)
    out_size = 480
    grid_i, grid_j, grid_c = (g.ravel() for g in np.meshgrid(
        np.arange(out_size), np.arange(out_size), np.arange(3), indexing="ij"))
    checked = 0
    for trial in range(20):
        h, w = int(rng.integers(2, 1300)), int(rng.integers(2, 1700))
        kind = trial % 5
        if kind == 0:
            img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        elif kind == 1:
            img = np.full((h, w, 3), rng.integers(0, 256), dtype=np.uint8)
        elif kind == 2:
            img = (rng.integers(0, 2, (h, w, 3)) * 255).astype(np.uint8)
        elif kind == 3:
            img = (np.linspace(0, 255, w)[None, :, None] * np.ones((h, 1, 3))).astype(np.uint8)
        else:
            img = np.clip(rng.normal(128, 3, (h, w, 3)), 0, 255).astype(np.uint8)
        top, left = int(rng.integers(-h // 3, h)), int(rng.integers(-w // 3, w))
        rows = cls._crop_axis(h, top, int(rng.integers(1, h + 1)))
        cols = cls._crop_axis(w, left, int(rng.integers(1, w + 1)))
        if len(rows) == 0 or len(cols) == 0:
            continue
        y0, y1, wy0, wy1 = cls._linear_table(len(rows), out_size)
        x0, x1, wx0, wx1 = cls._linear_table(len(cols), out_size)
        got = cls._resize_crop(img, rows, cols, kernel="generic")
        want = real_exact(img, (rows[y0][grid_i], rows[y1][grid_i]),
                          (cols[x0][grid_j], cols[x1][grid_j]),
                          (wy0[grid_i], wy1[grid_i]), (wx0[grid_j], wx1[grid_j]), grid_c)
        np.testing.assert_array_equal(got, want.reshape(out_size, out_size, 3),
                                      err_msg=f"{h}x{w} rows {top}+{len(rows)} cols "
                                              f"{left}+{len(cols)}")
        checked += 1
    assert checked >= 15
    assert fixed and sum(fixed) > 0


def test_topk_orders_tied_scores_as_torch_does() -> None:
    """A saturated softmax leaves exact 0.0 ties behind the top class; speciesnet reports k
    classes anyway, in torch.topk's (libstdc++ partial_sort) order."""
    from edgenet.classifier import _topk

    one_hot = np.zeros((1, 2498), np.float32)
    one_hot[0, 31] = 1.0
    assert _topk(one_hot, 5)[0].tolist() == [31, 1, 3, 4, 0]  # measured with torch 2.14
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    for trial in range(100):
        k = int(rng.integers(1, 39))
        v = (rng.integers(0, 4, 2498) if trial % 2 else
             np.where(rng.random(2498) < 0.002, rng.random(2498), 0.0)).astype(np.float32)
        want = torch.topk(torch.from_numpy(v), k).indices.tolist()
        assert _topk(v[None], k)[0].tolist() == want


def test_make_crops_on_threads_gives_the_same_bytes_in_order() -> None:
    """`make_crops(..., threads=N)` (the in-process pipeline's crops) equals one thread's
    result, box by box, and an uncuttable box fails the image on either path."""
    from edgenet.decode_workers import make_crops

    rng = np.random.default_rng(7)
    img = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    boxes = [[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.6, 0.6],  # the second overhangs: padding
             [0.0, 0.0, 1.0, 1.0], [0.9, 0.05, 0.05, 0.9], [0.33, 0.41, 0.01, 0.02]]
    one = make_crops(img, boxes, threads=1)
    many = make_crops(img, boxes, threads=3)
    assert one.shape == (len(boxes), 480, 480, 3) and one.dtype == np.uint8
    np.testing.assert_array_equal(one, many)
    for i, box in enumerate(boxes):  # the order is the boxes' order
        np.testing.assert_array_equal(many[i], crop_for_classifier(img, box))
    empty = [*boxes[:2], [0.5, 0.5, 0.0, 0.0]]  # a zero-size box cannot be resized
    for threads in (1, 3):
        with pytest.raises(CropError):
            make_crops(img, empty, threads=threads)


class _SmallDevice:
    """A classifier session whose device holds at most MAX_ROWS rows per run: larger runs fail
    with onnxruntime's CUDA arena message."""

    def __init__(self, real, max_rows: int) -> None:
        self.real, self.max_rows, self.rows_seen = real, max_rows, []

    def __getattr__(self, name):
        return getattr(self.real, name)

    def run(self, names, feeds):
        rows = next(iter(feeds.values())).shape[0]
        self.rows_seen.append(rows)
        if rows > self.max_rows:
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status "
                               "code returned while running Conv node. Failed to allocate "
                               "memory for requested buffer of size 1073741824")
        return self.real.run(names, feeds)


def test_classifier_halves_its_batch_when_the_device_runs_out_of_memory(tmp_path: Path,
                                                                        capsys) -> None:
    path = tmp_path / "cls.onnx"
    _tiny_classifier(path, 4)
    plain = ClassifierModel(path, ["a", "b", "c", "d"], device="cpu", threads=1)
    crops = np.random.default_rng(5).integers(0, 256, (5, 480, 480, 3), dtype=np.uint8)
    want = plain.infer(crops)
    small = _SmallDevice(plain.session, max_rows=2)
    model = ClassifierModel(path, ["a", "b", "c", "d"], device="cpu", session=small)
    model.fixed_batch = 8  # as the pipeline sets it on a GPU
    got = model.infer(crops)
    assert got.tobytes() == want.tobytes() and model.fixed_batch == 2
    assert small.rows_seen[:3] == [8, 4, 2]  # 8 and 4 failed; then runs of 2 rows
    assert "ran out of device memory at 8 rows" in capsys.readouterr().err
    # the smaller size stays: the next batch runs at 2 rows straight away
    small.rows_seen.clear()
    assert model.infer(crops[:3]).tobytes() == want[:3].tobytes()
    assert small.rows_seen == [2, 2]
    # one row that does not fit, or another error, still fails the batch
    tiny = _SmallDevice(plain.session, max_rows=0)
    model = ClassifierModel(path, ["a", "b", "c", "d"], device="cpu", session=tiny)
    model.fixed_batch = 2
    with pytest.raises(RuntimeError, match="Failed to allocate"):
        model.infer(crops[:1])
    assert model.fixed_batch == 1


def test_out_of_memory_messages_are_recognised() -> None:
    from edgenet.providers import is_out_of_memory

    for text in ("CUDA failure 2: out of memory ; GPU=0", "Failed to allocate memory for "
                 "requested buffer of size 8", "CUDNN_STATUS_ALLOC_FAILED",
                 "DirectML: E_OUTOFMEMORY (0x8007000E)"):
        assert is_out_of_memory(RuntimeError(text))
    assert not is_out_of_memory(RuntimeError("Invalid input shape"))


def test_gpu_warm_up_runs_zeros_at_the_batch_shape_in_the_background(tmp_path: Path,
                                                                     monkeypatch, capsys):
    import onnxruntime as ort

    from edgenet import providers

    path = tmp_path / "cls.onnx"
    _tiny_classifier(path, 4)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert providers.warm_up_in_background(sess, 8) is None  # off by default
    monkeypatch.setenv("EDGENET_GPU_WARMUP", "1")
    assert providers.warm_up_in_background(sess, 8) is None  # the CPU: no shape costs
    monkeypatch.setattr(providers, "is_shape_sensitive", lambda _sess: True)
    seen: list[tuple[tuple[int, ...], str, int]] = []
    real = providers.run_with_iobinding

    def spy(s, feeds, names=None):
        (arr,) = feeds.values()
        seen.append((arr.shape, str(arr.dtype), int(np.count_nonzero(arr))))
        return real(s, feeds, names)

    monkeypatch.setattr(providers, "run_with_iobinding", spy)
    thread = providers.warm_up_in_background(sess, 8)
    assert thread is not None and thread.name == "edgenet-warmup" and thread.daemon
    thread.join(30)
    assert seen == [((8, 480, 480, 3), "float32", 0)]

    # A warm-up that fails only warns: the first real run pays instead.
    def broken(*_args, **_kwargs):
        raise RuntimeError("no device")

    monkeypatch.setattr(providers, "run_with_iobinding", broken)
    providers.warm_up_in_background(sess, 2).join(30)
    assert "warm-up run failed" in capsys.readouterr().err
