"""Ensemble parity with speciesnet 5.0.6, run side by side (needs the reference venv).

Hypothesis drives random scenarios over the REAL labels and taxonomy with random allow /
block geofence rules; each example sends a batch of `combine` calls to one long-lived
reference process (tests/reference/ensemble_parity.py --driver) and compares every
per-image dict, key order included. Scale with EDGENET_PARITY_EXAMPLES (default 25
examples of about 100 images each).
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgenet.ensemble import Ensemble, random_geofence
from edgenet.ensemble.geolocation import find_admin1_region

pytestmark = pytest.mark.reference

_PARITY = Path(__file__).resolve().parent / "reference" / "ensemble_parity.py"
_spec = importlib.util.spec_from_file_location("ensemble_parity", _PARITY)
parity = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("ensemble_parity", parity)
_spec.loader.exec_module(parity)

EXAMPLES = int(os.environ.get("EDGENET_PARITY_EXAMPLES", "25"))


@pytest.fixture(scope="module")
def real_labels(speciesnet_data: Path) -> list[str]:
    return parity.read_lines(speciesnet_data / parity.LABELS_FILE.name)


@pytest.fixture(scope="module")
def driver(ref_python: Path, speciesnet_data: Path):
    with parity.ReferenceEnsemble(ref_python) as proc:
        yield proc


@pytest.fixture(scope="module")
def edgenet_ensemble(speciesnet_data: Path, tmp_path_factory) -> Ensemble:
    empty = tmp_path_factory.mktemp("geofence") / "geofence.json"
    empty.write_text("{}", encoding="utf-8")
    return Ensemble(speciesnet_data / "taxonomy_release.txt", empty, "parity")


@settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(
    seed=st.integers(0, 2**32 - 1),
    whole_image=st.booleans(),
    enable_geofence=st.sampled_from([True, True, True, False]),
    n_rules=st.integers(0, 120),
    pool_size=st.integers(4, 80),
)
def test_combine_matches_reference(driver, edgenet_ensemble, real_labels, speciesnet_data,
                                   seed, whole_image, enable_geofence, n_rules, pool_size):
    # A seeded stdlib generator builds the (large) scenario: hypothesis' own random
    # source records every draw and is far too slow for thousands of values.
    rng = random.Random(seed)
    gen = parity.ScenarioGenerator(real_labels, rng)
    pool = gen.new_pool(pool_size)
    geofence = random_geofence(pool, rng, n_rules)
    calls = [parity.combine_call(gen.batch(25, whole_image, prefix=f"c{i}"), rng)
             for i in range(4)]
    setup = {"taxonomy": str(speciesnet_data / "taxonomy_release.txt"), "geofence": geofence,
             "enable_geofence": enable_geofence, "model_version": "parity"}
    ref = driver.run(setup, calls)
    ens = Ensemble.from_maps(edgenet_ensemble.taxonomy_map, json.loads(json.dumps(geofence)),
                             "parity", geofence=enable_geofence)
    ours = parity.edgenet_results(ens, calls)
    assert parity.compare_results(ours, ref) == []


def test_cli_ensemble_only_matches_reference(ref_python, speciesnet_data):
    """run_model --ensemble_only on generated files equals edgenet's Ensemble on them."""
    code = parity.main(["--cases", "150", "--runs", "1", "--seed", "7"])
    assert code == 0


def test_find_admin1_region_matches_reference(ref_python):
    """Random points (US-heavy, integer-grid, territories) through both geocoders."""
    rng = random.Random(1234)
    points = []
    for _ in range(600):
        r = rng.random()
        if r < 0.5:
            points.append((rng.uniform(24, 50), rng.uniform(-125, -66)))
        elif r < 0.7:
            points.append((float(rng.randint(-90, 90)), float(rng.randint(-180, 180))))
        elif r < 0.85:
            c = rng.choice([(-14.3, -170.7), (13.4, 144.8), (15.2, 145.7), (18.2, -66.5),
                            (18.3, -64.9), (19.3, 166.6), (61.0, -150.0), (20.0, -156.0)])
            points.append((c[0] + rng.uniform(-1.5, 1.5), c[1] + rng.uniform(-1.5, 1.5)))
        else:
            points.append((rng.uniform(-90, 90), rng.uniform(-180, 180)))
    cases = [("USA", None, la, lo) for la, lo in points]
    cases += [("PRI", None, 18.2, -66.5), ("USA", "CA", 46.0, -69.0), (None, "AK", 1.0, 1.0),
              ("USA", None, "38.92", "-77.01"), ("AUS", None, -23.0, 133.0)]
    script = (
        "import json,sys\n"
        "from speciesnet.geolocation import find_admin1_region as f\n"
        "print(json.dumps([f(*c) for c in json.load(sys.stdin)]))\n"
    )
    proc = subprocess.run([str(ref_python), "-c", script], input=json.dumps(cases),
                          capture_output=True, text=True, check=True,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))
    ref = json.loads(proc.stdout.strip().splitlines()[-1])
    ours = [find_admin1_region(*c) for c in cases]
    mismatches = [(c, a, b) for c, a, b in zip(cases, ours, ref, strict=False) if a != b]
    assert mismatches == []
    assert sum(r is not None for r in ref) > 200  # the sample really hits states
