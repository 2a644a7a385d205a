"""edgenet.detector: letterbox, input tensor, a tiny ONNX detector end to end, and (with
`-m reference`) bit-for-bit agreement with speciesnet 5.0.6 / yolov5 7.0.11 / torchvision."""

from __future__ import annotations

import hashlib
import json
import subprocess
import textwrap
from pathlib import Path

import cv2
import numpy as np
import PIL.Image
import PIL.ImageFile
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgenet import detector
from edgenet.constants import CATEGORY_TO_LABEL
from edgenet.detector import DetectorModel, letterbox, letterboxed_shape, postprocess, to_tensor
from edgenet.errors import PackError
from edgenet.onnx_writer import unit_float_model_bytes

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _load_rgb(path: Path) -> np.ndarray | None:
    """Plain PIL decode (truncated files allowed, as speciesnet allows them), used identically
    on our side and the reference side."""
    before = PIL.ImageFile.LOAD_TRUNCATED_IMAGES
    PIL.ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with PIL.Image.open(path) as img:
            img.load()
            return np.asarray(img.convert("RGB"))
    except Exception:  # noqa: BLE001 - broken test images are expected in the extra set
        return None
    finally:
        PIL.ImageFile.LOAD_TRUNCATED_IMAGES = before


# --- letterbox ---------------------------------------------------------------------------------


def _check_letterbox(arr: np.ndarray) -> None:
    h, w = arr.shape[:2]
    out = letterbox(arr)
    assert out.dtype == np.uint8 and out.shape[2] == 3
    assert out.shape[:2] == letterboxed_shape(h, w)
    assert out.shape[0] % 64 == 0 and out.shape[1] % 64 == 0
    (new_w, new_h), (top, bottom, left, right) = detector.letterbox_geometry(h, w)
    assert max(new_w, new_h) == 1280  # long side scaled to 1280, up or down
    assert out.shape[0] == new_h + top + bottom and out.shape[1] == new_w + left + right
    assert abs(top - bottom) <= 1 and abs(left - right) <= 1
    inner = out[top : top + new_h, left : left + new_w]
    expected = arr if (new_w, new_h) == (w, h) else cv2.resize(arr, (new_w, new_h))
    np.testing.assert_array_equal(inner, expected)
    border = np.ones(out.shape[:2], bool)
    border[top : top + new_h, left : left + new_w] = False
    assert np.all(out[border] == 114)


def test_letterbox_real_images(speciesnet_images: Path) -> None:
    checked = 0
    for path in _images(speciesnet_images)[:6]:
        arr = _load_rgb(path)
        if arr is None:
            continue
        _check_letterbox(arr)
        checked += 1
    assert checked >= 3


def test_letterbox_extra_images(extra_images: Path) -> None:
    # Odd shapes: low-resolution, portrait-ish, greyscale-converted, RGBA-converted.
    names = [
        "animl_southwest_blank_lowres.jpeg", "md_skyisland_rgba.png", "md_missed_bird_grey.jpg"
    ]
    for name in names:
        arr = _load_rgb(extra_images / name)
        if arr is not None:
            _check_letterbox(arr)


@given(st.integers(8, 3000), st.integers(8, 3000))
@settings(max_examples=40, deadline=None)
def test_letterbox_geometry_matches_output(h: int, w: int) -> None:
    arr = np.zeros((h, w, 3), np.uint8)
    assert letterbox(arr).shape[:2] == letterboxed_shape(h, w)


def test_letterbox_exact_size_is_not_resized_and_small_is_upscaled() -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (960, 1280, 3), dtype=np.uint8)
    np.testing.assert_array_equal(letterbox(arr), arr)  # 960 and 1280 are multiples of 64
    small = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
    assert letterbox(small).shape == (960, 1280, 3)
    odd = rng.integers(0, 255, (1000, 1280, 3), dtype=np.uint8)
    out = letterbox(odd)
    assert out.shape == (1024, 1280, 3)
    np.testing.assert_array_equal(out[12:1012], odd)  # 24 rows of padding split 12 / 12
    assert np.all(out[:12] == 114) and np.all(out[1012:] == 114)


def test_letterbox_rejects_non_uint8() -> None:
    with pytest.raises(ValueError):
        letterbox(np.zeros((10, 10, 3), np.float32))


def test_to_tensor_is_float32_of_double_division() -> None:
    arr = np.arange(256, dtype=np.uint8).reshape(4, 64, 1).repeat(3, axis=2)
    t = to_tensor([arr, arr[::-1].copy()])
    assert t.shape == (2, 3, 4, 64) and t.dtype == np.float32 and t.flags.c_contiguous
    want = (arr.astype(np.float64) / 255).astype(np.float32).transpose(2, 0, 1)
    np.testing.assert_array_equal(t[0], want)
    with pytest.raises(ValueError):
        to_tensor([arr, arr[:2]])


# --- a tiny ONNX detector ---------------------------------------------------------------------


def _raw_table(rows: int = 200, nc: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Constant raw predictions C and a mask M; the model outputs C + mean(image) * M."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(100, 1100, (20, 2))
    cxy = centres[rng.integers(0, 20, rows)] + rng.normal(0, 10, (rows, 2))
    wh = rng.uniform(20, 200, (rows, 2))
    obj = rng.uniform(0, 0.6, rows)
    cls = rng.uniform(0, 1, (rows, nc))
    table = np.concatenate([cxy, wh, obj[:, None], cls], axis=1).astype(np.float32)
    mask = np.zeros_like(table)
    mask[::2, 4] = 0.4  # half of the rows gain objectness on bright images
    return table, mask


def _tiny_detector(path: Path, table: np.ndarray, mask: np.ndarray, fp16: bool = False) -> Path:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rows, cols = table.shape
    in_type = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    nodes = []
    src = "images"
    if fp16:
        nodes.append(helper.make_node("Cast", ["images"], ["images_f"], to=TensorProto.FLOAT))
        src = "images_f"
    nodes += [
        helper.make_node("ReduceMean", [src, "axes"], ["mean4"], keepdims=1),  # (N,1,1,1)
        helper.make_node("Reshape", ["mean4", "shape_n11"], ["mean"]),  # (N,1,1)
        helper.make_node("Mul", ["mean", "mask"], ["scaled"]),  # (N,rows,cols)
        helper.make_node("Add", ["scaled", "table"], ["raw"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_yolo",
        [helper.make_tensor_value_info("images", in_type, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("raw", TensorProto.FLOAT, ["N", rows, cols])],
        initializer=[
            numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes"),
            numpy_helper.from_array(np.array([-1, 1, 1], np.int64), "shape_n11"),
            numpy_helper.from_array(mask[None], "mask"),
            numpy_helper.from_array(table[None], "table"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("fp16", [False, True])
def test_detector_model_end_to_end(tmp_path: Path, fp16: bool) -> None:
    table, mask = _raw_table()
    model = DetectorModel(_tiny_detector(tmp_path / "det.onnx", table, mask, fp16), device="cpu")
    assert model.input_name == "images"
    assert model.input_dtype == (np.float16 if fp16 else np.float32)

    dark = PIL.Image.new("RGB", (1600, 1200), (0, 0, 0))
    bright = PIL.Image.new("RGB", (1600, 1200), (255, 255, 255))
    dets_dark = model.detect(dark)
    dets_bright = model.detect(bright)
    # Expected: the same post-processing on the table the graph adds up.
    boxed = model.preprocess(bright)
    assert boxed.shape == (960, 1280, 3)
    mean = to_tensor([boxed]).astype(np.float16 if fp16 else np.float32).astype(np.float32).mean()
    want_dark = postprocess(table, (960, 1280), 1600, 1200)
    assert dets_dark == want_dark
    raw_bright = model.infer(to_tensor([boxed]))
    assert raw_bright.shape == (1, 200, 8) and raw_bright.dtype == np.float32
    np.testing.assert_allclose(raw_bright[0], table + np.float32(mean) * mask, rtol=1e-6)
    assert dets_bright == postprocess(raw_bright[0], (960, 1280), 1600, 1200)
    assert len(dets_bright) > len(dets_dark) > 0

    for det in dets_bright:
        assert set(det) == {"category", "label", "conf", "bbox"}
        assert det["category"] in {"1", "2", "3"}
        assert det["label"] == CATEGORY_TO_LABEL[det["category"]]
        assert det["conf"] > 0.01
        x, y, w, h = det["bbox"]
        assert 0 <= x and 0 <= y and w >= 0 and h >= 0 and x + w <= 1 + 1e-6
    confs = [d["conf"] for d in dets_bright]
    assert confs == sorted(confs, reverse=True) and len(confs) <= 300

    # A batch of two gives the same as one at a time.
    batch = model.infer(to_tensor([model.preprocess(dark), boxed]))
    assert model.postprocess(batch[1], (960, 1280), 1600, 1200) == dets_bright


@pytest.mark.parametrize("fp16", [False, True])
def test_unit_float_graph_is_to_tensor_bit_for_bit(fp16: bool) -> None:
    """The graph EDGENET_DEVICE_PIXELS runs (Cast, Div 255, Transpose[, Cast fp16]) gives
    exactly `to_tensor` (then `astype(float16)`) for all 256 values, in two image shapes."""
    import onnxruntime as ort

    sess = ort.InferenceSession(unit_float_model_bytes(fp16),
                                providers=["CPUExecutionProvider"])
    ramp = np.repeat(np.arange(256, dtype=np.uint8).reshape(16, 16, 1), 3, axis=2)
    rng = np.random.default_rng(2)
    for imgs in ([ramp], [rng.integers(0, 256, (8, 12, 3), dtype=np.uint8) for _ in range(3)]):
        got = sess.run(None, {"pixels": detector.stack_pixels(imgs)})[0]
        want = to_tensor(imgs)
        want = want.astype(np.float16) if fp16 else want
        assert got.dtype == want.dtype and got.shape == want.shape
        assert got.tobytes() == want.tobytes()
    with pytest.raises(ValueError, match="differ in shape"):
        detector.stack_pixels([ramp, ramp[:8]])


@pytest.mark.parametrize("fp16", [False, True])
def test_detector_infers_the_same_from_pixels(tmp_path: Path, fp16: bool) -> None:
    table, mask = _raw_table()
    model = DetectorModel(_tiny_detector(tmp_path / "det.onnx", table, mask, fp16), device="cpu")
    boxed = [model.preprocess(PIL.Image.new("RGB", (1600, 1200), c))
             for c in ((0, 0, 0), (255, 255, 255), (90, 20, 200))]
    want = model.infer(model.to_tensor(boxed))
    model.device_pixels, model.fixed_batch = True, 2  # and padded to 2 rows, as on a GPU
    pixels = model.to_tensor(boxed)
    assert pixels.dtype == np.uint8 and pixels.shape == (3, 960, 1280, 3)
    got = model.infer(pixels)
    assert got.dtype == np.float32 and got.tobytes() == want.tobytes()


def test_detector_halves_its_batch_when_the_device_runs_out_of_memory(tmp_path: Path,
                                                                      capsys) -> None:
    table, mask = _raw_table()
    plain = DetectorModel(_tiny_detector(tmp_path / "det.onnx", table, mask, False),
                          device="cpu")
    boxed = [plain.preprocess(PIL.Image.new("RGB", (1600, 1200), c))
             for c in ((0, 0, 0), (255, 255, 255), (90, 20, 200))]
    want = plain.infer(plain.to_tensor(boxed))
    rows_seen: list[int] = []

    class SmallDevice:  # at most one image per run, as on a GPU with little memory
        def __getattr__(self, name):
            return getattr(plain.session, name)

        def run(self, names, feeds):
            rows = next(iter(feeds.values())).shape[0]
            rows_seen.append(rows)
            if rows > 1:
                raise RuntimeError("CUDA failure 2: out of memory ; GPU=0")
            return plain.session.run(names, feeds)

    model = DetectorModel(tmp_path / "det.onnx", device="cpu", session=SmallDevice())
    model.fixed_batch = 4  # padded to 4 rows, as the pipeline sets it on a GPU
    tensor = model.to_tensor(boxed)
    assert tensor.shape[0] == 4
    got = model.infer(tensor)[: len(boxed)]
    assert got.tobytes() == want.tobytes() and model.fixed_batch == 1
    assert rows_seen == [4, 2, 1, 1, 1, 1]
    assert "detector ran out of device memory at 4 rows" in capsys.readouterr().err


@pytest.mark.parametrize("device_pixels", [False, True])
def test_partial_fixed_batch_is_built_at_full_size(tmp_path: Path, device_pixels: bool) -> None:
    # With a fixed batch (GPU providers), a partial batch's input comes out at the fixed size
    # with zero rows, so nothing is padded (copied) later; the real rows' outputs are the same
    # bytes as without fixed batches.
    table, mask = _raw_table()
    model = DetectorModel(_tiny_detector(tmp_path / "det.onnx", table, mask, False), device="cpu")
    boxed = [model.preprocess(PIL.Image.new("RGB", (1600, 1200), c))
             for c in ((0, 0, 0), (90, 20, 200))]
    want = model.infer(model.to_tensor(boxed))
    model.device_pixels, model.fixed_batch = device_pixels, 5
    x = model.to_tensor(boxed)
    assert x.shape[0] == 5 and not x[2:].any()
    got = model.infer(x)
    assert got.shape[0] == 5 and got[:2].tobytes() == want.tobytes()
    model.fixed_batch = 2  # a full batch: no extra rows
    assert model.to_tensor(boxed).shape[0] == 2


def test_detector_drops_unknown_classes(tmp_path: Path) -> None:
    # A 4-class head: class index 3 would be category "4", which speciesnet skips.
    table = np.array(
        [[100, 100, 50, 50, 0.9, 0, 0, 0, 1], [400, 400, 50, 50, 0.8, 1, 0, 0, 0]], np.float32
    )
    dets = postprocess(table, (640, 640), 640, 640)
    assert [d["category"] for d in dets] == ["1"]
    assert dets[0]["bbox"] == [375 / 640, 375 / 640, 50 / 640, 50 / 640]


def test_detector_model_rejects_bad_graph(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, tmp_path / "bad.onnx")
    with pytest.raises(PackError, match="4-D image input"):
        DetectorModel(tmp_path / "bad.onnx", device="cpu")


# --- reference comparison --------------------------------------------------------------------

_REFERENCE_SCRIPT = textwrap.dedent(
    r'''
    import hashlib, json, sys
    import numpy as np
    import PIL.Image
    import PIL.ImageFile
    import torch
    from speciesnet.detector import SpeciesNetDetector
    from speciesnet.utils import PreprocessedImage

    data = np.load(sys.argv[1])
    spec = json.loads(open(sys.argv[2]).read())
    out = {"cases": [], "images": {}, "argsort": []}

    PIL.ImageFile.LOAD_TRUNCATED_IMAGES = True
    det = object.__new__(SpeciesNetDetector)  # skip weight loading; we feed raw outputs
    det.device = "cpu"
    for k, case in enumerate(spec["cases"]):
        raw = torch.from_numpy(data[f"raw{k}"][None])
        det.model = lambda batch, augment=False, raw=raw: (raw.clone(),)
        h, w = case["input_hw"]
        img = PreprocessedImage(np.zeros((h, w, 3), np.uint8), case["orig_w"], case["orig_h"])
        out["cases"].append(det.predict("x.jpg", img)["detections"])

    for path in spec["images"]:
        try:
            with PIL.Image.open(path) as im:
                im.load()
                rgb = im.convert("RGB")
        except Exception:
            out["images"][path] = None
            continue
        pre = SpeciesNetDetector.preprocess(det, rgb)
        entry = {"shape": list(pre.arr.shape),
                 "sha": hashlib.sha256(np.ascontiguousarray(pre.arr).tobytes()).hexdigest()}
        if path in spec["tensor_images"]:
            t = torch.unsqueeze(torch.from_numpy(pre.arr / 255).permute([2, 0, 1]), 0).float()
            entry["tensor_sha"] = hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()
        out["images"][path] = entry

    for k in range(spec["n_sorts"]):
        v = torch.from_numpy(data[f"sort{k}"])
        out["argsort"].append(v.argsort(descending=True).tolist())
    json.dump(out, open(sys.argv[3], "w"))
    '''
)


def _reference_cases(rng: np.random.Generator) -> list[dict]:
    """Raw yolov5 outputs resembling MegaDetector's: mostly tiny objectness, clustered boxes,
    quantised scores in some cases (ties), a 4-class head, and one case over max_nms."""
    cases = []
    shapes = [(1200, 1600), (1536, 2048), (2048, 1536), (480, 640), (100, 300), (1080, 1920),
              (1000, 1000), (333, 4000)]
    for k, (oh, ow) in enumerate(shapes + shapes[:4]):
        ih, iw = letterboxed_shape(oh, ow)
        rows = [3000, 20000, 8000, 500, 1200, 40000, 6000, 2500][k % 8]
        nc = 4 if k == 6 else 3
        centres = np.stack([rng.uniform(0, iw, 60), rng.uniform(0, ih, 60)], axis=1)
        cxy = centres[rng.integers(0, 60, rows)] + rng.normal(0, rng.uniform(2, 30), (rows, 2))
        wh = np.exp(rng.normal(4, 1, (rows, 2)))
        obj = rng.beta(0.3, 8 if k != 5 else 0.5, rows)  # case 5: >30000 candidates
        cls = rng.dirichlet(np.ones(nc) * 0.5, rows)
        if k % 3 == 1:  # quantise: many exact ties in obj * cls
            obj = np.round(obj * 512) / 512
            cls = np.round(cls * 64) / 64
        raw = np.concatenate([cxy, wh, obj[:, None], cls], axis=1).astype(np.float32)
        cases.append({"raw": raw, "input_hw": [ih, iw], "orig_w": ow, "orig_h": oh})
    return cases


@pytest.mark.reference
def test_matches_speciesnet_reference(ref_python: Path, speciesnet_images: Path,
                                      extra_images: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(20261126)
    cases = _reference_cases(rng)
    images = [str(p) for p in _images(speciesnet_images) + _images(extra_images)]
    sorts = [
        rng.integers(0, k, n).astype(np.float32)
        for n, k in [(17, 3), (100, 10), (1000, 7), (5000, 500), (40000, 1000), (300, 2)]
    ]
    n = 512
    killer = np.zeros(n, np.float32)
    for i in range(1, n // 2 + 1):
        if i % 2:
            killer[i - 1], killer[i] = i, n // 2 + i
        killer[n // 2 + i - 1] = 2 * i
    sorts.append(-killer)

    arrays = {f"raw{k}": c["raw"] for k, c in enumerate(cases)}
    arrays.update({f"sort{k}": s for k, s in enumerate(sorts)})
    np.savez(tmp_path / "data.npz", **arrays)
    spec = {
        "cases": [{k: v for k, v in c.items() if k != "raw"} for c in cases],
        "images": images,
        "tensor_images": images[:2],
        "n_sorts": len(sorts),
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "ref.py").write_text(_REFERENCE_SCRIPT)
    proc = subprocess.run(
        [str(ref_python), str(tmp_path / "ref.py"), str(tmp_path / "data.npz"),
         str(tmp_path / "spec.json"), str(tmp_path / "out.json")],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref = json.loads((tmp_path / "out.json").read_text())

    # Detections: identical lists (count, order, category, label, conf and bbox exactly).
    total = 0
    for k, case in enumerate(cases):
        ours = postprocess(case["raw"], tuple(case["input_hw"]), case["orig_w"], case["orig_h"])
        assert ours == ref["cases"][k], f"case {k} differs"
        total += len(ours)
    assert total > 1000  # the cases really produce detections

    # Letterbox bit-exact, and the float32 input tensor too.
    compared = 0
    for path in images:
        want = ref["images"][path]
        arr = _load_rgb(Path(path))
        assert (arr is None) == (want is None), path
        if arr is None:
            continue
        boxed = letterbox(arr)
        assert list(boxed.shape) == want["shape"], path
        assert hashlib.sha256(boxed.tobytes()).hexdigest() == want["sha"], path
        if "tensor_sha" in want:
            tensor = to_tensor([boxed])
            assert hashlib.sha256(tensor.tobytes()).hexdigest() == want["tensor_sha"], path
        compared += 1
    assert compared >= 40

    # torch's unstable CPU argsort, ties included.
    from edgenet.nms import torch_argsort_descending

    for values, want in zip(sorts, ref["argsort"], strict=True):
        assert torch_argsort_descending(values).tolist() == want
