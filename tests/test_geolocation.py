"""Geolocation: admin1 lookup (speciesnet 5.0.6's geolocation_test cases), validation helpers.

The side-by-side comparison with the reference geocoder on random points lives in
tests/test_ensemble_reference.py (needs the reference venv).
"""

from __future__ import annotations

import pytest

from edgenet.ensemble.geolocation import (
    ISO3166_ALPHA3,
    find_admin1_region,
    geolocate_instance,
    nearest_place,
    validate_admin1,
    validate_country,
)
from edgenet.errors import InputError


def test_missing_country():
    assert find_admin1_region(country=None, latitude=None, longitude=None) is None
    assert find_admin1_region(country=None, latitude=0, longitude=0) is None
    assert find_admin1_region(country=None, admin1_region="AK") is None


def test_given_admin1_region_is_kept():
    assert find_admin1_region(country="USA", admin1_region="HI") == "HI"
    assert find_admin1_region("USA", "CA", 46.01, -69.19) == "CA"
    assert find_admin1_region("KEN", "XX", 46.01, -69.19) == "XX"


@pytest.mark.parametrize(
    ("lat", "lon", "expected"),
    [
        (None, None, None), (0, None, None), (None, 0, None), (0, 0, None),
        (-23, 133, None), (45, 0, None),
        (65, -150, "AK"), (19, -155, "HI"), (37, -119, "CA"), (46.01, -69.19, "ME"),
        (38.63, -103.43, "CO"), (38.92, -77.01, "DC"),
        # territories reported by their alpha-2 code for country USA
        (-14.23, -169.46, "AS"), (13.42, 144.71, "GU"), (16.34, 145.66, "MP"),
        (18.22, -66.67, "PR"), (18.35, -64.71, "VI"),
        (19.28, 166.64, None),  # "UM" is not in the geocoder's data
    ],
)
def test_usa(lat, lon, expected):
    assert find_admin1_region(country="USA", latitude=lat, longitude=lon) == expected


@pytest.mark.parametrize("country", ["ASM", "GUM", "MNP", "PRI", "UMI", "VIR", "AUS", "BRA"])
def test_other_countries_give_none(country):
    assert find_admin1_region(country=country, latitude=18.22, longitude=-66.67) is None


def test_numeric_strings_are_accepted_like_numpy():
    assert find_admin1_region("USA", None, "38.92", "-77.01") == "DC"


@pytest.mark.parametrize("bad", ["north", float("nan"), float("inf"), [1, 2]])
def test_bad_coordinates_are_input_errors(bad):
    with pytest.raises(InputError, match="latitude"):
        find_admin1_region("USA", None, bad, 10.0)


def test_nearest_place():
    assert nearest_place(40.7128, -74.006) == {"cc": "US", "admin1": "New York"}
    assert nearest_place(-1.2864, 36.8172)["cc"] == "KE"
    assert nearest_place(51.5072, -0.1276) == {"cc": "GB", "admin1": "England"}


def test_geolocate_instance():
    inst = {"filepath": "a.jpg", "country": "USA", "latitude": 37, "longitude": -119}
    assert geolocate_instance(inst) == {"country": "USA", "admin1_region": "CA",
                                        "latitude": 37, "longitude": -119}
    assert geolocate_instance({"filepath": "b.jpg"}) == {
        "country": None, "admin1_region": None, "latitude": None, "longitude": None}
    # admin1 given without a country is dropped, exactly as the reference does
    assert geolocate_instance({"filepath": "c", "admin1_region": "CA"})["admin1_region"] is None
    with pytest.raises(InputError, match="d.jpg"):
        geolocate_instance({"filepath": "d.jpg", "country": "USA", "latitude": "x",
                            "longitude": 1})


def test_validate_country():
    assert len(ISO3166_ALPHA3) == 249
    for code in ("USA", "GBR", "KEN", "AUS", "ALA", "BES"):
        assert validate_country(code) == code
    with pytest.raises(InputError, match="three-letter"):
        validate_country("US")
    with pytest.raises(InputError, match="three-letter"):
        validate_country(840)
    with pytest.raises(InputError, match="unknown country code 'XYZ'"):
        validate_country("XYZ")
    with pytest.raises(InputError, match="upper case") as info:
        validate_country("usa", source="instances.json")
    assert str(info.value).startswith("instances.json: ")


def test_validate_admin1():
    assert validate_admin1("CA") == "CA"
    assert validate_admin1("01") == "01"
    for bad in ("C", "CAL", "", None, 12):
        with pytest.raises(InputError, match="admin1"):
            validate_admin1(bad)
