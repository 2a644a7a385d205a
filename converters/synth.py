"""`edgenet models synth`: a synthetic SpeciesNet model folder in the real on-disk formats.

Why: real weights are large downloads under their own licences; tests, benchmarks and the
side-by-side comparison with speciesnet 5.0.6 need stand-ins that speciesnet itself loads and
runs. The folder this writes is exactly what `speciesnet.utils.ModelInfo` reads:

    info.json               version/type/classifier/classifier_labels/detector/taxonomy/geofence
    md_v5a_synth_<size>.pt  MegaDetector-style yolov5 checkpoint (converters.synth_detector)
    always_crop_synth_<size>.pt     onnx2torch classifier (torch.save of the whole module)
    always_crop_synth_<size>.keras  the same weights, Keras 3   } listed under the extra key
    always_crop_synth_<size>.h5     the same weights, Keras 2   } "edgenet_keras_classifier",
                                                                  which speciesnet ignores
    <labels>.labels.txt, taxonomy_release.txt, geofence_release.synthetic.json
    synth_report.json       how the weights were conditioned, fp32-vs-fp64 drift, box counts

Labels/taxonomy: the real SpeciesNet files from `../shared/data/speciesnet/` when present
(`labels="auto"`), else generated ones (`labels="generated"`: 2498 labels by default with
SpeciesNet's special labels blank/animal/human/vehicle and a consistent made-up taxonomy, so
roll-ups and geofencing have something to work on). The geofence always is generated, with
both allow and block rules, from the labels actually used.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from converters.pack import jsonable
from edgenet.constants import Classification
from edgenet.errors import EdgenetError

SIZES = ("tiny", "full")
NUM_LABELS = 2498  # SpeciesNet 4.0.x's classifier outputs
REAL_LABELS_NAME = "always_crop_99710272_22x8_v12_epoch_00148.labels.txt"
REAL_TAXONOMY_NAME = "taxonomy_release.txt"
GEOFENCE_NAME = "geofence_release.synthetic.json"
KERAS_TWIN_KEY = "edgenet_keras_classifier"
SYNTH_KEY = "edgenet_synthetic"

_SPECIALS = [Classification.BLANK.value, Classification.ANIMAL.value,
             Classification.HUMAN.value, Classification.VEHICLE.value]


def shared_data_dir() -> Path:
    """`../shared/data/speciesnet` next to the checkout (`$EDGENET_SHARED_DIR` overrides)."""
    env = os.environ.get("EDGENET_SHARED_DIR")
    root = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared"
    return root / "data" / "speciesnet"


def calibration_image_paths() -> list[Path]:
    """Real camera-trap images for conditioning the synthetic weights (empty when absent)."""
    from converters.fidelity import default_image_dirs, find_images

    return find_images(default_image_dirs())


# --------------------------------------------------------------------------------------------
# generated labels and taxonomy

_ONSETS = ["b", "c", "d", "f", "g", "l", "m", "n", "p", "r", "s", "t", "v", "ph", "th", "tr"]
_VOWELS = ["a", "e", "i", "o", "u", "ae", "io"]


def _word(rng: np.random.Generator, syllables: int) -> str:
    return "".join(str(rng.choice(_ONSETS)) + str(rng.choice(_VOWELS)) for _ in range(syllables))


def _uuid(rng: np.random.Generator) -> str:
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


def generate_labels(n: int = NUM_LABELS, seed: int = 0) -> tuple[list[str], list[str]]:
    """N made-up labels (classifier order) and a taxonomy covering them and all ancestors.

    Lines have SpeciesNet's 7 fields `uuid;class;order;family;genus;species;common name`.
    About 80% are species, the rest genus/family/order/class-level labels as in the real
    list; every ancestor taxon gets its own taxonomy line so roll-ups resolve.
    """
    if n < len(_SPECIALS) + 1:
        raise ValueError(f"need at least {len(_SPECIALS) + 1} labels")
    rng = np.random.default_rng(seed)
    classes = ["mammalia", "aves", "reptilia", "amphibia"]
    used: set[str] = set()

    def fresh(syllables: int, suffix: str = "") -> str:
        while True:
            w = _word(rng, syllables) + suffix
            if w not in used:
                used.add(w)
                return w

    labels: list[str] = []
    ancestors: dict[str, str] = {}  # taxa (5 fields) -> full line

    def ancestor(cls: str, order: str = "", family: str = "", genus: str = "") -> None:
        taxa = ";".join([cls, order, family, genus, ""])
        if taxa in ancestors:
            return
        name = genus or family or order or cls
        level = "species" if genus else "family" if family else "order" if order else "class"
        ancestors[taxa] = f"{_uuid(rng)};{taxa};{name} {level}"

    target = n - len(_SPECIALS)
    while len(labels) < target:
        cls = str(rng.choice(classes))
        order = fresh(3, "iformes" if cls == "aves" else "ia")
        ancestor(cls, order)
        for _ in range(int(rng.integers(1, 6))):
            family = fresh(3, "idae")
            ancestor(cls, order, family)
            for _ in range(int(rng.integers(1, 6))):
                genus = fresh(3)
                ancestor(cls, order, family, genus)
                for _ in range(int(rng.integers(1, 7))):
                    species = fresh(2)
                    labels.append(f"{_uuid(rng)};{cls};{order};{family};{genus};{species};"
                                  f"synthetic {genus} {species}")
                if rng.random() < 0.3:
                    labels.append(ancestors[";".join([cls, order, family, genus, ""])])
            if rng.random() < 0.2:
                labels.append(ancestors[";".join([cls, order, family, "", ""])])
        if rng.random() < 0.1:
            labels.append(ancestors[";".join([cls, order, "", "", ""])])
    labels = labels[:target]
    order_idx = rng.permutation(len(labels) + len(_SPECIALS))
    merged = labels + _SPECIALS
    labels = [merged[i] for i in order_idx]
    taxonomy = set(labels) | set(ancestors.values()) | set(_SPECIALS)
    for cls in classes:
        taxonomy.add(f"{_uuid(rng)};{cls};;;;;{cls}")
    # The human label is a real species line: its ancestors need taxonomy lines too (drawn
    # last so the rest of the output does not depend on them).
    _, h_cls, h_order, h_family, h_genus, _, _ = Classification.HUMAN.value.split(";")
    known = set(ancestors)
    ancestor(h_cls, h_order)
    ancestor(h_cls, h_order, h_family)
    ancestor(h_cls, h_order, h_family, h_genus)
    taxonomy |= {line for taxa, line in ancestors.items() if taxa not in known}
    return labels, sorted(taxonomy)


# --------------------------------------------------------------------------------------------
# geofence

_COUNTRIES = {
    "USA": ["CA", "NY", "TX", "WA", "MT", "FL", "AZ", "NM"],
    "CAN": ["BC", "ON", "QC", "AB"],
    "AUS": ["NS", "QL", "VI", "WA"],
    "BRA": [], "KEN": [], "TZA": [], "IND": [], "FRA": [], "GBR": [], "ZAF": [], "MEX": [],
    "ARG": [], "IDN": [], "CHN": [], "DEU": [],
}


def _full_class_string(label: str) -> str:
    return ";".join(label.split(";")[1:6])


def _fallback_geofence(labels: list[str], rng: np.random.Generator, n_rules: int
                       ) -> dict[str, dict[str, dict[str, list[str]]]]:
    """Allow and block rules in speciesnet's geofence JSON shape, on species/genus labels."""
    candidates = sorted({_full_class_string(lb) for lb in labels
                         if lb.split(";")[4] and lb not in _SPECIALS})
    picked = rng.choice(len(candidates), size=min(n_rules, len(candidates)), replace=False)
    geofence: dict[str, dict[str, dict[str, list[str]]]] = {}
    countries = sorted(_COUNTRIES)
    for k, i in enumerate(sorted(int(j) for j in picked)):
        rule: dict[str, dict[str, list[str]]] = {}
        kind = ("allow", "block", "both")[k % 3]
        if kind in ("allow", "both"):
            allow = {}
            for c in rng.choice(countries, size=int(rng.integers(1, 4)), replace=False):
                regions = _COUNTRIES[str(c)]
                n_reg = int(rng.integers(0, len(regions) + 1)) if regions else 0
                allow[str(c)] = sorted(str(r) for r in rng.choice(regions, n_reg, replace=False))
            rule["allow"] = allow
        if kind in ("block", "both"):
            block = {}
            for c in rng.choice(countries, size=int(rng.integers(1, 3)), replace=False):
                regions = _COUNTRIES[str(c)]
                n_reg = int(rng.integers(0, min(3, len(regions)) + 1)) if regions else 0
                block[str(c)] = sorted(str(r) for r in rng.choice(regions, n_reg, replace=False))
            rule["block"] = block
        geofence[candidates[i]] = rule
    return geofence


def make_geofence(labels: list[str], seed: int = 0, n_rules: int = 200) -> dict[str, Any]:
    """The ensemble's own generator when available (keeps one definition), else ours."""
    try:
        from edgenet.ensemble.geofence import random_geofence
    except ImportError:
        return _fallback_geofence(labels, np.random.default_rng(seed + 7), n_rules)
    return random_geofence(labels, random.Random(seed + 7), n_rules)


# --------------------------------------------------------------------------------------------
# the folder


def synth_source_folder(
    dst: Path,
    size: str = "tiny",
    seed: int = 0,
    *,
    labels: str = "auto",
    num_labels: int | None = None,
    calib_images: list[Path] | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Write a synthetic SpeciesNet model folder at DST (built aside, renamed into place).

    LABELS: "auto" (real files from ../shared when present, else generated), "real" (fail if
    absent) or "generated". NUM_LABELS (implies generated labels) defaults to 2498.
    """
    if size not in SIZES:
        raise EdgenetError(f"unknown size {size!r}", fix="use --size tiny or --size full")
    if labels not in ("auto", "real", "generated"):
        raise EdgenetError(f"unknown labels mode {labels!r}", fix="use auto, real or generated")
    dst = Path(dst)
    if dst.exists() and not overwrite and (not dst.is_dir() or any(dst.iterdir())):
        raise EdgenetError("destination exists and is not empty", path=dst,
                               fix="choose a new folder or pass --force")
    from converters.synth_classifier import build_synthetic_classifier
    from converters.synth_detector import build_synthetic_megadetector

    data = shared_data_dir()
    real = (data / REAL_LABELS_NAME).is_file() and (data / REAL_TAXONOMY_NAME).is_file()
    if labels == "real" and not real:
        raise EdgenetError("real SpeciesNet labels not found", path=data,
                           fix="use --labels generated")
    if num_labels is not None and labels == "real":
        raise EdgenetError("--num-labels only applies to generated labels",
                           fix="drop --num-labels, or use --labels generated")
    # Asking for a label count means asking for generated labels.
    use_real = real and labels != "generated" and num_labels is None
    say = log or (lambda _msg: None)
    images = calibration_image_paths() if calib_images is None else list(calib_images)

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.synth-", dir=dst.parent))
    try:
        if use_real:
            label_lines = (data / REAL_LABELS_NAME).read_text(encoding="utf-8").splitlines()
            labels_name = REAL_LABELS_NAME
            shutil.copyfile(data / REAL_LABELS_NAME, tmp / labels_name)
            shutil.copyfile(data / REAL_TAXONOMY_NAME, tmp / REAL_TAXONOMY_NAME)
            label_source = f"real SpeciesNet labels copied from {data}"
        else:
            label_lines, taxonomy = generate_labels(num_labels or NUM_LABELS, seed)
            labels_name = f"always_crop_synth_{size}.labels.txt"
            (tmp / labels_name).write_text("\n".join(label_lines) + "\n", encoding="utf-8")
            (tmp / REAL_TAXONOMY_NAME).write_text("\n".join(taxonomy) + "\n", encoding="utf-8")
            label_source = f"generated ({len(label_lines)} labels, seed {seed})"
        geofence = make_geofence(label_lines, seed)
        (tmp / GEOFENCE_NAME).write_text(json.dumps(geofence, indent=1, sort_keys=True),
                                         encoding="utf-8")

        det_name = f"md_v5a_synth_{size}.pt"
        say(f"building the {size} detector ({len(images)} calibration images available)")
        det_info = build_synthetic_megadetector(tmp / det_name, size, images, seed=seed)
        say(f"building the {size} classifier ({len(label_lines)} labels; .keras, .h5, .pt)")
        cls_info = build_synthetic_classifier(tmp, size, len(label_lines), images, seed=seed)
        files = cls_info["files"]
        info = {
            "version": f"4.0.2a-synthetic-{size}",
            "type": "always_crop",
            "classifier": files["pt"],
            "classifier_labels": labels_name,
            "detector": det_name,
            "taxonomy": REAL_TAXONOMY_NAME,
            "geofence": GEOFENCE_NAME,
            KERAS_TWIN_KEY: {k: files[k] for k in ("keras", "h5") if k in files},
            SYNTH_KEY: {"size": size, "seed": seed, "labels": label_source,
                        "calibration_images": len(images), "report": "synth_report.json"},
        }
        report = {"detector": jsonable(det_info), "classifier": jsonable(
            {k: v for k, v in cls_info.items() if k != "paths"}),
                  "labels": label_source, "geofence_rules": len(geofence)}
        (tmp / "synth_report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
        (tmp / "info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        if dst.exists():
            shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
        from converters.pack import _publishable

        _publishable(tmp)
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


