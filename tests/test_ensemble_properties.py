"""Property tests of the ensemble that need no reference installation (hypothesis).

Invariants checked on random detections, classifications, locations and random geofences:
output classes come from the inputs, the taxonomy or the special labels; scores come from
the inputs (or sums of them for roll-ups); a geofence-disabled or countryless ensemble
never reports "geofence" sources and equals one with no rules; a reported taxon is never
geofenced where it is reported; roll-ups name an ancestor at the level they claim;
combine() keeps order, key layout and the requested number of raw classes.
Run over a synthetic taxonomy always, and over the real SpeciesNet taxonomy when
../shared/data/speciesnet is present.
"""

from __future__ import annotations

import json
import random

import pytest
from conftest import SPECIESNET_DATA
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgenet.constants import Classification
from edgenet.ensemble import Ensemble, Geofence, Taxonomy, combine_one, random_geofence
from edgenet.ensemble.taxonomy import LEVELS, build_taxonomy_map, read_label_lines

SPECIALS = [c.value for c in Classification]
KNOWN_SOURCES = {"classifier", "detector", "classifier+geofence+rollup_failed"} | {
    f"classifier+{g}rollup_to_{level}" for g in ("", "geofence+")
    for level in ("genus", "family", "order", "class", "kingdom")}
THRESHOLDS = [0.0, 0.1, 0.2, 0.4, 0.5, 0.65, 0.7, 0.8, 0.99, 1.0]

_GENERA = {
    ("mammalia", "carnivora", "felidae"): ["panthera", "lynx", "felis"],
    ("mammalia", "carnivora", "canidae"): ["canis", "vulpes"],
    ("mammalia", "rodentia", "sciuridae"): ["sciurus", "tamias"],
    ("aves", "strigiformes", "strigidae"): ["bubo", "strix"],
    ("reptilia", "squamata", "varanidae"): ["varanus"],
}


def _synthetic_taxonomy() -> list[str]:
    lines, n = list(SPECIALS), 0
    seen = set()
    for (cls, order, family), genera in _GENERA.items():
        for taxa in ((cls, "", "", "", ""), (cls, order, "", "", ""),
                     (cls, order, family, "", "")):
            if taxa not in seen:
                seen.add(taxa)
                n += 1
                lines.append(f"id{n};{';'.join(taxa)};name{n}")
        for g, genus in enumerate(genera):
            if g % 2 == 0:  # some genera have no own entry (roll-up skips that level)
                n += 1
                lines.append(f"id{n};{cls};{order};{family};{genus};;{genus} species")
            for species in ("alpha", "beta", "gamma"):
                n += 1
                lines.append(f"id{n};{cls};{order};{family};{genus};{species};{genus} {species}")
    return lines


SYNTHETIC = _synthetic_taxonomy()
REAL = (read_label_lines(SPECIESNET_DATA / "always_crop_99710272_22x8_v12_epoch_00148.labels.txt")
        if (SPECIESNET_DATA / "taxonomy_release.txt").is_file() else None)
REAL_TAXONOMY = (read_label_lines(SPECIESNET_DATA / "taxonomy_release.txt")
                 if REAL is not None else None)

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def scores_strategy(n: int) -> st.SearchStrategy[list[float]]:
    one = st.one_of(st.sampled_from(THRESHOLDS), st.floats(0, 1, allow_nan=False))
    return st.lists(one, min_size=n, max_size=n).map(lambda xs: sorted(xs, reverse=True))


@st.composite
def detection_case(draw, labels: list[str]) -> dict:
    pool = labels + SPECIALS
    classes = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=7, unique=True))
    return {
        "classes": classes,
        "scores": draw(scores_strategy(len(classes))),
        "det_label": draw(st.sampled_from(["animal", "human", "vehicle"])),
        "det_conf": draw(st.one_of(st.sampled_from(THRESHOLDS), st.floats(0, 1))),
        "country": draw(st.sampled_from([None, "USA", "USA", "KEN", "GBR", "AUS"])),
        "admin1": draw(st.sampled_from([None, "CA", "NY", "TX"])),
        "geofence_seed": draw(st.integers(0, 2**31)),
        "n_rules": draw(st.integers(0, 40)),
    }


_TAXONOMIES: dict[int, Taxonomy] = {}


def _setup(lines: list[str], case: dict, enabled: bool = True) -> tuple[Taxonomy, Geofence]:
    if id(lines) not in _TAXONOMIES:
        _TAXONOMIES[id(lines)] = Taxonomy(build_taxonomy_map(lines))
    taxonomy = _TAXONOMIES[id(lines)]
    rules = random_geofence(lines, random.Random(case["geofence_seed"]), case["n_rules"])
    return taxonomy, Geofence(rules, taxonomy, enabled)


def _combine(gf: Geofence, case: dict) -> dict:
    return combine_one(case["classes"][:5], case["scores"][:5], case["det_label"],
                       case["det_conf"], case["country"], case["admin1"], gf)


def _check_invariants(lines: list[str], case: dict) -> None:
    taxonomy, gf = _setup(lines, case)
    out = _combine(gf, case)
    cls, score, source = out["class"], out["score"], out["source"]
    top5 = case["classes"][:5]
    assert source in KNOWN_SOURCES
    assert cls in top5 or cls in SPECIALS or cls in taxonomy.map.values()
    if source == "detector":
        assert score == case["det_conf"]
        assert cls in (Classification.HUMAN.value, Classification.VEHICLE.value,
                       Classification.ANIMAL.value)
    elif "rollup_to_" in source:
        level = LEVELS.index(source.rsplit("_", 1)[1])
        assert any(taxonomy.info(c)[1][level] == cls for c in top5)
        contributing = [s for c, s in zip(top5, case["scores"], strict=False)
                        if taxonomy.info(c)[1][level] == cls]
        assert score == pytest.approx(sum(contributing), abs=1e-12)
        assert score > 0.65 or "geofence" in source
    else:
        assert score == case["scores"][0]
        assert cls == top5[0] or cls in SPECIALS
    # A reported taxon is allowed where it is reported.
    if cls not in SPECIALS and source != "detector":
        assert not gf.blocks(cls, case["country"], case["admin1"])
    # Geofence off (or no country) never mentions the geofence and equals "no rules".
    _, off = _setup(lines, case, enabled=False)
    off_out = _combine(off, case)
    assert "geofence" not in off_out["source"]
    assert off_out == _combine(Geofence({}, taxonomy, True), case)
    if not case["country"]:
        assert out == off_out


@SETTINGS
@given(case=detection_case(SYNTHETIC[5:]))
def test_invariants_synthetic_taxonomy(case):
    _check_invariants(SYNTHETIC, case)


@pytest.mark.skipif(REAL is None, reason="shared SpeciesNet data absent")
@SETTINGS
@given(data=st.data())
def test_invariants_real_taxonomy(data):
    rng = random.Random(data.draw(st.integers(0, 2**31)))
    pool = rng.sample(REAL, 12)
    # relatives of the pool (same family) make roll-ups likely
    families = {";".join(x.split(";")[1:4]) for x in pool}
    pool += [x for x in REAL if ";".join(x.split(";")[1:4]) in families][:40]
    case = data.draw(detection_case(pool))
    _check_invariants(REAL_TAXONOMY, case)


@st.composite
def image_case(draw, labels: list[str], filepath: str) -> dict:
    n_dets = draw(st.integers(0, 3))
    dets = []
    for i in range(n_dets):
        cat = draw(st.sampled_from(["1", "2", "3"]))
        dets.append({"category": cat, "label": {"1": "animal", "2": "human", "3": "vehicle"}[cat],
                     "conf": draw(st.floats(0, 1)), "bbox": [0.1 * i, 0.1, 0.2, 0.2]})
    dets.sort(key=lambda d: d["conf"], reverse=True)
    classified = []
    for det in dets:
        det = dict(det)
        if draw(st.booleans()):
            case = draw(detection_case(labels))
            det["raw_classifications"] = {"classes": case["classes"], "scores": case["scores"]}
        classified.append(det)
    return {
        "det": draw(st.sampled_from([{"filepath": filepath, "detections": dets},
                                     {"filepath": filepath, "failures": ["DETECTOR"]}, None])),
        "cls": draw(st.sampled_from([{"filepath": filepath, "detections": classified},
                                     {"filepath": filepath, "failures": ["CLASSIFIER"]}, None])),
        "geo": draw(st.sampled_from([None, {}, {"country": "USA", "admin1_region": "CA",
                                                "latitude": None, "longitude": -120.5}])),
    }


@SETTINGS
@given(data=st.data(), max_cls=st.sampled_from([None, 1, 2, 5]), enabled=st.booleans())
def test_combine_structure(data, max_cls, enabled):
    filepaths = [f"/img/{i}.jpg" for i in range(data.draw(st.integers(1, 4)))]
    images = {fp: data.draw(image_case(SYNTHETIC[5:], fp)) for fp in filepaths}
    rules = random_geofence(SYNTHETIC, random.Random(data.draw(st.integers(0, 99))), 10)
    ens = Ensemble.from_maps(build_taxonomy_map(SYNTHETIC), rules, "v1", geofence=enabled)
    cls_results = {fp: im["cls"] for fp, im in images.items() if im["cls"] is not None}
    det_results = {fp: im["det"] for fp, im in images.items() if im["det"] is not None}
    geo_results = {fp: im["geo"] for fp, im in images.items() if im["geo"] is not None}
    before = json.dumps([cls_results, det_results, geo_results])
    preds = ens.combine(filepaths, cls_results, det_results, geo_results,
                        max_classifications_per_detection=max_cls)
    assert json.dumps([cls_results, det_results, geo_results]) == before  # inputs untouched
    assert [p["filepath"] for p in preds] == filepaths
    order = ["filepath", "failures", "country", "admin1_region", "latitude", "longitude",
             "detections", "model_version"]
    for pred in preds:
        fp = pred["filepath"]
        assert list(pred) == [k for k in order if k in pred]
        assert list(pred)[-1] == "model_version" and pred["model_version"] == "v1"
        assert None not in pred.values()
        expected_failures = [name for name, failed in (
            ("CLASSIFIER", images[fp]["cls"] is None or "failures" in images[fp]["cls"]),
            ("DETECTOR", images[fp]["det"] is None or "failures" in images[fp]["det"]),
            ("GEOLOCATION", images[fp]["geo"] is None)) if failed]
        assert pred.get("failures", []) == expected_failures
        for det in pred.get("detections", []):
            raw = det.get("raw_classifications")
            if raw is not None:
                assert "processed_classification" in det
                assert len(raw["classes"]) == len(raw["scores"])
                if max_cls is not None:
                    assert len(raw["classes"]) <= max_cls
                if not enabled:
                    assert "geofence" not in det["processed_classification"]["source"]
            else:
                assert "processed_classification" not in det
