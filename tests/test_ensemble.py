"""Unit tests of the ensemble: taxonomy map, geofence rules, every combiner branch, combine().

A small synthetic taxonomy (cats, dogs, an owl) makes each rule's outcome predictable; the
expected values follow speciesnet 5.0.6's rules (ensemble_prediction_combiner.py).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from edgenet.constants import Classification
from edgenet.ensemble import Ensemble, Geofence, Taxonomy, combine_one, load_taxonomy_map
from edgenet.ensemble.taxonomy import LabelFormatError, ancestor_at_level, build_taxonomy_map
from edgenet.errors import InputError

BLANK = Classification.BLANK.value
ANIMAL = Classification.ANIMAL.value
HUMAN = Classification.HUMAN.value
VEHICLE = Classification.VEHICLE.value
UNKNOWN = Classification.UNKNOWN.value

MAMMAL = "u-mam;mammalia;;;;;mammal"
CARNIVORE = "u-carn;mammalia;carnivora;;;;carnivore"
FELIDAE = "u-fel;mammalia;carnivora;felidae;;;cat family"
PANTHERA = "u-pan;mammalia;carnivora;felidae;panthera;;panthera species"
LION = "u-leo;mammalia;carnivora;felidae;panthera;leo;lion"
TIGER = "u-tig;mammalia;carnivora;felidae;panthera;tigris;tiger"
LEOPARD = "u-par;mammalia;carnivora;felidae;panthera;pardus;leopard"
LYNX = "u-lyn;mammalia;carnivora;felidae;lynx;;lynx species"
BOBCAT = "u-bob;mammalia;carnivora;felidae;lynx;rufus;bobcat"
CANIDAE = "u-can;mammalia;carnivora;canidae;;;dog family"
WOLF = "u-wol;mammalia;carnivora;canidae;canis;lupus;grey wolf"  # no genus entry for canis
AVES = "u-ave;aves;;;;;bird"
OWL = "u-owl;aves;strigiformes;strigidae;bubo;bubo;eurasian eagle-owl"

TAXONOMY_LINES = [BLANK, VEHICLE, ANIMAL, HUMAN, UNKNOWN, MAMMAL, CARNIVORE, FELIDAE, PANTHERA,
                  LION, TIGER, LEOPARD, LYNX, BOBCAT, CANIDAE, WOLF, AVES, OWL]


def fcs(label: str) -> str:
    return ";".join(label.split(";")[1:6])


@pytest.fixture()
def taxonomy() -> Taxonomy:
    return Taxonomy(build_taxonomy_map(TAXONOMY_LINES))


def fence(taxonomy: Taxonomy, rules: dict | None = None, enabled: bool = True) -> Geofence:
    return Geofence(rules or {}, taxonomy, enabled)


def run(gf: Geofence, classes, scores, det_label="animal", det_conf=0.9, country=None,
        admin1=None) -> tuple:
    out = combine_one(classes, scores, det_label, det_conf, country, admin1, gf)
    assert list(out) == ["class", "score", "source"]
    return out["class"], out["score"], out["source"]


# ---------------------------------------------------------------------------- taxonomy


def test_taxonomy_map_construction(tmp_path: Path):
    dup = "u-dup;mammalia;carnivora;felidae;panthera;leo;lion again"
    path = tmp_path / "taxonomy.txt"
    path.write_text("\n".join(TAXONOMY_LINES + [dup]) + "\n", encoding="utf-8")
    tmap = load_taxonomy_map(path)
    assert tmap[fcs(LION)] == dup  # a later duplicate wins
    assert fcs(UNKNOWN) not in tmap
    assert tmap[";;;;"] == ANIMAL  # blank/vehicle/animal share the empty taxa: animal last
    assert tmap[fcs(HUMAN)] == HUMAN
    # ";;;;" was removed with blank and re-inserted for animal: it is now last
    assert list(tmap)[-1] == ";;;;"
    assert BLANK not in tmap.values() and VEHICLE not in tmap.values()


def test_ancestor_at_level(taxonomy: Taxonomy):
    tmap = taxonomy.map
    assert ancestor_at_level(LION, "species", tmap) == LION
    assert ancestor_at_level(LION, "genus", tmap) == PANTHERA
    assert ancestor_at_level(LION, "family", tmap) == FELIDAE
    assert ancestor_at_level(LION, "order", tmap) == CARNIVORE
    assert ancestor_at_level(LION, "class", tmap) == MAMMAL
    assert ancestor_at_level(LION, "kingdom", tmap) == ANIMAL
    assert ancestor_at_level(WOLF, "genus", tmap) is None  # no canis entry
    assert ancestor_at_level(PANTHERA, "species", tmap) is None
    assert ancestor_at_level(BLANK, "kingdom", tmap) is None
    assert ancestor_at_level(ANIMAL, "kingdom", tmap) == ANIMAL
    assert ancestor_at_level(LION, "phylum", tmap) is None
    with pytest.raises(LabelFormatError):
        ancestor_at_level("lion", "genus", tmap)
    assert taxonomy.info(LION)[1] == (LION, PANTHERA, FELIDAE, CARNIVORE, MAMMAL, ANIMAL)


# ---------------------------------------------------------------------------- geofence


@pytest.mark.parametrize(
    ("rules", "country", "admin1", "expected"),
    [
        ({}, "USA", None, False),
        ({"allow": {"KEN": []}}, "USA", None, True),
        ({"allow": {"KEN": []}}, "KEN", "XX", False),
        ({"allow": {"USA": ["CA"]}}, "USA", "CA", False),
        ({"allow": {"USA": ["CA"]}}, "USA", "NY", True),
        ({"allow": {"USA": ["CA"]}}, "USA", None, False),
        ({"allow": {}}, "USA", None, False),
        ({"block": {"USA": []}}, "USA", "CA", True),
        ({"block": {"USA": []}}, "CAN", None, False),
        ({"block": {"USA": ["NY"]}}, "USA", "NY", True),
        ({"block": {"USA": ["NY"]}}, "USA", "CA", False),
        ({"block": {"USA": ["NY"]}}, "USA", None, False),
        ({"allow": {"USA": []}, "block": {"USA": ["TX"]}}, "USA", "TX", True),
        ({"allow": {"USA": []}, "block": {"USA": ["TX"]}}, "USA", "CA", False),
    ],
)
def test_geofence_rules(taxonomy, rules, country, admin1, expected):
    gf = fence(taxonomy, {fcs(LION): rules} if rules else {})
    assert gf.blocks(LION, country, admin1) is expected


def test_geofence_disabled_or_no_country(taxonomy):
    rules = {fcs(LION): {"block": {"USA": []}}}
    assert fence(taxonomy, rules, enabled=False).blocks(LION, "USA", None) is False
    assert fence(taxonomy, rules).blocks(LION, None, None) is False
    assert fence(taxonomy, rules).blocks(LION, "", "CA") is False
    # Disabled or countryless: even bad codes and labels are not looked at (as reference).
    assert fence(taxonomy, rules, enabled=False).blocks("bad", "US", "CAL") is False


def test_geofence_bad_codes_raise(taxonomy):
    gf = fence(taxonomy, {fcs(LION): {"block": {"USA": []}}})
    with pytest.raises(InputError, match="Invalid country code US"):
        gf.blocks(LION, "US", None)
    with pytest.raises(InputError, match="Invalid region code CAL"):
        gf.blocks(LION, "USA", "CAL")
    with pytest.raises(LabelFormatError):
        gf.blocks("lion", "USA", None)


# ---------------------------------------------------------------------------- combiner


def test_rule_1a_confident_human_detection(taxonomy):
    assert run(fence(taxonomy), [LION], [0.9], "human", 0.71) == (HUMAN, 0.71, "detector")
    # exactly 0.7 is not > 0.7: falls through to the animal rules
    assert run(fence(taxonomy), [LION], [0.9], "human", 0.7) == (LION, 0.9, "classifier")


def test_rule_1b_mid_human_detection_with_human_or_vehicle_class(taxonomy):
    gf = fence(taxonomy)
    assert run(gf, [VEHICLE], [0.6], "human", 0.5) == (HUMAN, 0.6, "classifier")
    assert run(gf, [HUMAN], [0.51], "human", 0.21) == (HUMAN, 0.51, "classifier")
    # score 0.5 not > 0.5; det 0.2 not > 0.2: unknown (human/vehicle labels never roll up
    # to an animal, 5b needs an animal detection)
    assert run(gf, [HUMAN], [0.5], "human", 0.5) == (UNKNOWN, 0.5, "classifier")
    assert run(gf, [VEHICLE], [0.9], "human", 0.2) == (UNKNOWN, 0.9, "classifier")


def test_rule_2a_vehicle_detection_with_human_class(taxonomy):
    gf = fence(taxonomy)
    assert run(gf, [HUMAN], [0.6], "vehicle", 0.3) == (HUMAN, 0.6, "classifier")
    # 2a beats 2b even for a confident vehicle detection
    assert run(gf, [HUMAN], [0.6], "vehicle", 0.9) == (HUMAN, 0.6, "classifier")


def test_rule_2b_confident_vehicle_detection(taxonomy):
    assert run(fence(taxonomy), [LION], [0.95], "vehicle", 0.8) == (VEHICLE, 0.8, "detector")


def test_rule_2c_vehicle_detection_with_vehicle_class(taxonomy):
    gf = fence(taxonomy)
    assert run(gf, [VEHICLE], [0.45], "vehicle", 0.3) == (VEHICLE, 0.45, "classifier")
    assert run(gf, [VEHICLE], [0.4], "vehicle", 0.3) == (UNKNOWN, 0.4, "classifier")


def test_rule_3a_blank(taxonomy):
    gf = fence(taxonomy)
    assert run(gf, [BLANK], [0.6], "animal", 0.1) == (BLANK, 0.6, "classifier")
    # det 0.2 is not < 0.2 and 0.6 is not > 0.99: unknown, then 5b with det 0.2
    assert run(gf, [BLANK], [0.6], "animal", 0.2) == (UNKNOWN, 0.6, "classifier")


def test_rule_3b_very_confident_blank(taxonomy):
    gf = fence(taxonomy)
    assert run(gf, [BLANK], [0.995], "animal", 0.9) == (BLANK, 0.995, "classifier")
    assert run(gf, [BLANK], [0.99], "animal", 0.9) == (ANIMAL, 0.9, "detector")


def test_rule_4a_confident_animal_class(taxonomy):
    gf = fence(taxonomy)
    assert run(gf, [LION, TIGER], [0.85, 0.1], "animal", 0.05) == (LION, 0.85, "classifier")
    # on a human detection too (not confident enough for 1a)
    assert run(gf, [LION], [0.81], "human", 0.5) == (LION, 0.81, "classifier")


def test_rule_4b_animal_class_with_animal_detection(taxonomy):
    gf = fence(taxonomy)
    assert run(gf, [LION, BOBCAT], [0.7, 0.1], "animal", 0.3) == (LION, 0.7, "classifier")
    # det 0.2 not > 0.2: roll-up to genus panthera (0.7 > 0.65)
    assert run(gf, [LION, BOBCAT], [0.7, 0.1], "animal", 0.2) == (
        PANTHERA, 0.7, "classifier+rollup_to_genus")
    # not on a vehicle detection
    assert run(gf, [LION], [0.7], "vehicle", 0.1) == (PANTHERA, 0.7, "classifier+rollup_to_genus")


def test_rule_4_geofenced_top_class_rolls_up(taxonomy):
    gf = fence(taxonomy, {fcs(LION): {"block": {"USA": []}}})
    out = run(gf, [LION, TIGER, BOBCAT], [0.9, 0.05, 0.03], "animal", 0.9, "USA")
    assert out[0] == FELIDAE
    assert out[1] == pytest.approx(0.98)
    assert out[2] == "classifier+geofence+rollup_to_family"
    # same image in Kenya: not fenced
    assert run(gf, [LION, TIGER], [0.9, 0.05], "animal", 0.9, "KEN")[2] == "classifier"


def test_rule_4_geofence_rollup_skips_fenced_ancestors(taxonomy):
    rules = {fcs(LION): {"allow": {"KEN": []}}, fcs(FELIDAE): {"allow": {"KEN": []}}}
    gf = fence(taxonomy, rules)
    out = run(gf, [LION, WOLF], [0.85, 0.1], "animal", 0.9, "USA")
    assert out == (CARNIVORE, 0.85 + 0.1, "classifier+geofence+rollup_to_order")


def test_rule_4_geofence_rollup_failed(taxonomy):
    block = {"block": {"USA": []}}
    rules = {fcs(x): block for x in (LION, FELIDAE, CARNIVORE, MAMMAL)} | {";;;;": block}
    gf = fence(taxonomy, rules)
    assert run(gf, [LION], [0.9], "animal", 0.9, "USA") == (
        UNKNOWN, 0.9, "classifier+geofence+rollup_failed")


def test_rule_4_geofence_region_rules(taxonomy):
    gf = fence(taxonomy, {fcs(BOBCAT): {"allow": {"USA": ["CA", "NV"]}}})
    assert run(gf, [BOBCAT], [0.9], country="USA", admin1="CA")[2] == "classifier"
    out = run(gf, [BOBCAT], [0.9], country="USA", admin1="NY")
    # the geofence roll-up starts at family: lynx genus is skipped
    assert out == (FELIDAE, 0.9, "classifier+geofence+rollup_to_family")
    assert run(gf, [BOBCAT], [0.9], country="USA")[2] == "classifier"


def test_rule_4_geofence_disabled(taxonomy):
    gf = fence(taxonomy, {fcs(LION): {"block": {"USA": []}}}, enabled=False)
    assert run(gf, [LION], [0.9], country="USA") == (LION, 0.9, "classifier")


def test_rule_5a_rollup_levels(taxonomy):
    gf = fence(taxonomy)
    assert run(gf, [LION, TIGER], [0.4, 0.3], "animal", 0.1) == (
        PANTHERA, 0.7, "classifier+rollup_to_genus")
    out = run(gf, [LION, BOBCAT], [0.4, 0.3], "animal", 0.1)
    assert out == (FELIDAE, 0.7, "classifier+rollup_to_family")
    out = run(gf, [LION, WOLF], [0.4, 0.3], "animal", 0.1)
    assert out == (CARNIVORE, 0.7, "classifier+rollup_to_order")
    out = run(gf, [OWL, LION, WOLF], [0.3, 0.2, 0.2], "animal", 0.1)
    assert out == (ANIMAL, 0.7, "classifier+rollup_to_kingdom")
    # the rolled-up score must be strictly above 0.65
    assert run(gf, [LION, TIGER], [0.4, 0.25], "animal", 0.1) == (UNKNOWN, 0.4, "classifier")


def test_rule_5a_rollup_of_species_to_class(taxonomy):
    gf = fence(taxonomy)
    out = run(gf, [OWL, AVES], [0.5, 0.2], "animal", 0.1)
    assert out == (AVES, 0.7, "classifier+rollup_to_class")


def test_rule_5a_skips_geofenced_rollup_labels(taxonomy):
    gf = fence(taxonomy, {fcs(PANTHERA): {"block": {"USA": []}}})
    out = run(gf, [LION, TIGER], [0.4, 0.3], "animal", 0.1, "USA")
    assert out == (FELIDAE, 0.7, "classifier+rollup_to_family")


def test_rule_5b_animal_detection(taxonomy):
    gf = fence(taxonomy)
    assert run(gf, [LION], [0.3], "animal", 0.6) == (ANIMAL, 0.6, "detector")
    assert run(gf, [LION], [0.3], "animal", 0.5) == (UNKNOWN, 0.3, "classifier")
    assert run(gf, [LION], [0.3], "human", 0.6) == (UNKNOWN, 0.3, "classifier")


def test_bad_label_raises_only_where_reference_looks(taxonomy):
    gf = fence(taxonomy)
    # 4a without geofence never inspects the label
    assert run(gf, ["weird"], [0.9], "animal", 0.9) == ("weird", 0.9, "classifier")
    with pytest.raises(LabelFormatError):
        run(gf, ["weird"], [0.3], "animal", 0.9)  # roll-up parses it


# ---------------------------------------------------------------------------- Ensemble


@pytest.fixture()
def ensemble(tmp_path: Path) -> Ensemble:
    tax = tmp_path / "taxonomy.txt"
    tax.write_text("\n".join(TAXONOMY_LINES) + "\n", encoding="utf-8")
    geo = tmp_path / "geofence.json"
    geo.write_text(json.dumps({fcs(LION): {"block": {"USA": []}}}), encoding="utf-8")
    return Ensemble(tax, geo, "v-test")


def det(category="1", conf=0.9, bbox=(0.1, 0.1, 0.5, 0.5), raw=None) -> dict:
    out = {"category": category, "label": {"0": "whole_image_classification", "1": "animal",
                                           "2": "human", "3": "vehicle"}[category],
           "conf": conf, "bbox": list(bbox)}
    if raw is not None:
        out["raw_classifications"] = {"classes": raw[0], "scores": raw[1]}
    return out


def test_combine_full_prediction_shape(ensemble: Ensemble):
    d1, d2 = det(conf=0.9), det(conf=0.05, bbox=(0.5, 0.5, 0.1, 0.1))
    cls = {"f": {"filepath": "f", "detections": [
        dict(d1, raw_classifications={"classes": [LION, TIGER, LEOPARD],
                                      "scores": [0.9, 0.05, 0.01]}), dict(d2)]}}
    geo = {"f": {"country": "USA", "admin1_region": None, "latitude": 1.5, "longitude": None}}
    (pred,) = ensemble.combine(["f"], cls, {"f": {"filepath": "f", "detections": [d1, d2]}}, geo)
    assert list(pred) == ["filepath", "country", "latitude", "detections", "model_version"]
    assert pred["model_version"] == "v-test"
    first, second = pred["detections"]
    assert first["raw_classifications"] == {"classes": [LION, TIGER], "scores": [0.9, 0.05]}
    # lion is blocked in the USA: the geofence roll-up starts at family level
    assert first["processed_classification"] == {
        "class": FELIDAE, "score": 0.9 + 0.05 + 0.01,
        "source": "classifier+geofence+rollup_to_family"}
    assert "processed_classification" not in second and "raw_classifications" not in second


def test_combine_failures(ensemble: Ensemble):
    preds = ensemble.combine(
        ["a", "b", "c"],
        {"a": {"filepath": "a", "failures": ["CLASSIFIER"]}},
        {"b": {"filepath": "b", "detections": [det()]}},
        {"a": {"country": None}, "b": {}},
    )
    assert preds[0] == {"filepath": "a", "failures": ["CLASSIFIER", "DETECTOR"],
                        "model_version": "v-test"}
    assert preds[1] == {"filepath": "b", "failures": ["CLASSIFIER"], "detections": [det()],
                        "model_version": "v-test"}
    assert preds[2]["failures"] == ["CLASSIFIER", "DETECTOR", "GEOLOCATION"]
    assert list(preds[2]) == ["filepath", "failures", "model_version"]


def test_combine_whole_image_pairs_with_top_detection(ensemble: Ensemble):
    whole = det("0", 1.0, (0.0, 0.0, 1.0, 1.0), raw=([BLANK, LION], [0.6, 0.3]))
    top, low = det("1", 0.15), det("2", 0.1, (0.2, 0.2, 0.2, 0.2))
    preds = ensemble.combine(
        ["w", "e", "x"],
        {fp: {"filepath": fp, "detections": [whole]} for fp in ("w", "e", "x")},
        {"w": {"filepath": "w", "detections": [top, low]},
         "e": {"filepath": "e", "detections": []},
         "x": {"filepath": "x", "failures": ["DETECTOR"]}},
        {"w": {}, "e": {}, "x": {}},
    )
    w, e, x = preds
    assert [d["category"] for d in w["detections"]] == ["0", "1", "2"]
    # paired with the top detection (conf 0.15 < 0.2): blank by rule 3a
    assert w["detections"][0]["processed_classification"] == {
        "class": BLANK, "score": 0.6, "source": "classifier"}
    assert "processed_classification" not in w["detections"][1]
    # no detections: paired with an animal detection of confidence 0.0 -> 3a blank as well
    assert e["detections"][0]["processed_classification"]["class"] == BLANK
    assert len(e["detections"]) == 1
    # detector failed: the pseudo-detection is reported, unprocessed
    assert x["failures"] == ["DETECTOR"]
    assert len(x["detections"]) == 1 and "processed_classification" not in x["detections"][0]


def test_combine_mismatched_detections_is_input_error(ensemble: Ensemble):
    d = det(raw=([LION], [0.9]))
    shifted = dict(d, bbox=[0.1 + 2e-4, 0.1, 0.5, 0.5])
    with pytest.raises(InputError, match="`img one.jpg`"):
        ensemble.combine(["img one.jpg"], {"img one.jpg": {"detections": [shifted]}},
                         {"img one.jpg": {"detections": [det()]}}, {})
    close = dict(d, bbox=[0.1 + 5e-5, 0.1, 0.5, 0.5])  # within 1e-4: accepted
    (pred,) = ensemble.combine(["g"], {"g": {"detections": [close]}},
                               {"g": {"detections": [det()]}}, {"g": {}})
    assert pred["detections"][0]["bbox"] == close["bbox"]
    with pytest.raises(InputError):
        ensemble.combine(["g"], {"g": {"detections": []}}, {"g": {"detections": [det()]}}, {})


def test_combine_uses_top5_and_reports_requested(ensemble: Ensemble):
    classes = [LION, BOBCAT, OWL, WOLF, AVES, TIGER]
    scores = [0.4, 0.1, 0.1, 0.1, 0.05, 0.25]  # TIGER (6th) would make panthera 0.65+
    d = det(conf=0.1, raw=(classes, scores))
    (pred,) = ensemble.combine(["f"], {"f": {"detections": [d]}},
                               {"f": {"detections": [det(conf=0.1)]}}, {"f": {}})
    # top 5 only: nothing passes 0.65 before kingdom (with TIGER, felidae would pass)
    processed = pred["detections"][0]["processed_classification"]
    assert (processed["class"], processed["source"]) == (ANIMAL, "classifier+rollup_to_kingdom")
    for max_cls, expected in ((1, 1), (None, 6), (10, 6)):
        (pred,) = ensemble.combine(["f"], {"f": {"detections": [d]}},
                                   {"f": {"detections": [det(conf=0.1)]}}, {"f": {}},
                                   max_classifications_per_detection=max_cls)
        assert len(pred["detections"][0]["raw_classifications"]["classes"]) == expected


def test_combine_partial_predictions_and_no_mutation(ensemble: Ensemble):
    d = det(raw=([LION, TIGER, LEOPARD], [0.5, 0.2, 0.1]))
    cls = {"f": {"filepath": "f", "detections": [d]}}
    dets = {"f": {"filepath": "f", "detections": [det()]}}
    before = copy.deepcopy((cls, dets))
    old = {"filepath": "p", "model_version": "old"}
    preds = ensemble.combine(["p", "f"], cls, dets, {"f": {}}, partial_predictions={"p": old})
    assert preds[0] is old
    assert (cls, dets) == before
    assert preds[1]["detections"][0]["processed_classification"]["class"] == PANTHERA


def test_combine_bad_label_is_input_error(ensemble: Ensemble):
    d = det(conf=0.1, raw=(["not-a-label"], [0.3]))
    with pytest.raises(InputError, match="`bad.jpg`"):
        ensemble.combine(["bad.jpg"], {"bad.jpg": {"detections": [d]}},
                         {"bad.jpg": {"detections": [det(conf=0.1)]}}, {"bad.jpg": {}})


def test_combine_bad_country_is_input_error(ensemble: Ensemble):
    d = det(raw=([LION], [0.9]))
    with pytest.raises(InputError, match="x.jpg.*Invalid country code US"):
        ensemble.combine(["x.jpg"], {"x.jpg": {"detections": [d]}},
                         {"x.jpg": {"detections": [det()]}}, {"x.jpg": {"country": "US"}})
