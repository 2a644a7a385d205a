"""Geofencing and taxonomic roll-up, with the decisions of speciesnet 5.0.6.

A geofence file maps 5-token taxa strings (`class;order;family;genus;species`, empty
trailing ranks for higher taxa) to `{"allow": {COUNTRY: [ADMIN1...]}, "block": {...}}`.
Semantics (speciesnet's `should_geofence_animal_classification`):

- no rule for the taxon, geofencing disabled, or no country: never geofenced;
- an "allow" map that does not list the country geofences it; one that lists the country
  with regions geofences any other given region;
- a "block" entry for the country with no regions geofences the whole country; with
  regions, only those regions.

This module also holds the tooling that builds a geofence from a fixes CSV (the part of
speciesnet's `scripts/build_geofence_release.py` that edgenet needs) and a random geofence
generator for tests and synthetic packs.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgenet.constants import Classification
from edgenet.ensemble.taxonomy import LEVELS, Taxonomy, five_token_closure, taxa_of
from edgenet.errors import InputError

__all__ = [
    "Geofence",
    "apply_fixes",
    "build_geofence",
    "load_geofence_map",
    "parent_taxa",
    "propagate_rules",
    "random_geofence",
    "read_fixes_csv",
    "trim_to_labels",
]

_ROLLUP_LEVELS = tuple(LEVELS.index(level) for level in ("genus", "family", "order", "class",
                                                         "kingdom"))
_GEOFENCE_ROLLUP_LEVELS = tuple(LEVELS.index(level) for level in ("family", "order", "class",
                                                                  "kingdom"))
_UNKNOWN = Classification.UNKNOWN.value

Prediction = tuple[str, Any, str]


def load_geofence_map(path: str | Path) -> dict:
    """Load a geofence JSON file (speciesnet's `geofence_release.json` format)."""
    try:
        with open(path, encoding="utf-8") as fp:
            data = json.load(fp)
    except OSError as exc:
        raise InputError(f"cannot read geofence file: {exc.strerror}", path=path,
                         fix="check the path in the pack's info.json") from exc
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InputError(f"geofence file is not valid JSON ({exc})", path=path,
                         fix="restore the geofence file from the model pack") from exc
    if not isinstance(data, dict):
        raise InputError("geofence file must hold a JSON object of taxa -> rules", path=path,
                         fix="restore the geofence file from the model pack")
    return data


class Geofence:
    """Geofence rules bound to a taxonomy, answering speciesnet's geofence questions."""

    def __init__(self, geofence_map: dict, taxonomy: Taxonomy, enabled: bool = True):
        self.map = geofence_map
        self.taxonomy = taxonomy
        self.enabled = enabled
        self._memo: dict[tuple, bool] = {}

    def blocks(self, label: str, country: str | None, admin1_region: str | None) -> bool:
        """Whether `label` is geofenced (not allowed) at this location (memoised)."""
        if not self.enabled or not country:
            return False
        key = (label, country, admin1_region)
        try:
            return self._memo[key]
        except KeyError:
            pass
        except TypeError:  # unhashable codes: no memo, same answer/error as below
            return self._blocks(label, country, admin1_region)
        result = self._memo[key] = self._blocks(label, country, admin1_region)
        return result

    def _blocks(self, label: str, country: str, admin1_region: str | None) -> bool:
        # Basic code checks, in the reference's order (they raise before any lookup).
        if len(country) != 3:
            raise InputError(f"Invalid country code {country}",
                             fix="use a three-letter ISO 3166-1 alpha-3 country code")
        if admin1_region and len(admin1_region) != 2:
            raise InputError(f"Invalid region code {admin1_region}",
                             fix="use a two-letter admin1 region code such as CA")
        rules = self.map.get(self.taxonomy.full_class_string(label))
        if rules is None:
            return False
        allow = rules.get("allow")
        if allow:
            if country not in allow:
                return True
            allowed_regions = allow[country]
            if admin1_region and allowed_regions and admin1_region not in allowed_regions:
                return True
        block = rules.get("block")
        if block and country in block:
            blocked_regions = block[country]
            if not blocked_regions:
                return True
            if admin1_region and admin1_region in blocked_regions:
                return True
        return False

    def roll_up(
        self,
        labels: Sequence[str],
        scores: Sequence[Any],
        country: str | None,
        admin1_region: str | None,
        level_indices: Sequence[int],
        threshold: float,
    ) -> Prediction | None:
        """Roll labels up to the first level whose best allowed summed score passes.

        Scores are summed per ancestor in label order; the best ancestor is the first one
        (in order of appearance) with the strictly highest sum that is not geofenced.
        """
        ancestors = [self.taxonomy.info(label)[1] for label in labels]
        for level in level_indices:
            sums: dict[str, Any] = {}
            for label_ancestors, score in zip(ancestors, scores, strict=False):
                rollup_label = label_ancestors[level]
                if rollup_label:
                    sums[rollup_label] = sums.get(rollup_label, 0.0) + score
            best_label = None
            best_score = 0.0
            for rollup_label, rollup_score in sums.items():
                if rollup_score > best_score and not self.blocks(
                    rollup_label, country, admin1_region
                ):
                    best_label = rollup_label
                    best_score = rollup_score
            if best_score > threshold and best_label:
                return best_label, best_score, f"classifier+rollup_to_{LEVELS[level]}"
        return None

    def roll_up_animal(
        self,
        labels: Sequence[str],
        scores: Sequence[Any],
        country: str | None,
        admin1_region: str | None,
    ) -> Prediction | None:
        """Rule #5a: roll up to genus, family, order, class or kingdom above 0.65."""
        return self.roll_up(labels, scores, country, admin1_region, _ROLLUP_LEVELS, 0.65)

    def classify_animal(
        self,
        labels: Sequence[str],
        scores: Sequence[Any],
        country: str | None,
        admin1_region: str | None,
    ) -> Prediction:
        """Rules #4a/#4b: the top label, or its geofence-driven roll-up when it is fenced."""
        if not self.blocks(labels[0], country, admin1_region):
            return labels[0], scores[0], "classifier"
        rollup = self.roll_up(
            labels, scores, country, admin1_region, _GEOFENCE_ROLLUP_LEVELS,
            # The roll-up must reach the top score (the reference's epsilon).
            scores[0] - 1e-10,
        )
        if rollup is None:
            # Only reachable with non-animal labels; keep the top score (as the reference).
            return _UNKNOWN, scores[0], "classifier+geofence+rollup_failed"
        rollup_label, rollup_score, rollup_source = rollup
        return (rollup_label, rollup_score,
                "classifier+geofence+" + rollup_source[len("classifier+"):])


# --------------------------------------------------------------------------------------
# Building geofence files (subset of speciesnet's scripts/build_geofence_release.py).
# --------------------------------------------------------------------------------------

FIXES_HEADER = ["species", "rule", "country_code", "admin1_region_code"]


def parent_taxa(taxon: str) -> list[str]:
    """5-token strings of every parent of a 5-token taxon, nearest first."""
    tokens = taxon.split(";")
    out = []
    for i in range(len(tokens) - 1, 0, -1):
        if tokens[i]:
            tokens[i] = ""
            out.append(";".join(tokens))
    return out


def read_fixes_csv(path: str | Path) -> list[tuple[int, str, str, str, str]]:
    """Rows of a geofence fixes CSV as (line, taxon, rule, country, admin1).

    Blank rows and rows starting with "#" are skipped; the header must be
    `species,rule,country_code,admin1_region_code`. Taxa and rules are lower-cased.
    """
    with open(path, encoding="utf-8", newline="") as fp:
        rows = list(csv.reader(fp))
    data = [(n, row) for n, row in enumerate(rows, start=1)
            if row and any(cell != "" for cell in row) and not row[0].startswith("#")]
    if not data or data[0][1] != FIXES_HEADER:
        raise InputError(f"fixes CSV must start with the header {','.join(FIXES_HEADER)}",
                         path=path, fix="add the header line")
    out = []
    for line, row in data[1:]:
        if len(row) != 4:
            raise InputError(f"line {line}: {len(row)} columns, expected 4", path=path,
                             fix="write taxon,rule,country,admin1 on each line")
        taxon, rule, country, state = row[0].lower(), row[1].lower(), row[2], row[3]
        if len(taxon.split(";")) != 5:
            raise InputError(f"line {line}: taxon {taxon!r} does not have 5 tokens",
                             path=path, fix="use class;order;family;genus;species")
        if rule not in ("allow", "block"):
            raise InputError(f"line {line}: rule {rule!r} must be allow or block", path=path,
                             fix="use allow or block")
        if len(country) != 3 or (state and len(state) != 2):
            raise InputError(f"line {line}: bad country/admin1 code {country!r}/{state!r}",
                             path=path, fix="use a 3-letter country and 2-letter admin1 code")
        out.append((line, taxon, rule, country, state))
    return out


def apply_fixes(geofence: dict, rows: Sequence[tuple[int, str, str, str, str]]) -> dict:
    """Apply fixes rows to a geofence (speciesnet's `fix_geofence_base` semantics).

    The first allow row of a taxon restricts it to the allowed places; a country-wide row
    replaces a region list for that country; a region row is a no-op once the country is
    covered country-wide; region lists are kept sorted.
    """
    out = json.loads(json.dumps(geofence))
    for _, taxon, rule, country, state in rows:
        entry = out.setdefault(taxon, {})
        if rule not in entry:
            entry[rule] = {country: [state] if state else []}
        countries = entry[rule]
        if not state:
            countries[country] = []
            continue
        current = countries.get(country)
        if current is None:
            countries[country] = [state]
        elif current:
            countries[country] = sorted(set(current) | {state})
    return out


def _merge_country_lists(source: dict, target: dict) -> None:
    """Merge regional rules into `target`; a country-wide ([]) entry on either side wins."""
    for country, regions in source.items():
        if country not in target:
            target[country] = list(regions)
        elif not regions or not target[country]:
            target[country] = []
        else:
            for region in regions:
                if region not in target[country]:
                    target[country].append(region)


def propagate_rules(geofence: dict, labels: Sequence[str]) -> dict:
    """Propagate allow rules up and block rules down the taxonomy (as speciesnet).

    Every parent of a ruled taxon gets an allow rule for each country its child is allowed
    in (country-wide); every descendant (among `labels`' taxa and the geofence's own
    keys) of a blocked taxon inherits its block rules.
    """
    new: dict[str, dict] = {}
    for taxon, rule in geofence.items():
        parts = taxon.split(";")
        new[taxon] = rule
        for end in range(1, 5):
            parent = ";".join(parts[:end]) + ";" * (5 - end)
            if parent not in new:
                new[parent] = {"allow": {}}
            if "allow" in rule:
                for country in rule["allow"]:
                    new[parent]["allow"].setdefault(country, [])
    block_rules = {taxon: rule["block"] for taxon, rule in geofence.items() if "block" in rule}
    all_taxa = five_token_closure(labels) | set(geofence)
    for taxon in list(all_taxa):
        all_taxa.update(parent_taxa(taxon))
    inherited: dict[str, dict] = {}
    for taxon in sorted(all_taxa):
        for blocked, countries in block_rules.items():
            if taxon != blocked and taxon.startswith(blocked.rstrip(";") + ";"):
                _merge_country_lists(countries, inherited.setdefault(taxon, {}))
    for taxon, countries in inherited.items():
        entry = new.setdefault(taxon, {})
        _merge_country_lists(countries, entry.setdefault("block", {}))
    return new


def trim_to_labels(geofence: dict, labels: Sequence[str]) -> dict:
    """Keep only the rules of taxa that are labels (or parents of labels)."""
    keep = five_token_closure(labels)
    return {taxon: rule for taxon, rule in geofence.items() if taxon in keep}


def build_geofence(
    fixes_rows: Sequence[tuple[int, str, str, str, str]],
    labels: Sequence[str],
    base: dict | None = None,
) -> dict:
    """Base geofence + fixes, propagated and trimmed to `labels` (7-token lines)."""
    geofence = apply_fixes(base or {}, fixes_rows)
    geofence = propagate_rules(geofence, labels)
    return trim_to_labels(geofence, labels)


# --------------------------------------------------------------------------------------
# Random geofences (tests, synthetic packs).
# --------------------------------------------------------------------------------------

_RANDOM_COUNTRIES = ("USA", "CAN", "MEX", "BRA", "KEN", "TZA", "AUS", "GBR", "IND", "CHN")
_RANDOM_US_STATES = ("CA", "NY", "TX", "AK", "HI", "ME", "CO", "FL", "WA", "DC")


def random_geofence(taxonomy_labels: Sequence[str], rng: random.Random, n_rules: int) -> dict:
    """A random geofence with `n_rules` allow/block rules over the given labels.

    Rules are keyed at the species level or at a random higher rank (genus ... kingdom) of
    randomly chosen labels, and name a few countries from a small pool (so that random
    instances hit them) with, for the USA, sometimes a list of states. `rng` is a
    `random.Random` (hypothesis' `st.randoms()` works). The result is in speciesnet's
    geofence JSON format.
    """
    candidates = [label for label in taxonomy_labels
                  if len(label.split(";")) == 7 and label.split(";")[1]]
    geofence: dict[str, dict] = {}
    if not candidates:
        return geofence
    for _ in range(n_rules):
        taxa = taxa_of(rng.choice(candidates)).split(";")
        depth = max(i + 1 for i, tok in enumerate(taxa) if tok)
        # Mostly species..class; now and then the kingdom (";;;;", the "animal" label).
        keep = rng.randint(1, depth) if rng.random() > 0.03 else 0
        key = ";".join(taxa[:keep] + [""] * (5 - keep))
        rule_type = rng.choice(("allow", "block"))
        countries = geofence.setdefault(key, {}).setdefault(rule_type, {})
        for country in rng.sample(_RANDOM_COUNTRIES, rng.randint(1, 3)):
            if country == "USA" and rng.random() < 0.6:
                states = sorted(rng.sample(_RANDOM_US_STATES, rng.randint(1, 3)))
            else:
                states = []
            countries[country] = states
    return geofence
