"""Taxonomy map and per-label ancestor tables for the ensemble.

Labels are 7-token strings `uuid;class;order;family;genus;species;common name`. The
ensemble rolls classifier labels up to their ancestors (genus ... kingdom) by looking the
ancestor's 5-token "taxa" string up in a taxonomy map built from `taxonomy_release.txt`
exactly as speciesnet 5.0.6 builds it. The reference re-splits and re-joins every label on
every detection; here each label's ancestors are computed once and memoised, so the
per-detection work is dictionary lookups.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from edgenet.constants import Classification
from edgenet.errors import InputError

__all__ = [
    "LEVELS",
    "Taxonomy",
    "ancestor_at_level",
    "full_class_string",
    "load_taxonomy_map",
    "read_label_lines",
    "taxa_of",
    "check_labels_against_taxonomy",
    "five_token_closure",
]

# Taxonomy levels the ensemble can roll up to, from the most specific.
LEVELS: tuple[str, ...] = ("species", "genus", "family", "order", "class", "kingdom")
_LEVEL_INDEX = {level: i for i, level in enumerate(LEVELS)}


class LabelFormatError(ValueError):
    """A label is not made of 7 `;`-separated parts (the reference raises ValueError)."""


def taxa_of(label: str) -> str:
    """The 5-token taxa string of a label (`class;order;family;genus;species`)."""
    return ";".join(label.split(";")[1:6])


def full_class_string(label: str) -> str:
    """The 5-token taxa string of a 7-token label; raises `LabelFormatError` otherwise.

    This is the key of geofence rules.
    """
    parts = label.split(";")
    if len(parts) != 7:
        raise LabelFormatError(
            f"Expected label made of 7 parts, but found only {len(parts)}: {label}"
        )
    return ";".join(parts[1:6])


def _ancestor_keys(label: str) -> tuple[str | None, ...]:
    """Taxa-string keys of a label's ancestors at each of `LEVELS` (None: no ancestor).

    Mirrors speciesnet's `get_ancestor_at_level` before its final map lookup: a level is
    missing when the label has no name at that rank; "kingdom" is the all-empty key and
    exists for every label with a class, and for the special "animal" label.
    """
    parts = label.split(";")
    if len(parts) != 7:
        raise LabelFormatError(
            f"Expected label made of 7 parts, but found only {len(parts)}: {label}"
        )
    cls, order, family, genus, species = parts[1:6]
    keys: list[str | None] = [
        ";".join(parts[1:6]) if species else None,
        ";".join([cls, order, family, genus, ""]) if genus else None,
        ";".join([cls, order, family, "", ""]) if family else None,
        ";".join([cls, order, "", "", ""]) if order else None,
        ";".join([cls, "", "", "", ""]) if cls else None,
        ";;;;" if (cls or label == Classification.ANIMAL.value) else None,
    ]
    return tuple(keys)


def ancestor_at_level(label: str, taxonomy_level: str, taxonomy_map: dict) -> str | None:
    """The taxonomy label of `label`'s ancestor at a level, or None (as the reference)."""
    index = _LEVEL_INDEX.get(taxonomy_level)
    keys = _ancestor_keys(label)  # validates the label first, as the reference does
    if index is None:
        return None
    key = keys[index]
    return None if key is None else taxonomy_map.get(key)


def read_label_lines(path: str | Path) -> list[str]:
    """Stripped lines of a labels/taxonomy text file (UTF-8), as speciesnet reads them."""
    try:
        with open(path, encoding="utf-8") as fp:
            return [line.strip() for line in fp.readlines()]
    except OSError as exc:
        raise InputError(f"cannot read taxonomy file: {exc.strerror}", path=path,
                         fix="check the path in the pack's info.json") from exc
    except UnicodeDecodeError as exc:
        raise InputError("taxonomy file is not UTF-8 text", path=path,
                         fix="restore the taxonomy file from the model pack") from exc


def build_taxonomy_map(labels: Iterable[str]) -> dict[str, str]:
    """Taxonomy map from label lines, exactly as speciesnet 5.0.6 builds it.

    Later lines win for duplicate taxa; blank, vehicle and "no cv result" entries are
    removed; human and animal are (re)inserted last with their canonical labels.
    """
    taxonomy_map = {taxa_of(label): label for label in labels}
    for special in (Classification.BLANK, Classification.VEHICLE, Classification.UNKNOWN):
        taxonomy_map.pop(taxa_of(special.value), None)
    for special in (Classification.HUMAN, Classification.ANIMAL):
        taxonomy_map[taxa_of(special.value)] = special.value
    return taxonomy_map


def load_taxonomy_map(path: str | Path) -> dict[str, str]:
    """Load `taxonomy_release.txt` into the ensemble's taxa -> label map."""
    return build_taxonomy_map(read_label_lines(path))


class Taxonomy:
    """Taxonomy map plus memoised per-label facts used on every detection.

    `info(label)` returns `(full_class_string, ancestors)` where `ancestors` maps each of
    `LEVELS` (by index) to the ancestor label or None. A malformed label raises
    `LabelFormatError` each time it is asked for, so callers fail exactly where the
    reference would.
    """

    def __init__(self, taxonomy_map: dict[str, str]):
        self.map = taxonomy_map
        self._info: dict[str, tuple[str, tuple[str | None, ...]]] = {}

    @classmethod
    def from_file(cls, path: str | Path) -> Taxonomy:
        return cls(load_taxonomy_map(path))

    def info(self, label: str) -> tuple[str, tuple[str | None, ...]]:
        """Full class string and ancestor labels at every level (memoised)."""
        cached = self._info.get(label)
        if cached is not None:
            return cached
        keys = _ancestor_keys(label)
        get = self.map.get
        ancestors = tuple(None if key is None else get(key) for key in keys)
        result = (";".join(label.split(";")[1:6]), ancestors)
        self._info[label] = result
        return result

    def ancestor(self, label: str, level_index: int) -> str | None:
        """Ancestor label at `LEVELS[level_index]`, or None."""
        return self.info(label)[1][level_index]

    def full_class_string(self, label: str) -> str:
        """Geofence key of a label (memoised)."""
        return self.info(label)[0]


def five_token_closure(labels: Iterable[str]) -> set[str]:
    """5-token taxa of 7-token labels plus all of their parent taxa."""
    out: set[str] = set()
    for line in labels:
        parts = line.split(";")[1:6]
        for end in range(1, 6):
            out.add(";".join(parts[:end]) + ";" * (5 - end))
    return out


def check_labels_against_taxonomy(labels: list[str], taxonomy: list[str]) -> dict[str, list]:
    """Compare a classifier labels file with a taxonomy file (both as stripped lines).

    Why: the ensemble rolls labels up through the taxonomy; a label whose taxa (or parent
    taxa) are missing from the taxonomy can never roll up there, and a roll-up answers
    with the taxonomy's line (its UUID and common name), not the label's. Returns lists
    keyed by finding; all empty means the files agree line for line.
    """
    by_uuid = {line.split(";")[0]: line for line in taxonomy}
    tax_taxa: dict[str, list[str]] = {}
    for line in taxonomy:
        tax_taxa.setdefault(taxa_of(line), []).append(line)
    tax_lines = set(taxonomy)
    report: dict[str, list] = {
        "malformed_labels": [],
        "duplicate_label_taxa": [],
        "taxa_missing_from_taxonomy": [],
        "parent_taxa_missing_from_taxonomy": [],
        "same_uuid_different_line": [],
        "uuid_missing_same_taxa": [],
        "special_labels_missing": [],
    }
    seen: dict[str, str] = {}
    for line in labels:
        parts = line.split(";")
        if len(parts) != 7:
            report["malformed_labels"].append(line)
            continue
        taxa = taxa_of(line)
        if taxa.replace(";", "") and taxa in seen:
            report["duplicate_label_taxa"].append((seen[taxa], line))
        seen.setdefault(taxa, line)
        if line in tax_lines:
            continue
        if taxa not in tax_taxa:
            report["taxa_missing_from_taxonomy"].append(line)
        elif parts[0] in by_uuid:
            report["same_uuid_different_line"].append((line, by_uuid[parts[0]]))
        else:
            report["uuid_missing_same_taxa"].append((line, tax_taxa[taxa][-1]))
    for parent in sorted(five_token_closure(
            [line for line in labels if len(line.split(";")) == 7])):
        if parent.replace(";", "") and parent not in tax_taxa:
            report["parent_taxa_missing_from_taxonomy"].append(parent)
    for special in Classification:
        if special.value not in labels:
            report["special_labels_missing"].append(special.value)
    return report
