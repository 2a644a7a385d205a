"""Predictions files: atomic saving, failure injection, resume semantics, source checks."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgenet import predictions as P
from edgenet.errors import InputError, OutputError


def _pred(fp: str, **extra) -> dict:
    return {"filepath": fp, **extra}


def _det(conf: float = 0.5, bbox=(0.1, 0.2, 0.3, 0.4), category: str = "1", **extra) -> dict:
    return {"category": category, "label": "animal", "conf": conf, "bbox": list(bbox), **extra}


def test_save_format_matches_reference_writer(tmp_path: Path) -> None:
    data = P.make_predictions_dict([
        _pred("ünï côdé.jpg", detections=[_det(conf=np.float32(0.123456789))],
              latitude=1.234567, model_version="4.0.2a"),
        _pred("b.jpg", failures=["DETECTOR"], scores=(0.55556, 2)),
    ])
    out = tmp_path / "p.json"
    P.save_predictions(data, out)
    text = out.read_text(encoding="utf-8")
    expected = {
        "info": {"format_version": "20261015"},
        "predictions": [
            {"filepath": "ünï côdé.jpg",
             "detections": [{"category": "1", "label": "animal", "conf": 0.1235,
                             "bbox": [0.1, 0.2, 0.3, 0.4]}],
             "latitude": 1.2346, "model_version": "4.0.2a"},
            {"filepath": "b.jpg", "failures": ["DETECTOR"], "scores": [0.5556, 2]},
        ],
    }
    assert text == json.dumps(expected, ensure_ascii=False, indent=1)
    assert "ünï" in text  # not \u-escaped
    assert [p.name for p in tmp_path.iterdir()] == ["p.json"]


def test_round_like_python_round() -> None:
    # 4-decimal rounding is Python's round(float(x), 4) (banker's on exact binary ties).
    for x in (0.00005, 0.12345, 2.675, -0.00004, 1e-9, 123.456789):
        assert P.limit_float_precision(x) == round(x, 4)
    assert P.limit_float_precision(np.float64(0.123456)) == 0.1235
    assert P.limit_float_precision(True) is True
    assert P.limit_float_precision(7) == 7


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES, errno.EROFS])
def test_failed_replace_keeps_previous_file(tmp_path: Path, monkeypatch, code: int) -> None:
    out = tmp_path / "p.json"
    P.save_predictions(P.make_predictions_dict([_pred("a.jpg", detections=[])]), out)
    before = out.read_bytes()

    def boom(src, dst):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(P.os, "replace", boom)
    with pytest.raises(OutputError) as info:
        P.save_predictions(P.make_predictions_dict([_pred("b.jpg", detections=[])]), out)
    assert str(out) in str(info.value)
    assert "unchanged" in str(info.value)
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["p.json"]  # temp file cleaned up


def test_disk_full_during_write_keeps_previous_file(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "p.json"
    P.save_predictions(P.make_predictions_dict([_pred("a.jpg", detections=[])]), out)
    before = out.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(P.os, "fsync", full)
    with pytest.raises(OutputError, match="disk is full"):
        P.save_predictions(P.make_predictions_dict([_pred("b.jpg", detections=[])]), out)
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["p.json"]


def test_unwritable_folder(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="does not exist"):
        P.save_predictions(P.make_predictions_dict([]), tmp_path / "no" / "p.json")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return  # root ignores permissions; the injected EACCES test above covers it
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="permission denied"):
            P.save_predictions(P.make_predictions_dict([]), ro / "p.json")
    finally:
        ro.chmod(0o700)


def _write(path: Path, preds: list[dict]) -> Path:
    path.write_text(json.dumps(P.make_predictions_dict(preds)), encoding="utf-8")
    return path


def test_partial_predictions_semantics(tmp_path: Path) -> None:
    instances = [{"filepath": f} for f in ("a.jpg", "b.jpg", "c.jpg")]
    path = _write(tmp_path / "p.json", [
        _pred("a.jpg", detections=[]),
        _pred("b.jpg", failures=["DETECTOR"]),
    ])
    partial, todo = P.load_partial_predictions(path, instances)
    assert list(partial) == ["a.jpg"]  # failures are retried
    assert [i["filepath"] for i in todo] == ["b.jpg", "c.jpg"]
    assert P.load_partial_predictions(tmp_path / "absent.json", instances) == ({}, instances)
    assert P.load_partial_predictions(None, instances) == ({}, instances)


def test_unknown_filepath_and_legacy_format_refused(tmp_path: Path) -> None:
    instances = [{"filepath": "a.jpg"}]
    path = _write(tmp_path / "p.json", [_pred("z.jpg", detections=[])])
    with pytest.raises(InputError, match="missing from the set of instances"):
        P.load_partial_predictions(path, instances)
    path = _write(tmp_path / "q.json", [_pred("a.jpg", classifications={"classes": []})])
    with pytest.raises(InputError, match="older output format"):
        P.load_partial_predictions(path, instances)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{", "not valid JSON"),
        ("[]", "must be a JSON object"),
        ('{"instances": []}', "looks like an instances file"),
        ('{"predictions": {}}', "must be a list"),
        ('{"predictions": [{"path": "a"}]}', 'no string "filepath"'),
        ('{"predictions": [{"filepath": "a", "detections": [{"category": 1}]}]}', "category"),
        ('{"predictions": [{"filepath": "a", "detections": [{"category": "1", "conf": 0.5,'
         ' "bbox": [1, 2]}]}]}', "bbox"),
    ],
)
def test_malformed_predictions_file(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "p.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError) as info:
        P.load_partial_predictions(path, [{"filepath": "a"}])
    assert problem in str(info.value) and str(path) in str(info.value)


def test_guess_source_and_mixing_refusal() -> None:
    det = {"a": _pred("a", detections=[_det()])}
    cls = {"a": _pred("a", detections=[_det(raw_classifications={"classes": [], "scores": []})])}
    ens = {"a": _pred("a", detections=[], model_version="x")}
    ens2 = {"a": _pred("a", detections=[_det(processed_classification={})])}
    assert P.guess_predictions_source(det) == "detector"
    assert P.guess_predictions_source(cls) == "classifier"
    assert P.guess_predictions_source(ens) == "ensemble"
    assert P.guess_predictions_source(ens2) == "ensemble"
    assert P.guess_predictions_source({}) == "unknown"
    P.check_no_component_mixing("detector", "p.json", "detector")
    P.check_no_component_mixing("classifier", "p.json", "unknown")
    P.check_no_component_mixing("full", "p.json", "detector")  # the reference does not check
    with pytest.raises(InputError, match="The detector risks overwriting"):
        P.check_no_component_mixing("detector", "p.json", "ensemble")
    with pytest.raises(InputError, match="The ensemble risks overwriting"):
        P.check_no_component_mixing("ensemble", "p.json", "classifier")
    with pytest.raises(InputError, match="The classifier risks overwriting"):
        P.check_no_component_mixing("classifier", "p.json", "detector")


def test_component_results_from_wrong_component_or_image_set(tmp_path: Path) -> None:
    instances = [{"filepath": "a"}, {"filepath": "b"}]
    ens = _write(tmp_path / "e.json", [_pred("a", detections=[], model_version="v")])
    with pytest.raises(InputError, match="holds ensemble output"):
        P.load_component_results(ens, instances, "detector")
    cls = _write(tmp_path / "c.json", [
        _pred("a", detections=[_det(raw_classifications={"classes": ["x"], "scores": [1.0]})])
    ])
    with pytest.raises(InputError, match="holds classifier output"):
        P.load_component_results(cls, instances, "detector")
    assert "a" in P.load_component_results(cls, instances, "classifier")
    other = _write(tmp_path / "o.json", [_pred("zzz", detections=[])])
    with pytest.raises(InputError, match="missing from the set of instances"):
        P.load_component_results(other, instances, "detector")
    with pytest.raises(InputError, match="not found"):
        P.load_component_results(tmp_path / "absent.json", instances, "detector")


def test_matching_detections_check() -> None:
    raw = {"classes": ["x"], "scores": [1.0]}
    dets = {"a": _pred("a", detections=[_det(), _det(bbox=(0.5, 0.5, 0.1, 0.1))])}
    good = {"a": _pred("a", detections=[_det(raw_classifications=raw),
                                         _det(bbox=(0.50004, 0.5, 0.1, 0.1))])}
    P.check_matching_detections(good, dets, "c.json")
    bad = {"a": _pred("a", detections=[_det(raw_classifications=raw)])}
    with pytest.raises(InputError, match="computed on different detections"):
        P.check_matching_detections(bad, dets, "c.json")
    whole = {"a": _pred("a", detections=[_det(category="0", raw_classifications=raw)])}
    P.check_matching_detections(whole, dets, "c.json")  # whole-image: not tied to boxes


def test_checkpointer_triggers(tmp_path: Path) -> None:
    now = [0.0]
    built = []

    def build() -> dict:
        built.append(now[0])
        return P.make_predictions_dict([_pred(str(len(built)), detections=[])])

    out = tmp_path / "p.json"
    cp = P.Checkpointer(out, build, every_images=3, every_seconds=10, clock=lambda: now[0])
    assert [cp.tick() for _ in range(3)] == [False, False, True]
    now[0] = 5.0
    assert cp.tick() is False
    now[0] = 10.5
    assert cp.tick() is True  # time trigger
    assert cp.saves == 2 and json.loads(out.read_text())["predictions"][0]["filepath"] == "2"
    off = P.Checkpointer(None, build, every_images=1)
    assert off.tick() is False


_json = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=4),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(
        st.sampled_from(["predictions", "filepath", "detections", "failures", "category",
                         "conf", "bbox", "raw_classifications", "classes", "scores"]),
        c, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(data=_json)
def test_predictions_reader_fuzz(tmp_path_factory, data) -> None:
    """Any JSON is either a valid predictions file or an InputError; nothing else escapes."""
    path = tmp_path_factory.mktemp("fuzz") / "p.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    try:
        preds = P.validate_predictions_data(json.loads(path.read_text()), path, "file")
    except InputError:
        return
    for pred in preds:
        assert isinstance(pred["filepath"], str)
        for det in pred.get("detections") or []:
            assert len(det["bbox"]) == 4
            P.guess_predictions_source({pred["filepath"]: pred})
