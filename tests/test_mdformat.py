"""SpeciesNet predictions -> MegaDetector batch output format 1.6."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgenet.errors import InputError
from edgenet.mdformat import convert_file, label_name, to_md_format

LION = "00000000-0000-0000-0000-000000000001;mammalia;carnivora;felidae;panthera;leo;lion"
FELIDAE = "00000000-0000-0000-0000-000000000009;mammalia;carnivora;felidae;;;"
BLANK = "f1856211-cfb7-4a5b-9158-c0f72fd09ee6;;;;;;blank"
HUMAN = "990ae9dd-7a59-4344-afcb-1b7b21368000;mammalia;primates;hominidae;homo;sapiens;human"


def _predictions() -> dict:
    return {
        "info": {"format_version": "20261015"},
        "predictions": [
            {
                "filepath": "a/lion.jpg",
                "detections": [
                    {"category": "1", "label": "animal", "conf": 0.9, "bbox": [0.1, 0.2, 0.3, 0.4],
                     "raw_classifications": {"classes": [LION, FELIDAE], "scores": [0.8, 0.1]},
                     "processed_classification": {"class": LION, "score": 0.8,
                                                  "source": "classifier"}},
                    {"category": "2", "label": "human", "conf": 0.05, "bbox": [0, 0, 1, 1]},
                ],
                "country": "KEN",
                "model_version": "4.0.2a",
            },
            {"filepath": "b.jpg", "detections": [], "model_version": "4.0.2a"},
            {"filepath": "c.jpg", "failures": ["CLASSIFIER", "DETECTOR"],
             "model_version": "4.0.2a"},
            {
                "filepath": "d.jpg",
                "detections": [
                    {"category": "0", "label": "whole_image_classification", "conf": 1.0,
                     "bbox": [0.0, 0.0, 1.0, 1.0],
                     "processed_classification": {"class": HUMAN, "score": 0.7,
                                                  "source": "classifier"}},
                    {"category": "2", "label": "human", "conf": 0.6, "bbox": [0.5, 0.5, 0.2, 0.2]},
                ],
                "failures": ["GEOLOCATION"],
                "model_version": "4.0.2a",
            },
        ],
    }


def test_md_structure() -> None:
    md = to_md_format(_predictions(), completion_time="2026-01-01 00:00:00")
    assert md["info"]["format_version"] == "1.6"
    assert md["info"]["detector"] == "md_v5a.0.0.pt"
    assert md["info"]["classifier"] == "speciesnet 4.0.2a"
    assert md["detection_categories"] == {"1": "animal", "2": "person", "3": "vehicle"}
    cats = md["classification_categories"]
    descriptions = md["classification_category_descriptions"]
    assert set(cats) == set(descriptions)
    by_label = {descriptions[i]: i for i in descriptions}
    assert set(by_label) == {LION, HUMAN}  # processed classifications only
    assert cats[by_label[LION]] == "lion"
    images = {img["file"]: img for img in md["images"]}
    assert [img["file"] for img in md["images"]] == ["a/lion.jpg", "b.jpg", "c.jpg", "d.jpg"]
    lion = images["a/lion.jpg"]["detections"]
    assert lion[0] == {"category": "1", "conf": 0.9, "bbox": [0.1, 0.2, 0.3, 0.4],
                       "classifications": [[by_label[LION], 0.8]]}
    assert "classifications" not in lion[1] and lion[1]["category"] == "2"
    assert images["b.jpg"] == {"file": "b.jpg", "detections": []}
    assert images["c.jpg"] == {"file": "c.jpg", "failure": "CLASSIFIER,DETECTOR",
                               "detections": None}
    # Whole-image classification goes to the top detection; category 0 is not a box.
    d = images["d.jpg"]
    assert "failure" not in d
    assert d["detections"] == [{"category": "2", "conf": 0.6, "bbox": [0.5, 0.5, 0.2, 0.2],
                                "classifications": [[by_label[HUMAN], 0.7]]}]


def test_classifier_only_output_uses_raw_classes_sorted() -> None:
    preds = {"predictions": [{"filepath": "x.jpg", "detections": [
        {"category": "1", "label": "animal", "conf": 0.5, "bbox": [0, 0, 1, 1],
         "raw_classifications": {"classes": [FELIDAE, LION], "scores": [0.2, 0.7]}}]}]}
    md = to_md_format(preds)
    ids = {v: k for k, v in md["classification_category_descriptions"].items()}
    assert md["images"][0]["detections"][0]["classifications"] == [
        [ids[LION], 0.7], [ids[FELIDAE], 0.2]]
    assert md["info"]["classifier"] == "speciesnet"


def test_label_names() -> None:
    assert label_name(LION) == "lion"
    assert label_name(BLANK) == "blank"
    assert label_name(FELIDAE) == "felidae"
    assert label_name("u;aves;;;passer;domesticus;") == "passer domesticus"
    assert label_name("plain") == "plain"


def test_convert_file(tmp_path: Path) -> None:
    src = tmp_path / "p.json"
    src.write_text(json.dumps(_predictions()), encoding="utf-8")
    out = tmp_path / "md.json"
    md = convert_file(src, out, detector="md_v5b.0.0.onnx")
    on_disk = json.loads(out.read_text(encoding="utf-8"))
    assert on_disk["images"] == md["images"] and on_disk["info"]["detector"] == "md_v5b.0.0.onnx"
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": []}', encoding="utf-8")
    with pytest.raises(InputError, match="MegaDetector-format"):
        convert_file(bad, tmp_path / "x.json")
