"""Geofence tooling: fixes CSV, rule application/propagation/trimming, random geofences,
and the taxonomy/ scripts (build_geofence.py, check_labels.py) on the real data files.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from edgenet.ensemble.geofence import (
    apply_fixes,
    build_geofence,
    parent_taxa,
    propagate_rules,
    random_geofence,
    read_fixes_csv,
    trim_to_labels,
)
from edgenet.ensemble.taxonomy import check_labels_against_taxonomy, read_label_lines, taxa_of
from edgenet.errors import InputError

REPO = Path(__file__).resolve().parents[1]
LION = "mammalia;carnivora;felidae;panthera;leo"
TIGER = "mammalia;carnivora;felidae;panthera;tigris"
LABELS = [f"u1;{LION};lion", f"u2;{TIGER};tiger", "u3;aves;strigiformes;;;;owls"]
LABELS_FILE = "always_crop_99710272_22x8_v12_epoch_00148.labels.txt"


def rows(*items: tuple[str, str, str, str]) -> list[tuple[int, str, str, str, str]]:
    return [(i + 2, *item) for i, item in enumerate(items)]


def test_parent_taxa():
    assert parent_taxa(LION) == ["mammalia;carnivora;felidae;panthera;",
                                 "mammalia;carnivora;felidae;;", "mammalia;carnivora;;;",
                                 "mammalia;;;;"]
    assert parent_taxa("aves;strigiformes;;;") == ["aves;;;;"]


def test_apply_fixes_semantics():
    base = {LION: {"allow": {"KEN": []}}}
    out = apply_fixes(base, rows((LION, "allow", "USA", "NY"), (LION, "allow", "USA", "CA"),
                                 (TIGER, "allow", "IND", ""), (TIGER, "allow", "IND", "XX"),
                                 (TIGER, "block", "USA", "TX"), (TIGER, "block", "USA", ""),
                                 (TIGER, "block", "USA", "FL")))
    assert out[LION] == {"allow": {"KEN": [], "USA": ["CA", "NY"]}}  # sorted union
    assert out[TIGER]["allow"] == {"IND": []}  # region row after country-wide: no-op
    assert out[TIGER]["block"] == {"USA": []}  # country-wide replaces the region list
    assert base == {LION: {"allow": {"KEN": []}}}  # input untouched


def test_propagate_allow_up_and_block_down():
    geofence = {LION: {"allow": {"KEN": [], "USA": ["CA"]}},
                "mammalia;carnivora;felidae;;": {"block": {"GBR": [], "USA": ["NY"]}}}
    out = propagate_rules(geofence, LABELS)
    for parent in parent_taxa(LION)[1:]:
        if parent != "mammalia;carnivora;felidae;;":
            assert out[parent]["allow"] == {"KEN": [], "USA": []}  # regions widen to country
    assert out[TIGER]["block"] == {"GBR": [], "USA": ["NY"]}
    assert out["mammalia;carnivora;felidae;panthera;"]["block"] == {"GBR": [], "USA": ["NY"]}
    assert out[LION]["block"] == {"GBR": [], "USA": ["NY"]}
    assert "block" not in out.get("aves;strigiformes;;;", {})


def test_trim_to_labels():
    geofence = {LION: {}, "mammalia;carnivora;;;": {}, "reptilia;;;;": {}}
    assert set(trim_to_labels(geofence, LABELS)) == {LION, "mammalia;carnivora;;;"}


def test_read_fixes_csv(tmp_path: Path):
    good = tmp_path / "fixes.csv"
    good.write_text("species,rule,country_code,admin1_region_code\n# comment\n\n"
                    "Mammalia;Carnivora;Felidae;Panthera;Leo,Block,USA,\n", encoding="utf-8")
    assert read_fixes_csv(good) == [(4, LION, "block", "USA", "")]
    for text, match in [("a,b\n", "header"),
                        ("species,rule,country_code,admin1_region_code\nx;y,allow,USA,\n",
                         "5 tokens"),
                        ("species,rule,country_code,admin1_region_code\n"
                         f"{LION},deny,USA,\n", "allow or block"),
                        ("species,rule,country_code,admin1_region_code\n"
                         f"{LION},allow,US,\n", "country"),
                        ("species,rule,country_code,admin1_region_code\n"
                         f"{LION},allow,USA\n", "columns")]:
        bad = tmp_path / "bad.csv"
        bad.write_text(text, encoding="utf-8")
        with pytest.raises(InputError, match=match):
            read_fixes_csv(bad)


def _valid_geofence(geofence: dict) -> None:
    for key, rules in geofence.items():
        tokens = key.split(";")
        assert len(tokens) == 5
        # no rank given below an empty rank
        assert "".join(tokens) == "" or all(tokens[: max(i for i, t in enumerate(tokens)
                                                         if t) + 1])
        assert set(rules) <= {"allow", "block"}
        for countries in rules.values():
            for country, regions in countries.items():
                assert isinstance(country, str) and len(country) == 3
                assert isinstance(regions, list)
                assert all(isinstance(r, str) and len(r) == 2 for r in regions)


def test_random_geofence_format_and_coverage():
    labels = [f"u{i};{t};x" for i, t in enumerate(
        [LION, TIGER, "aves;strigiformes;strigidae;bubo;bubo", "reptilia;squamata;;;"])]
    closure = {";;;;"}
    for label in labels:
        closure.add(taxa_of(label))
        closure.update(parent_taxa(taxa_of(label)))
    seen_types, seen_states, seen_depths = set(), set(), set()
    for seed in range(200):
        gf = random_geofence(labels, random.Random(seed), 6)
        assert gf == random_geofence(labels, random.Random(seed), 6)  # deterministic
        _valid_geofence(gf)
        assert set(gf) <= closure
        for key, rules in gf.items():
            seen_types.update(rules)
            seen_depths.add(sum(bool(t) for t in key.split(";")))
            for countries in rules.values():
                seen_states.update(countries.get("USA", []))
    assert seen_types == {"allow", "block"}
    assert seen_depths == {0, 1, 2, 3, 4, 5}
    assert len(seen_states) >= 5
    assert random_geofence([], random.Random(0), 5) == {}


# ---------------------------------------------------------------- real data + scripts


def test_build_geofence_script_on_real_fixes(speciesnet_data: Path, tmp_path: Path):
    out = tmp_path / "geofence.json"
    args = [sys.executable, str(REPO / "taxonomy" / "build_geofence.py"),
            "--fixes", str(speciesnet_data / "geofence_fixes.csv"),
            "--taxonomy", str(speciesnet_data / "taxonomy_release.txt"),
            "--labels", str(speciesnet_data / LABELS_FILE), "--output", str(out)]
    proc = subprocess.run(args, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    # the known mismatch: the dingo rows name order "chordata"
    assert "mammalia;chordata;canidae;canis;lupus dingo" in proc.stderr
    assert "did you mean 'mammalia;carnivora;canidae;canis;lupus dingo'" in proc.stderr
    geofence = json.loads(out.read_text(encoding="utf-8"))
    _valid_geofence(geofence)
    assert geofence["mammalia;carnivora;ursidae;ursus;americanus"] == {"allow": {"USA": ["NJ"]}}
    assert geofence["mammalia;cetartiodactyla;cervidae;capreolus;capreolus"] == {
        "block": {"USA": []}}
    assert geofence["mammalia;;;;"] == {"allow": {"USA": []}}
    strict = subprocess.run(args + ["--strict"], capture_output=True, text=True)
    assert strict.returncode == 1
    renamed = subprocess.run(
        args + ["--strict", "--rename", "mammalia;chordata;canidae;canis;lupus dingo="
                "mammalia;carnivora;canidae;canis;lupus dingo"], capture_output=True, text=True)
    assert renamed.returncode == 0, renamed.stderr
    dingo = json.loads(out.read_text(encoding="utf-8"))[
        "mammalia;carnivora;canidae;canis;lupus dingo"]
    assert len(dingo["block"]) == 244 and "AUS" not in dingo["block"]


def test_check_labels_on_real_files(speciesnet_data: Path):
    labels = read_label_lines(speciesnet_data / LABELS_FILE)
    taxonomy = read_label_lines(speciesnet_data / "taxonomy_release.txt")
    report = check_labels_against_taxonomy(labels, taxonomy)
    # SOURCE.md: 15 label lines differ from the taxonomy: 3 by name, 12 by UUID
    assert len(report["same_uuid_different_line"]) == 3
    assert len(report["uuid_missing_same_taxa"]) == 12
    assert report["taxa_missing_from_taxonomy"] == []
    assert report["malformed_labels"] == []
    assert "1f689929-883d-4dae-958c-3d57ab5b6c16;;;;;;animal" in report["special_labels_missing"]
    proc = subprocess.run([sys.executable, str(REPO / "taxonomy" / "check_labels.py"),
                           str(speciesnet_data / LABELS_FILE),
                           str(speciesnet_data / "taxonomy_release.txt")],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "2498 labels, 3493 taxonomy lines" in proc.stdout


def test_check_labels_finds_problems():
    taxonomy = ["t1;aves;strigiformes;strigidae;bubo;bubo;eagle-owl",
                "t2;aves;strigiformes;strigidae;;;owls"]
    labels = ["t1;aves;strigiformes;strigidae;bubo;bubo;eagle owl", "bad;line",
              "t9;aves;passeriformes;corvidae;corvus;corax;raven"]
    report = check_labels_against_taxonomy(labels, taxonomy)
    assert report["malformed_labels"] == ["bad;line"]
    assert report["same_uuid_different_line"] == [(labels[0], taxonomy[0])]
    assert report["taxa_missing_from_taxonomy"] == [labels[2]]
    assert "aves;strigiformes;strigidae;bubo;" in report["parent_taxa_missing_from_taxonomy"]


# ---------------------------------------------------------------- reference parity


def _random_fixes(rng: random.Random, taxa: list[str]) -> list[tuple[str, str, str, str]]:
    """Random fixes rows that pass speciesnet's validate_fixes_file."""
    out: list[tuple[str, str, str, str]] = []
    for _ in range(rng.randint(1, 30)):
        taxon = rng.choice(taxa)
        row = (taxon, rng.choice(("allow", "block")), rng.choice(("USA", "KEN", "GBR")),
               rng.choice(("", "", "CA", "NY", "TX")))
        if row[2] != "USA":
            row = (*row[:3], "")
        if row not in out:
            out.append(row)
    blocks = [r for r in out if r[1] == "block"]

    def covered(allow: tuple[str, str, str, str]) -> bool:
        return any(b[2] == allow[2] and (b[3] in ("", allow[3]))
                   and (allow[0] == b[0] or allow[0].startswith(b[0].rstrip(";") + ";"))
                   for b in blocks)

    return [r for r in out if r[1] == "block" or not covered(r)]


@pytest.mark.reference
def test_build_geofence_matches_reference(ref_python, speciesnet_data: Path, tmp_path: Path):
    taxonomy_lines = read_label_lines(speciesnet_data / "taxonomy_release.txt")
    labels = read_label_lines(speciesnet_data / LABELS_FILE)
    label_taxa = sorted({taxa_of(x) for x in labels if taxa_of(x).replace(";", "")}
                        & {taxa_of(x) for x in taxonomy_lines})
    rng = random.Random(5)
    cases = []
    for i in range(12):
        pool = rng.sample(label_taxa, 25)
        pool += [p for t in pool[:5] for p in parent_taxa(t)]
        species = [t for t in pool if t.split(";")[4]]
        base = {t: {"allow": {c: [] for c in rng.sample(["USA", "KEN", "BRA"], 2)}}
                for t in rng.sample(species, min(4, len(species)))}
        fixes = _random_fixes(rng, pool)
        csv_path = tmp_path / f"fixes{i}.csv"
        csv_path.write_text("species,rule,country_code,admin1_region_code\n" + "".join(
            ",".join(r) + "\n" for r in fixes), encoding="utf-8")
        cases.append({"base": base, "fixes": str(csv_path)})
    script = (
        "import json, sys, contextlib, io\n"
        "import speciesnet.scripts.build_geofence_release as b\n"
        "args = json.load(sys.stdin)\n"
        "out = []\n"
        "for case in args['cases']:\n"
        "    try:\n"
        "        with contextlib.redirect_stdout(io.StringIO()):\n"
        "            g = b.fix_geofence_base(case['base'], case['fixes'], args['taxonomy'])\n"
        "            g = b.propagate_rules(g, args['labels'])\n"
        "            g = b.trim_to_supported_labels(g, args['labels'])\n"
        "        out.append({'ok': g})\n"
        "    except Exception as exc:\n"
        "        out.append({'error': repr(exc)})\n"
        "print(json.dumps(out))\n"
    )
    request = {"cases": cases, "taxonomy": str(speciesnet_data / "taxonomy_release.txt"),
               "labels": str(speciesnet_data / LABELS_FILE)}
    proc = subprocess.run([str(ref_python), "-c", script], input=json.dumps(request),
                          capture_output=True, text=True, check=True)
    ref = json.loads(proc.stdout.strip().splitlines()[-1])
    agreed = 0
    for case, expected in zip(cases, ref, strict=True):
        try:
            ours = {"ok": build_geofence(read_fixes_csv(case["fixes"]), labels, case["base"])}
        except (KeyError, InputError) as exc:
            ours = {"error": repr(exc)}
        assert ("ok" in ours) == ("ok" in expected), (ours, expected)
        if "ok" in ours:
            assert json.dumps(ours["ok"], sort_keys=True) == json.dumps(expected["ok"],
                                                                        sort_keys=True)
            agreed += 1
    assert agreed >= 6
