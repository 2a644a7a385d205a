"""Ensemble parity with speciesnet 5.0.6: random detector/classifier results, same answers.

Three uses:

1. `python tests/reference/ensemble_parity.py [--cases N] [--seed S] [--whole-image]`
   (edgenet's venv): writes random detector JSON and classifier JSON files in speciesnet
   5.0.6's `--detector_only` / `--classifier_only` formats over the real labels
   (`../shared/data/speciesnet`), an instances JSON (countries, US states, lat/lon) and a
   synthetic speciesnet model folder (info.json, taxonomy, random geofence), runs
   `python -m speciesnet.scripts.run_model --ensemble_only ...` in the reference venv and
   compares every prediction with edgenet's `Ensemble` on the same files. Prints
   "N images, M mismatches" and exits 1 on any mismatch. `--edgenet-cli` runs
   `edgenet run --ensemble-only` instead of the in-process `Ensemble`.
2. `REFPYTHON tests/reference/ensemble_parity.py --driver` (reference venv): a long-lived
   JSON-lines server that runs speciesnet's own `SpeciesNetEnsemble.combine` on batches of
   in-memory cases; the hypothesis tests in tests/test_ensemble_reference.py talk to it.
   This mode imports only the standard library and speciesnet.
3. Imported by tests for `ScenarioGenerator`, which produces the random cases.

Reference python: $EDGENET_REFERENCE_PYTHON, default /work/refvenv/bin/python.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
SPECIESNET_DATA = Path(
    os.environ.get("EDGENET_SHARED_DIR", REPO_ROOT.parent / "shared")
) / "data" / "speciesnet"
TAXONOMY_FILE = SPECIESNET_DATA / "taxonomy_release.txt"
LABELS_FILE = SPECIESNET_DATA / "always_crop_99710272_22x8_v12_epoch_00148.labels.txt"

BLANK = "f1856211-cfb7-4a5b-9158-c0f72fd09ee6;;;;;;blank"
ANIMAL = "1f689929-883d-4dae-958c-3d57ab5b6c16;;;;;;animal"
HUMAN = "990ae9dd-7a59-4344-afcb-1b7b21368000;mammalia;primates;hominidae;homo;sapiens;human"
VEHICLE = "e2895ed5-780b-48f6-8a11-9e27cb594511;;;;;;vehicle"
SPECIALS = (BLANK, HUMAN, VEHICLE, ANIMAL)
CATEGORY_LABELS = {"1": "animal", "2": "human", "3": "vehicle"}
WHOLE_IMAGE_DET = {"category": "0", "label": "whole_image_classification", "conf": 1.0,
                   "bbox": [0.0, 0.0, 1.0, 1.0]}

# Values on and next to every threshold of the ensemble rules.
_EPS = 1e-7
_THRESHOLDS = (0.2, 0.4, 0.5, 0.65, 0.7, 0.8, 0.99)
NEAR_THRESHOLDS = tuple(sorted({round(t + d, 9) for t in _THRESHOLDS for d in (-_EPS, 0, _EPS)}
                               | {0.0, 0.05, 0.1, 1.0}))
COUNTRIES = ("USA", "CAN", "MEX", "BRA", "KEN", "TZA", "AUS", "GBR", "IND", "CHN", "FRA")
US_STATES = ("CA", "NY", "TX", "AK", "HI", "ME", "CO", "FL", "WA", "DC", "NJ")
# (lat, lon) points inside US states/territories and elsewhere, for admin1 lookup.
PLACES = ((37.0, -119.0), (46.01, -69.19), (38.63, -103.43), (38.92, -77.01),
          (65.0, -150.0), (19.0, -155.0), (18.22, -66.67), (13.42, 144.71),
          (-1.29, 36.82), (51.5, -0.12), (45.0, 0.0), (40.7128, -74.006))


def reference_python() -> Path | None:
    """The speciesnet 5.0.6 venv's python, or None."""
    env = os.environ.get("EDGENET_REFERENCE_PYTHON")
    candidate = Path(env) if env else Path("/work/refvenv/bin/python")
    return candidate if candidate.exists() else None


def read_lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as fp:
        return [line.strip() for line in fp.readlines()]


# --------------------------------------------------------------------------------------
# Random cases
# --------------------------------------------------------------------------------------


class ScenarioGenerator:
    """Random but rule-hunting ensemble inputs over a real labels list.

    Each scenario picks a small pool of labels that most classifications come from, and a
    random geofence over that pool, so that geofence rules, roll-ups and every threshold
    of the combiner get exercised.
    """

    def __init__(self, labels: list[str], rng: random.Random):
        self.rng = rng
        self.labels = [label for label in labels if len(label.split(";")) == 7]
        self.groups: dict[str, list[str]] = {}
        for label in self.labels:
            parts = label.split(";")[1:6]
            for depth in (1, 2, 3, 4):
                if all(parts[:depth]):
                    self.groups.setdefault(";".join(parts[:depth]), []).append(label)
        self.pool: list[str] = []

    # ---- scenario-level ----
    def new_pool(self, size: int = 40) -> list[str]:
        """Pick a focus pool: random labels plus relatives of some of them."""
        rng = self.rng
        pool = rng.sample(self.labels, min(size // 2, len(self.labels)))
        for label in list(pool[: size // 4]):
            pool.extend(self.relatives(label, rng.randint(1, 4)))
        self.pool = list(dict.fromkeys(pool))
        return self.pool

    def relatives(self, label: str, n: int) -> list[str]:
        parts = label.split(";")[1:6]
        depth = self.rng.choice((4, 3, 3, 2, 1))
        group = self.groups.get(";".join(parts[:depth])) or [label]
        return [self.rng.choice(group) for _ in range(n)]

    # ---- numbers ----
    def score(self) -> float:
        rng = self.rng
        if rng.random() < 0.5:
            return rng.choice(NEAR_THRESHOLDS)
        return round(rng.random(), rng.choice((2, 4, 8, 17)))

    def classifications(self) -> dict:
        """A raw classifications dict: 1..10 unique classes, descending scores."""
        rng = self.rng
        k = rng.choice((1, 2, 3, 5, 5, 5, 5, 6, 10))
        r = rng.random()
        if r < 0.2:
            top = rng.choice(SPECIALS[:3] if rng.random() < 0.9 else SPECIALS)
        elif r < 0.85 and self.pool:
            top = rng.choice(self.pool)
        else:
            top = rng.choice(self.labels)
        classes = [top]
        tries = 0
        while len(classes) < k and tries < 50:
            tries += 1
            r = rng.random()
            if r < 0.5 and top.split(";")[1]:
                cand = self.relatives(top, 1)[0]
            elif r < 0.65:
                cand = rng.choice(SPECIALS)
            elif r < 0.85 and self.pool:
                cand = rng.choice(self.pool)
            else:
                cand = rng.choice(self.labels)
            if cand not in classes:
                classes.append(cand)
        top_score = self.score()
        scores = [top_score]
        remaining = max(0.0, 1.0 - top_score)
        for _ in classes[1:]:
            s = min(scores[-1], remaining * rng.random() * (1.0 if rng.random() < 0.5 else 0.3))
            if rng.random() < 0.05:
                s = scores[-1]  # ties
            s = round(s, rng.choice((4, 17)))
            scores.append(s)
            remaining = max(0.0, remaining - s)
        return {"classes": classes, "scores": scores}

    def detection(self) -> dict:
        rng = self.rng
        category = rng.choice(("1", "1", "1", "2", "3"))
        x, y = round(rng.random() * 0.8, 4), round(rng.random() * 0.8, 4)
        w, h = round(rng.random() * (1 - x), 4), round(rng.random() * (1 - y), 4)
        return {"category": category, "label": CATEGORY_LABELS[category],
                "conf": self.score(), "bbox": [x, y, w, h]}

    def geolocation(self) -> dict[str, Any]:
        """Instance location fields (country/admin1/lat/lon), sometimes odd."""
        rng = self.rng
        out: dict[str, Any] = {}
        r = rng.random()
        if r < 0.15:
            return out
        country = rng.choice(COUNTRIES + ("USA", "USA", "USA"))
        if rng.random() < 0.004:
            country = rng.choice(("US", "USAA", ""))  # invalid / empty codes
        out["country"] = country
        r = rng.random()
        if r < 0.4:
            out["admin1_region"] = rng.choice(US_STATES)
            if rng.random() < 0.004:
                out["admin1_region"] = "CAL"
        elif r < 0.7:
            out["latitude"], out["longitude"] = rng.choice(PLACES)
        return out

    # ---- images ----
    def image(self, filepath: str, whole_image: bool) -> dict:
        """Detector result, classifier result (None: absent) and location for one image."""
        rng = self.rng
        r = rng.random()
        if r < 0.05:
            det_result: dict | None = {"filepath": filepath, "failures": ["DETECTOR"]}
        elif r < 0.07:
            det_result = None
        else:
            dets = [self.detection() for _ in range(rng.choice((0, 1, 1, 1, 2, 3, 5)))]
            dets.sort(key=lambda d: d["conf"], reverse=True)
            det_result = {"filepath": filepath, "detections": dets}
        dets = det_result.get("detections") if det_result else None

        r = rng.random()
        if r < 0.05:
            cls_result: dict | None = {"filepath": filepath, "failures": ["CLASSIFIER"]}
        elif r < 0.07:
            cls_result = None
        elif whole_image:
            cls_result = {"filepath": filepath, "detections": [
                dict(WHOLE_IMAGE_DET, raw_classifications=self.classifications())]}
        elif dets is None:
            cls_result = {"filepath": filepath, "failures": ["CLASSIFIER"]}
        else:
            classified = []
            for det in dets:
                det = dict(det, bbox=list(det["bbox"]))
                if det["conf"] >= 0.1 and rng.random() < 0.9:
                    det["raw_classifications"] = self.classifications()
                classified.append(det)
            r = rng.random()
            if r < 0.003 and classified:  # mismatching detections: the call must fail
                classified[0]["bbox"][0] = round(classified[0]["bbox"][0] + 0.01, 4)
            elif r < 0.005 and classified:
                classified.pop()
            elif r < 0.03 and classified:  # within the 1e-4 tolerance: still matching
                classified[0]["bbox"][1] = classified[0]["bbox"][1] + 5e-5
            cls_result = {"filepath": filepath, "detections": classified}
        return {"filepath": filepath, "detector": det_result, "classifier": cls_result,
                "location": self.geolocation()}

    def batch(self, n_images: int, whole_image: bool, prefix: str = "img") -> list[dict]:
        return [self.image(f"/data/{prefix}_{i:05d}.jpg", whole_image) for i in range(n_images)]


def geolocation_results(images: list[dict], drop_rate: float = 0.03,
                        rng: random.Random | None = None) -> dict[str, dict]:
    """Geolocation results as speciesnet builds them (admin1 given, not looked up)."""
    rng = rng or random.Random(0)
    out = {}
    for image in images:
        if rng.random() < drop_rate:
            continue  # -> GEOLOCATION failure
        loc = image["location"]
        out[image["filepath"]] = {"country": loc.get("country"),
                                  "admin1_region": loc.get("admin1_region"),
                                  "latitude": loc.get("latitude"),
                                  "longitude": loc.get("longitude")}
    return out


def combine_call(images: list[dict], rng: random.Random) -> dict:
    """Arguments of one `combine` call over generated images."""
    filepaths = [image["filepath"] for image in images]
    partial = {}
    if rng.random() < 0.2 and filepaths:
        fp = rng.choice(filepaths)
        partial[fp] = {"filepath": fp, "model_version": "previous"}
    return {
        "filepaths": filepaths,
        "classifier_results": {i["filepath"]: i["classifier"] for i in images if i["classifier"]},
        "detector_results": {i["filepath"]: i["detector"] for i in images if i["detector"]},
        "geolocation_results": geolocation_results(images, rng=rng),
        "partial_predictions": partial or None,
        "max_classifications_per_detection": rng.choice((2, 2, 1, 5, None)),
    }


# --------------------------------------------------------------------------------------
# Reference driver (runs in the reference venv)
# --------------------------------------------------------------------------------------


def driver_main() -> None:
    """JSON-lines server: {"setup": {...}, "calls": [...]} -> {"results": [...]}."""
    import types

    from speciesnet.ensemble import SpeciesNetEnsemble, _load_taxonomy_from_file
    from speciesnet.ensemble_prediction_combiner import combine_predictions

    taxonomy_cache: dict[str, dict] = {}
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        setup = request["setup"]
        tax_path = setup["taxonomy"]
        if tax_path not in taxonomy_cache:
            taxonomy_cache[tax_path] = _load_taxonomy_from_file(tax_path)
        ens = SpeciesNetEnsemble.__new__(SpeciesNetEnsemble)
        ens.model_info = types.SimpleNamespace(version=setup["model_version"])
        ens.enable_geofence = setup["enable_geofence"]
        ens.taxonomy_map = taxonomy_cache[tax_path]
        ens.geofence_map = setup["geofence"]
        ens.prediction_combiner = combine_predictions
        out = []
        for call in request["calls"]:
            try:
                out.append({"ok": ens.combine(**call)})
            except Exception as exc:  # noqa: BLE001 - reported back to the comparer
                out.append({"error": f"{type(exc).__name__}: {exc}"})
        print(json.dumps({"results": out}), flush=True)


class ReferenceEnsemble:
    """A running `--driver` process in the reference venv (start once, reuse)."""

    def __init__(self, python: Path):
        self.proc = subprocess.Popen(
            [str(python), str(Path(__file__).resolve()), "--driver"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, encoding="utf-8", env=dict(os.environ, PYTHONWARNINGS="ignore"),
        )
        ready = self.proc.stdout.readline()
        if not ready:
            raise RuntimeError("reference driver failed to start")

    def run(self, setup: dict, calls: list[dict]) -> list[dict]:
        """Run `combine` calls in the reference; each result is {"ok": ...} or {"error"}."""
        self.proc.stdin.write(json.dumps({"setup": setup, "calls": calls}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("reference driver died")
        return json.loads(line)["results"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def __enter__(self) -> ReferenceEnsemble:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def edgenet_results(ensemble: Any, calls: list[dict]) -> list[dict]:
    """Run the same calls through edgenet's `Ensemble` (errors as {"error": ...})."""
    from edgenet.errors import InputError

    out = []
    for call in calls:
        call = json.loads(json.dumps(call))  # same values the reference receives
        try:
            out.append({"ok": ensemble.combine(**call)})
        except InputError as exc:
            out.append({"error": f"InputError: {exc}"})
    return out


def compare_results(ours: list[dict], ref: list[dict]) -> list[str]:
    """Differences between two result lists (empty when identical, key order included)."""
    problems = []
    for i, (a, b) in enumerate(zip(ours, ref, strict=True)):
        if ("error" in a) != ("error" in b):
            problems.append(f"call {i}: edgenet {str(a)[:300]} vs reference {str(b)[:300]}")
            continue
        if "ok" in a:
            for pa, pb in zip(a["ok"], b["ok"], strict=True):
                if json.dumps(pa) != json.dumps(pb):
                    problems.append(
                        f"call {i}: {json.dumps(pa)[:600]}\n   vs {json.dumps(pb)[:600]}")
    return problems


# --------------------------------------------------------------------------------------
# End-to-end: files + run_model --ensemble_only
# --------------------------------------------------------------------------------------


def _round_floats(obj: Any, decimals: int = 4) -> Any:
    """speciesnet's `limit_float_precision` (floats rounded when a file is written)."""
    if isinstance(obj, float):
        return round(obj, decimals)
    if isinstance(obj, dict):
        return {k: _round_floats(v, decimals) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_round_floats(v, decimals) for v in obj]
    return obj


def write_json(obj: Any, path: Path) -> None:
    with open(path, "w", encoding="utf-8") as fp:
        json.dump(_round_floats(obj), fp, ensure_ascii=False, indent=1)


def make_inputs(workdir: Path, n_images: int, seed: int, whole_image: bool) -> dict[str, Path]:
    """Write instances, detections, classifications and a model folder into `workdir`."""
    from edgenet.ensemble.geofence import random_geofence

    rng = random.Random(seed)
    gen = ScenarioGenerator(read_lines(LABELS_FILE), rng)
    pool = gen.new_pool(60)
    images = gen.batch(n_images, whole_image, prefix=f"s{seed}")
    geofence = random_geofence(pool, rng, rng.randint(20, 80))

    model = workdir / "model"
    model.mkdir(parents=True, exist_ok=True)
    (model / "taxonomy_release.txt").write_bytes(TAXONOMY_FILE.read_bytes())
    (model / "labels.txt").write_bytes(LABELS_FILE.read_bytes())
    write_json(geofence, model / "geofence_release.json")
    (model / "info.json").write_text(json.dumps({
        "version": "parity-synthetic", "type": "full_image" if whole_image else "always_crop",
        "classifier": "classifier.pt", "classifier_labels": "labels.txt",
        "detector": "detector.pt", "taxonomy": "taxonomy_release.txt",
        "geofence": "geofence_release.json",
    }), encoding="utf-8")
    instances = []
    for image in images:
        loc = dict(image["location"])
        if loc.get("country") not in COUNTRIES:
            loc.pop("country", None)  # the reference's flags refuse bad codes up front
        if "admin1_region" in loc and len(loc["admin1_region"]) != 2:
            loc.pop("admin1_region")
        instances.append({"filepath": image["filepath"], **loc})
    paths = {
        "model": model,
        "instances": workdir / "instances.json",
        "detections": workdir / "detections.json",
        "classifications": workdir / "classifications.json",
    }
    write_json({"instances": instances}, paths["instances"])
    det_preds, cls_preds = [], []
    for image in images:
        det, cls = image["detector"], image["classifier"]
        if det is not None:
            det_preds.append(det)
        if cls is not None:
            if "detections" in cls and not whole_image:
                # A mismatching pair aborts the whole reference run: keep files matching.
                cls = {"filepath": cls["filepath"], "detections": [
                    dict(d, bbox=list(o["bbox"])) for d, o in zip(cls["detections"],
                                                                  det["detections"], strict=False)]
                } if det and "detections" in det and len(cls["detections"]) == len(
                    det["detections"]) else {"filepath": cls["filepath"],
                                             "failures": ["CLASSIFIER"]}
            cls_preds.append(cls)
    info = {"format_version": "20261015"}
    write_json({"info": info, "predictions": det_preds}, paths["detections"])
    write_json({"info": info, "predictions": cls_preds}, paths["classifications"])
    return paths


def run_reference_cli(python: Path, paths: dict[str, Path], out: Path, geofence: bool) -> dict:
    cmd = [str(python), "-m", "speciesnet.scripts.run_model", "--model", str(paths["model"]),
           "--ensemble_only", "--instances_json", str(paths["instances"]),
           "--detections_json", str(paths["detections"]),
           "--classifications_json", str(paths["classifications"]),
           "--predictions_json", str(out), "--bypass_prompts", "--noprogress_bars",
           "--geofence" if geofence else "--nogeofence"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"reference run failed:\n{proc.stderr[-3000:]}")
    with open(out, encoding="utf-8") as fp:
        return json.load(fp)


def run_edgenet_inprocess(paths: dict[str, Path], geofence: bool) -> dict:
    """edgenet's Ensemble on the same files (loading them as speciesnet does)."""
    from edgenet.ensemble import Ensemble, geolocate_instance

    def load(path: Path) -> dict:
        with open(path, encoding="utf-8") as fp:
            preds = json.load(fp)["predictions"]
        return {p["filepath"]: p for p in preds if "failures" not in p}

    with open(paths["instances"], encoding="utf-8") as fp:
        instances = json.load(fp)["instances"]
    info = json.loads((paths["model"] / "info.json").read_text(encoding="utf-8"))
    ens = Ensemble(paths["model"] / info["taxonomy"], paths["model"] / info["geofence"],
                   info["version"], geofence=geofence)
    geo = {inst["filepath"]: geolocate_instance(inst) for inst in instances}
    preds = ens.combine([i["filepath"] for i in instances], load(paths["classifications"]),
                        load(paths["detections"]), geo)
    return {"info": {"format_version": "20261015"}, "predictions": _round_floats(preds)}


def edgenet_pack_like(paths: dict[str, Path], pack: Path, dst: Path) -> Path:
    """Copy an edgenet pack and give it the generated taxonomy, geofence and version.

    `edgenet run` validates the whole pack (ONNX files included) even for
    --ensemble-only, so the speciesnet model folder made here cannot be used directly.
    """
    import shutil

    shutil.copytree(pack, dst)
    info = json.loads((dst / "info.json").read_text(encoding="utf-8"))
    src_info = json.loads((paths["model"] / "info.json").read_text(encoding="utf-8"))
    for key in ("taxonomy", "geofence"):
        shutil.copyfile(paths["model"] / src_info[key], dst / info[key])
        sums = info.get("edgenet", {}).get("sha256", {})
        sums.pop(info[key], None)
    info["version"] = src_info["version"]
    info["type"] = src_info["type"]
    (dst / "info.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
    return dst


def run_edgenet_cli(paths: dict[str, Path], out: Path, geofence: bool,
                    pack: Path | None = None) -> dict:
    model = edgenet_pack_like(paths, pack, out.parent / "edgenet_pack") if pack else paths["model"]
    cmd = [sys.executable, "-m", "edgenet", "run", "--model", str(model),
           "--ensemble-only", "--instances-json", str(paths["instances"]),
           "--detections-json", str(paths["detections"]),
           "--classifications-json", str(paths["classifications"]),
           "--predictions-json", str(out), "--quiet",
           "--geofence" if geofence else "--no-geofence"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"edgenet run failed:\n{proc.stderr[-3000:]}")
    with open(out, encoding="utf-8") as fp:
        return json.load(fp)


def compare_prediction_files(ours: dict, ref: dict) -> list[str]:
    problems = []
    ref_by_fp = {p["filepath"]: p for p in ref["predictions"]}
    if len(ours["predictions"]) != len(ref["predictions"]):
        problems.append(f"{len(ours['predictions'])} vs {len(ref['predictions'])} predictions")
    for pred in ours["predictions"]:
        other = ref_by_fp.get(pred["filepath"])
        if other is None:
            problems.append(f"{pred['filepath']}: missing from reference")
        elif json.dumps(pred, sort_keys=False) != json.dumps(other, sort_keys=False):
            problems.append(f"{pred['filepath']}:\n  edgenet   {json.dumps(pred)[:800]}\n"
                            f"  reference {json.dumps(other)[:800]}")
    return problems


def processed_summary(preds: dict) -> dict[str, int]:
    """Count processed-classification sources (shows which rules were exercised)."""
    counts: dict[str, int] = {}
    for pred in preds["predictions"]:
        for det in pred.get("detections", []):
            pc = det.get("processed_classification")
            if pc:
                counts[pc["source"]] = counts.get(pc["source"], 0) + 1
    return dict(sorted(counts.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--driver", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cases", type=int, default=500, help="images per run")
    parser.add_argument("--runs", type=int, default=2, help="runs (new geofence each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--whole-image", action="store_true", help="full_image model type")
    parser.add_argument("--no-geofence", action="store_true")
    parser.add_argument("--edgenet-cli", action="store_true",
                        help="compare `edgenet run --ensemble-only` instead of Ensemble")
    parser.add_argument("--edgenet-pack", type=Path,
                        help="with --edgenet-cli: an edgenet pack to run (its taxonomy, "
                        "geofence and version are replaced by the generated ones)")
    parser.add_argument("--keep", type=Path, help="keep the generated files here")
    args = parser.parse_args(argv)
    if args.driver:
        driver_main()
        return 0
    python = reference_python()
    if python is None or not TAXONOMY_FILE.is_file():
        print("SKIP: reference python or shared SpeciesNet data absent")
        return 0
    total = mismatches = 0
    sources: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            workdir = (args.keep or Path(tmp)) / f"run{run}"
            workdir.mkdir(parents=True, exist_ok=True)
            paths = make_inputs(workdir, args.cases, args.seed + run, args.whole_image)
            ref = run_reference_cli(python, paths, workdir / "ref.json", not args.no_geofence)
            if args.edgenet_cli:
                ours = run_edgenet_cli(paths, workdir / "edgenet.json", not args.no_geofence,
                                       args.edgenet_pack)
            else:
                ours = run_edgenet_inprocess(paths, not args.no_geofence)
            problems = compare_prediction_files(ours, ref)
            for problem in problems[:5]:
                print(problem)
            total += len(ref["predictions"])
            mismatches += len(problems)
            for k, v in processed_summary(ref).items():
                sources[k] = sources.get(k, 0) + v
    print(f"sources exercised: {json.dumps(sources)}")
    print(f"{total} images, {mismatches} mismatches")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
