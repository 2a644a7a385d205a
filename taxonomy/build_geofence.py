"""Build a geofence JSON (speciesnet's `geofence_release.json` format) from a fixes CSV.

Usage:
    python taxonomy/build_geofence.py --fixes geofence_fixes.csv \
        --taxonomy taxonomy_release.txt --labels classifier.labels.txt \
        [--base geofence_base.json] [--rename OLD=NEW ...] [--strict] --output geofence.json

Steps (the part of speciesnet's scripts/build_geofence_release.py that edgenet needs):
read and check the fixes CSV, report rows whose taxon is not in the taxonomy (skipped, or
an error with --strict), apply the rows to the base geofence (empty without --base),
propagate allow rules up and block rules down the taxonomy, keep only taxa that are labels
or parents of labels, and write the JSON with sorted keys (indent 4), atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from edgenet.ensemble.geofence import build_geofence, load_geofence_map, read_fixes_csv
from edgenet.ensemble.taxonomy import read_label_lines, taxa_of
from edgenet.errors import EdgenetError


def known_taxa(taxonomy_lines: list[str]) -> set[str]:
    """5-token taxa listed in a taxonomy file."""
    return {taxa_of(line) for line in taxonomy_lines if len(line.split(";")) == 7}


def suggest(taxon: str, taxa: set[str]) -> str | None:
    """A known taxon differing from `taxon` in exactly one rank (typo'd rank names)."""
    parts = taxon.split(";")
    close = [t for t in taxa
             if sum(a != b for a, b in zip(t.split(";"), parts, strict=True)) == 1]
    return sorted(close)[0] if len(close) == 1 else None


def write_json_atomic(obj: object, path: Path) -> None:
    """Write JSON next to the target and rename it over, so readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent or ".", prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fp:
            json.dump(obj, fp, indent=4, sort_keys=True)
            fp.write("\n")
            fp.flush()
            os.fsync(fp.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fixes", type=Path, required=True)
    parser.add_argument("--taxonomy", type=Path, required=True)
    parser.add_argument("--labels", type=Path, required=True,
                        help="classifier labels: the geofence is trimmed to these taxa")
    parser.add_argument("--base", type=Path, help="base geofence JSON (allow rules)")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--rename", action="append", default=[], metavar="OLD=NEW",
                        help="rewrite a fixes taxon before checking (e.g. a typo'd rank)")
    parser.add_argument("--strict", action="store_true",
                        help="fail on fixes rows whose taxon is not in the taxonomy")
    args = parser.parse_args(argv)
    try:
        rows = read_fixes_csv(args.fixes)
        renames = dict(item.split("=", 1) for item in args.rename)
        rows = [(line, renames.get(taxon, taxon), rule, country, state)
                for line, taxon, rule, country, state in rows]
        taxa = known_taxa(read_label_lines(args.taxonomy))
        unknown = [row for row in rows if row[1] not in taxa]
        for line, taxon, rule, country, state in unknown[:10]:
            where = f"{country} {state}".strip()
            print(f"{args.fixes}:{line}: taxon {taxon!r} ({rule} {where}) is not in the "
                  "taxonomy", file=sys.stderr)
        for name in sorted({row[1] for row in unknown}):
            count = sum(row[1] == name for row in unknown)
            hint = suggest(name, taxa)
            print(f"{count} fixes rows name {name!r}, not in the taxonomy"
                  + (f" (did you mean {hint!r}?)" if hint else "")
                  + ("" if args.strict else "; skipped"), file=sys.stderr)
        if unknown and args.strict:
            return 1
            if args.strict:
                return 1
        rows = [row for row in rows if row[1] in taxa]
        base = load_geofence_map(args.base) if args.base else None
        geofence = build_geofence(rows, read_label_lines(args.labels), base)
        write_json_atomic(geofence, args.output)
    except EdgenetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{len(rows)} fixes rows applied, {len(geofence)} taxa with rules -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
