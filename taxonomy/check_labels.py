"""Check a classifier labels file against a taxonomy file and report the mismatches.

Usage:
    python taxonomy/check_labels.py LABELS.txt TAXONOMY.txt [--strict] [--json]

Why: the ensemble rolls classifier labels up through the taxonomy. A label whose taxa (or
parent taxa) are missing from the taxonomy can never be rolled up there, and a roll-up
answers with the taxonomy's line (its UUID and common name), not the label's. Exit code 0
unless --strict and a finding other than the expected ones (the "animal" special label is
never a classifier output; the ensemble adds it itself).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgenet.constants import Classification
from edgenet.ensemble.taxonomy import check_labels_against_taxonomy, read_label_lines
from edgenet.errors import EdgenetError

_TITLES = {
    "malformed_labels": "label lines without 7 ';'-separated fields",
    "duplicate_label_taxa": "labels sharing the same taxa (first, later)",
    "taxa_missing_from_taxonomy": "labels whose taxa are not in the taxonomy",
    "parent_taxa_missing_from_taxonomy": "parent taxa of labels not in the taxonomy "
                                         "(roll-ups cannot reach them)",
    "same_uuid_different_line": "labels whose UUID is in the taxonomy with another line "
                                "(label, taxonomy)",
    "uuid_missing_same_taxa": "labels whose UUID is not in the taxonomy but whose taxa are "
                              "(label, taxonomy line used by roll-ups)",
    "special_labels_missing": "special labels absent from the labels file",
}
_EXPECTED_SPECIAL_MISSING = {Classification.ANIMAL.value, Classification.UNKNOWN.value}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("labels", type=Path)
    parser.add_argument("taxonomy", type=Path)
    parser.add_argument("--strict", action="store_true", help="exit 1 on unexpected findings")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    try:
        labels = read_label_lines(args.labels)
        taxonomy = read_label_lines(args.taxonomy)
    except EdgenetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report = check_labels_against_taxonomy(labels, taxonomy)
    if args.json:
        print(json.dumps(report, indent=1, ensure_ascii=False))
    else:
        print(f"{len(labels)} labels, {len(taxonomy)} taxonomy lines")
        for key, items in report.items():
            print(f"- {_TITLES[key]}: {len(items)}")
            for item in items:
                text = " | ".join(item) if isinstance(item, tuple) else item
                print(f"    {text}")
    unexpected = {k: v for k, v in report.items() if v}
    special = set(unexpected.pop("special_labels_missing", []))
    if special - _EXPECTED_SPECIAL_MISSING:
        unexpected["special_labels_missing"] = sorted(special - _EXPECTED_SPECIAL_MISSING)
    return 1 if args.strict and unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
