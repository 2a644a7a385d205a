"""Issue 5 item 5: fuzzing the readers of user files (hypothesis).

Contract: whatever bytes a user's file holds, a reader either returns a parsed result or raises
an `EdgenetError` (printed by the CLI as one message, exit 2). Any other exception would be a
traceback. Readers covered: instances JSON, detections/classifications JSON
(`load_component_results`), the predictions file read on resume (`load_partial_predictions`,
then `guess_predictions_source` and `check_matching_detections` on what it returns), the pack's
ONNX header reader, and the save -> load round trip of predictions files.

Inputs are drawn three ways: arbitrary JSON values, near-valid documents (right shape, random
field types and values), and raw bytes (including truncations of valid files).
"""

from __future__ import annotations

import functools
import json
import math
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edgenet.errors import EdgenetError
from edgenet.instances import load_instances_json
from edgenet.predictions import (
    check_matching_detections,
    guess_predictions_source,
    load_component_results,
    load_partial_predictions,
    load_predictions_file,
    save_predictions,
)

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
_DIR = Path(tempfile.mkdtemp(prefix="edgenet-fuzz-"))

# ---------------------------------------------------------------------------------------
# strategies

json_scalars = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20,
)
FILEPATHS = ["a.jpg", "b/c.JPG", "d e.png", "ü.jpg"]
filepath_values = st.sampled_from(FILEPATHS) | json_values
numbers = (st.floats(allow_nan=True, allow_infinity=True) | st.integers(-5, 5)
           | st.booleans() | st.none() | st.text(max_size=3))
bboxes = st.lists(numbers, min_size=0, max_size=5) | json_values
detections = st.fixed_dictionaries(
    {},
    optional={
        "category": st.sampled_from(["0", "1", "2", "3"]) | json_values,
        "label": st.sampled_from(["animal", "human", "vehicle"]) | json_values,
        "conf": numbers,
        "bbox": bboxes,
        "raw_classifications": st.fixed_dictionaries(
            {}, optional={"classes": st.lists(st.text(max_size=6) | numbers, max_size=3),
                          "scores": st.lists(numbers, max_size=3)}) | json_values,
        "processed_classification": json_values,
    },
)
predictions = st.fixed_dictionaries(
    {"filepath": filepath_values},
    optional={
        "detections": st.lists(detections, max_size=3) | json_values,
        "failures": st.lists(st.sampled_from(["DETECTOR", "CLASSIFIER", "GEOLOCATION"]),
                             max_size=2) | json_values,
        "model_version": st.text(max_size=5),
        "classifications": json_values,  # a legacy field
        "country": json_values,
    },
)
predictions_docs = st.fixed_dictionaries(
    {"predictions": st.lists(predictions | json_values, max_size=4) | json_values},
    optional={"info": json_values},
) | json_values
instances = st.fixed_dictionaries(
    {"filepath": filepath_values},
    optional={
        "country": st.sampled_from(["USA", "KEN", "GBR", "usa", "XYZ", "US", ""]) | json_values,
        "admin1_region": st.sampled_from(["CA", "ZZ", "CAL", ""]) | json_values,
        "latitude": numbers,
        "longitude": numbers,
    },
)
instances_docs = st.fixed_dictionaries(
    {"instances": st.lists(instances | json_values, max_size=4) | json_values}
) | json_values


def _encode(doc: object, mode: int) -> bytes:
    """A document as a user's file might hold it: JSON, truncated JSON, or odd encodings."""
    text = json.dumps(doc, ensure_ascii=False, allow_nan=True)
    if mode == 0:
        return text.encode("utf-8", "surrogatepass")
    if mode == 1:
        raw = text.encode("utf-8", "surrogatepass")
        return raw[: max(0, len(raw) * 2 // 3)]
    if mode == 2:
        return json.dumps(doc).encode("utf-16")
    return b"\xef\xbb\xbf" + text.encode("utf-8", "surrogatepass")  # UTF-8 with a BOM


def _write(name: str, data: bytes) -> Path:
    path = _DIR / name
    path.write_bytes(data)
    return path


def _instances_for(doc: object) -> list[dict]:
    """Instances covering every string filepath in a predictions doc (so most docs load)."""
    paths = set(FILEPATHS)
    if isinstance(doc, dict) and isinstance(doc.get("predictions"), list):
        for p in doc["predictions"]:
            if isinstance(p, dict) and isinstance(p.get("filepath"), str):
                paths.add(p["filepath"])
    return [{"filepath": p} for p in sorted(paths)]


# Deeply nested JSON is valid JSON that Python's parser refuses with RecursionError.
DEEP = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJ = b'{"instances": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_001


# ---------------------------------------------------------------------------------------
# instances JSON

@SETTINGS
@given(doc=instances_docs, mode=st.integers(0, 3))
def test_instances_reader(doc, mode) -> None:
    path = _write("instances.json", _encode(doc, mode))
    try:
        result = load_instances_json(path)
    except EdgenetError:
        return
    assert isinstance(result, list)
    for inst in result:
        assert isinstance(inst["filepath"], str) and inst["filepath"]
        for key in ("latitude", "longitude"):
            value = inst.get(key)
            assert value is None or (isinstance(value, (int, float)) and math.isfinite(value))


@SETTINGS
@given(data=st.binary(max_size=200))
@example(data=DEEP)
@example(data=DEEP_OBJ)
@example(data=b'{"instances": [{"filepath": "\\ud800.jpg"}]}')
def test_instances_reader_raw_bytes(data) -> None:
    path = _write("instances_raw.json", data)
    try:
        load_instances_json(path)
    except EdgenetError:
        pass


# ---------------------------------------------------------------------------------------
# predictions file (resume) and detections/classifications JSON

def _consume(partial: dict[str, dict], path: Path) -> None:
    """What the CLI does next with a loaded file: guess its source, cross-check boxes."""
    assert all(isinstance(k, str) for k in partial)
    guess_predictions_source(partial)
    try:
        check_matching_detections(partial, partial, path)
    except EdgenetError:
        pass


@SETTINGS
@given(doc=predictions_docs, mode=st.integers(0, 3))
def test_predictions_reader_for_resume(doc, mode) -> None:
    path = _write("predictions.json", _encode(doc, mode))
    try:
        partial, remaining = load_partial_predictions(path, _instances_for(doc))
    except EdgenetError:
        return
    assert all("failures" not in p for p in partial.values())  # failed images are retried
    assert {r["filepath"] for r in remaining}.isdisjoint(partial)
    _consume(partial, path)


@SETTINGS
@given(doc=predictions_docs, mode=st.integers(0, 3),
       component=st.sampled_from(["detector", "classifier"]))
def test_component_results_reader(doc, mode, component) -> None:
    path = _write(f"{component}.json", _encode(doc, mode))
    try:
        results = load_component_results(path, _instances_for(doc), component)
    except EdgenetError:
        return
    _consume(results, path)


@SETTINGS
@given(data=st.binary(max_size=200))
@example(data=DEEP)
@example(data=b'{"predictions": ' + b"[" * 50_000 + b"]" * 50_000 + b"}")
def test_predictions_reader_raw_bytes(data) -> None:
    path = _write("predictions_raw.json", data)
    for reader in (
        lambda: load_partial_predictions(path, [{"filepath": "a.jpg"}]),
        lambda: load_component_results(path, [{"filepath": "a.jpg"}], "detector"),
    ):
        try:
            reader()
        except EdgenetError:
            pass


# ---------------------------------------------------------------------------------------
# writer/reader round trip: whatever filepaths a run meets, the file it writes reads back

any_filepath = st.text(min_size=1, max_size=12) | st.sampled_from(
    ["caf\udce9.jpg",  # a Latin-1 byte in a POSIX file name, as os.scandir returns it
     "\ud800.jpg", "x\x00y.jpg", "tab\t.jpg", 'quote".jpg', "emoji 🦌.jpg"]
)


@SETTINGS
@given(filepaths=st.lists(any_filepath, min_size=1, max_size=4, unique=True),
       conf=st.floats(0, 1))
@example(filepaths=["caf\udce9.jpg"], conf=0.5)
def test_saved_predictions_read_back(filepaths, conf) -> None:
    """save_predictions never raises a non-Edgenet error, and what it wrote loads back equal.

    Why it matters: a file name that is not valid UTF-8 (common on old FAT cards) reaches
    Python as a string with a lone surrogate; if the writer cannot encode it, every
    checkpoint and the final save fail and the whole run's work is lost.
    """
    preds = [{"filepath": fp, "detections": [
        {"category": "1", "label": "animal", "conf": conf, "bbox": [0.1, 0.2, 0.3, 0.4]}]}
        for fp in filepaths]
    doc = {"info": {"format_version": "20261015"}, "predictions": preds}
    path = _DIR / "roundtrip.json"
    if path.exists():
        os.remove(path)
    save_predictions(doc, path)
    loaded = load_predictions_file(path)
    assert [p["filepath"] for p in loaded["predictions"]] == filepaths
    assert loaded["predictions"][0]["detections"][0]["conf"] == round(conf, 4)


# ---------------------------------------------------------------------------------------
# ONNX header reader (pack loading): truncated/garbage model files

@functools.cache
def _tiny_onnx_bytes() -> bytes:
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 480, 480, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 480, 480, 3])],
    )
    return helper.make_model(graph).SerializeToString()


@SETTINGS
@given(cut=st.floats(0, 1), flips=st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)),
                                            max_size=4),
       junk=st.binary(max_size=64))
def test_onnx_header_reader(cut, flips, junk) -> None:
    from edgenet.pack import read_onnx_io

    data = bytearray(_tiny_onnx_bytes())
    for where, mask in flips:
        data[int(where * (len(data) - 1))] ^= mask
    data = bytes(data[: int(cut * len(data))]) + junk
    path = _write("model.onnx", data)
    try:
        io_ = read_onnx_io(path)
    except EdgenetError:
        return
    assert io_.inputs and io_.outputs
