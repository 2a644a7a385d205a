"""The SpeciesNet ensemble (speciesnet 5.0.6 decisions) and geolocation helpers.

Light imports only (numpy at most): `edgenet run` loads this on every run.
"""

from __future__ import annotations

from edgenet.ensemble.combiner import combine_one
from edgenet.ensemble.ensemble import Ensemble, check_matching_detections
from edgenet.ensemble.geofence import Geofence, load_geofence_map, random_geofence
from edgenet.ensemble.geolocation import (
    find_admin1_region,
    geolocate_instance,
    validate_admin1,
    validate_country,
)
from edgenet.ensemble.taxonomy import Taxonomy, load_taxonomy_map

__all__ = [
    "Ensemble",
    "Geofence",
    "Taxonomy",
    "check_matching_detections",
    "combine_one",
    "find_admin1_region",
    "geolocate_instance",
    "load_geofence_map",
    "load_taxonomy_map",
    "random_geofence",
    "validate_admin1",
    "validate_country",
]
