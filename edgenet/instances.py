"""Instances: the list of images to process, built from the `edgenet run` input flags.

The result is exactly what speciesnet 5.0.6's `prepare_instances_dict` builds (same filepath
strings, same order, same country/admin1 enforcement), so that predictions files are
interchangeable between the two tools. What edgenet adds is validation: a malformed or
wrong-schema instances JSON is refused with an `InputError` that names the file, the problem
and the fix, before any image is touched.
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from edgenet.constants import IMG_EXTENSIONS
from edgenet.errors import InputError

StrPath = str | os.PathLike

# Keys of an instance that edgenet reads (others are kept untouched, as the reference does).
_LOCATION_STRING_KEYS = ("country", "admin1_region")
_LOCATION_NUMBER_KEYS = ("latitude", "longitude")
INPUT_FLAGS = (
    "--instances-json",
    "--filepaths",
    "--filepaths-txt",
    "--folders",
    "--folders-txt",
)


def check_region_codes(country: str | None, admin1_region: str | None) -> None:
    """Refuse malformed --country/--admin1-region values, as the reference does (and more).

    The reference only checks lengths (3 and 2 characters); when the ensemble package offers
    `validate_country`/`validate_admin1`, their stricter checks are applied too.
    """
    if country:
        if not isinstance(country, str) or len(country) != 3:
            raise InputError(
                f"Invalid three-letter country code {country}",
                fix="pass an ISO 3166-1 alpha-3 code, e.g. --country USA",
            )
    if admin1_region:
        if not isinstance(admin1_region, str) or len(admin1_region) != 2:
            raise InputError(
                f"Invalid two-letter region code {admin1_region}",
                fix="pass an ISO 3166-2 subdivision code without the country, "
                "e.g. --admin1-region CA",
            )
    _external_region_checks(country, admin1_region, source=None)


def _external_region_checks(
    country: str | None, admin1_region: str | None, source: object | None, context: str = ""
) -> None:
    """Apply the ensemble package's code validators when they exist (optional at import).

    The validators may raise `InputError` or `ValueError`; either becomes an `InputError`
    that names the source file (or the flag) and the instance.
    """
    try:
        from edgenet.ensemble import geolocation
    except Exception:  # noqa: BLE001 - the module may be absent or broken; checks are extra
        return
    validate_country = getattr(geolocation, "validate_country", None)
    validate_admin1 = getattr(geolocation, "validate_admin1", None)
    try:
        if country and validate_country is not None:
            validate_country(country)
        if admin1_region and validate_admin1 is not None:
            validate_admin1(admin1_region)
        us_states = getattr(geolocation, "US_ADMIN1_REGION_TO_ABBREVIATION", None)
        if country == "USA" and admin1_region and us_states:
            known = set(us_states.values())
            if admin1_region not in known:
                raise ValueError(
                    f"unknown US state code {admin1_region!r} (expected one of "
                    f"{', '.join(sorted(known))})"
                )
    except (InputError, ValueError) as err:
        message = str(err) if isinstance(err, ValueError) else str(err).split("\n  fix:")[0]
        where = context or ("--country/--admin1-region" if source is None else "")
        raise InputError(
            f"{where + ': ' if where else ''}{message}",
            path=source,
            fix="use ISO 3166-1 alpha-3 country codes (e.g. USA) and ISO 3166-2 "
            "admin1 codes without the country prefix (e.g. CA)",
        ) from None


def only_one_given(*values: object) -> bool:
    """True when exactly one value is truthy (the reference's `only_one_true`)."""
    return sum(1 for value in values if value) == 1


def prepare_instances(
    *,
    instances_json: StrPath | None = None,
    filepaths: Sequence[StrPath] | None = None,
    filepaths_txt: StrPath | None = None,
    folders: Sequence[StrPath] | None = None,
    folders_txt: StrPath | None = None,
    country: str | None = None,
    admin1_region: str | None = None,
    instances_dict: dict | None = None,
) -> list[dict]:
    """Build the instances list from exactly one input source.

    Mirrors speciesnet's `prepare_instances_dict` and returns its `["instances"]` list:
    folders are searched recursively for the reference's extensions (exact case: all-lower
    or all-upper), paths are de-duplicated and sorted the way `sorted(set(Path))` sorts them
    and written with forward slashes; `--country` (and `--admin1-region`, only together with
    a country) override every instance's location.
    """
    given: dict[str, object] = {
        "--instances-json": instances_json,
        "--filepaths": filepaths,
        "--filepaths-txt": filepaths_txt,
        "--folders": folders,
        "--folders-txt": folders_txt,
    }
    if instances_dict is not None:
        given["instances_dict"] = instances_dict
    if not only_one_given(*given.values()):
        received = ", ".join(f"{name}={value!r}" for name, value in given.items())
        raise InputError(
            f"Expected exactly one of [{', '.join(given)}] to be provided. "
            f"Received: [{received}].",
            fix="give the images with exactly one input flag",
        )

    if instances_json is not None:
        instances = load_instances_json(instances_json)
    elif instances_dict is not None:
        instances = validate_instances(instances_dict, source="instances dict")
    else:
        if folders_txt is not None:
            folders = [line for line in _read_lines(folders_txt) if line]
        if folders is not None:
            paths = discover_images(folders)
            filepaths = [path.as_posix() for path in paths]
        elif filepaths_txt is not None:
            # Blank lines are kept, as the reference keeps them (they become failures).
            filepaths = _read_lines(filepaths_txt)
        assert filepaths is not None
        instances = [
            {"filepath": fp if isinstance(fp, str) else Path(fp).as_posix()} for fp in filepaths
        ]
    return enforce_location(instances, country, admin1_region)


def enforce_location(
    instances: list[dict], country: str | None, admin1_region: str | None
) -> list[dict]:
    """Override every instance's country (and admin1 region when also given).

    As the reference: nothing happens without a country; an instance's own admin1_region
    survives a --country override when no --admin1-region is given.
    """
    if not country:
        return instances
    location: dict[str, str] = {"country": country}
    if admin1_region:
        location["admin1_region"] = admin1_region
    return [instance | location for instance in instances]


def _read_lines(path: StrPath) -> list[str]:
    """Read a UTF-8 text file into stripped lines, with a clear error when it cannot be read."""
    try:
        with open(path, encoding="utf-8") as fp:
            return [line.strip() for line in fp.readlines()]
    except FileNotFoundError:
        raise InputError("file not found", path=path, fix="check the path") from None
    except IsADirectoryError:
        raise InputError(
            "is a directory, expected a text file", path=path, fix="give a .txt file"
        ) from None
    except UnicodeDecodeError as err:
        raise InputError(
            f"not UTF-8 text ({err.reason} at byte {err.start})",
            path=path,
            fix="save the file as UTF-8 text, one path per line",
        ) from None
    except OSError as err:
        raise InputError(
            f"cannot be read ({err.strerror})", path=path, fix="check its permissions"
        ) from None


def _matches_extension(name: str) -> bool:
    """Whether a file name matches one of the reference's `*.ext` globs.

    On POSIX pathlib globs case-sensitively (so `.Jpg` is not found); on Windows they are
    case-insensitive; we follow the platform, as the reference does through pathlib.
    """
    if os.name == "nt":
        lower = name.lower()
        return any(fnmatch.fnmatchcase(lower, f"*.{ext.lower()}") for ext in IMG_EXTENSIONS)
    return any(fnmatch.fnmatchcase(name, f"*.{ext}") for ext in IMG_EXTENSIONS)


def _walk_dirs(root: Path) -> Iterable[Path]:
    """Yield `root` and every directory below it, never following directory symlinks.

    That is what pathlib's `**` does, and it is why a symlink loop cannot hang discovery.
    Unreadable directories are skipped silently, as pathlib's glob skips them.
    """
    stack = [root]
    while stack:
        current = stack.pop()
        yield current
        try:
            with os.scandir(current) as it:
                entries = list(it)
        except OSError:
            continue
        subdirs = []
        for entry in entries:
            try:
                if entry.is_dir() and not entry.is_symlink():
                    subdirs.append(current / entry.name)
            except OSError:
                continue
        stack.extend(reversed(subdirs))


def discover_images(folders: Iterable[StrPath]) -> list[Path]:
    """All image paths under `folders` (recursive), de-duplicated, in the reference's order.

    The reference globs `**/*.{ext}` per extension and returns `sorted(set(paths))`; any
    entry whose name matches counts, even a directory named like an image (it then fails to
    load and becomes a `failures` entry, as in the reference).
    """
    found: set[Path] = set()
    for folder in folders:
        base = Path(folder)
        if not base.exists():
            raise InputError(
                "folder not found", path=folder, fix="check the path given to --folders"
            )
        if not base.is_dir():
            raise InputError(
                "is not a folder",
                path=folder,
                fix="use --filepaths for single images, --folders for folders",
            )
        for directory in _walk_dirs(base):
            try:
                with os.scandir(directory) as it:
                    names = [entry.name for entry in it]
            except OSError:
                continue
            for name in names:
                if _matches_extension(name):
                    found.add(directory / name)
    return sorted(found)


def load_instances_json(path: StrPath) -> list[dict]:
    """Load and validate an instances JSON file (`{"instances": [{"filepath": ...}, ...]}`)."""
    try:
        with open(path, encoding="utf-8") as fp:
            data = json.load(fp)
    except FileNotFoundError:
        raise InputError(
            "instances JSON not found", path=path, fix="check the path given to --instances-json"
        ) from None
    except IsADirectoryError:
        raise InputError("is a directory, expected a JSON file", path=path) from None
    except UnicodeDecodeError:
        raise InputError("not UTF-8 text", path=path, fix="save it as UTF-8 JSON") from None
    except RecursionError:
        raise InputError(
            "nested too deeply to parse", path=path,
            fix='write it as {"instances": [{"filepath": "..."}, ...]}',
        ) from None
    except json.JSONDecodeError as err:
        raise InputError(
            f"not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})",
            path=path,
            fix='write it as {"instances": [{"filepath": "..."}, ...]}',
        ) from None
    except OSError as err:
        raise InputError(
            f"cannot be read ({err.strerror})", path=path, fix="check its permissions"
        ) from None
    return validate_instances(data, source=path)


def validate_instances(data: Any, source: object) -> list[dict]:
    """Check the instances schema; return the instances list (instances are not copied).

    Each instance needs a string `filepath`; `country`/`admin1_region` are strings or null,
    `latitude`/`longitude` numbers or null. Problems name the instance index.
    """
    fix = (
        'the file must be {"instances": [{"filepath": "a.jpg", "country": "USA", '
        '"admin1_region": "CA", "latitude": 1.0, "longitude": 2.0}, ...]} '
        "(only filepath is required)"
    )
    if not isinstance(data, dict):
        raise InputError(
            f"expected a JSON object at the top level, found {type(data).__name__}",
            path=source,
            fix=fix,
        )
    if "instances" not in data:
        hint = fix
        if "predictions" in data:
            hint = "this looks like a predictions file; " + fix
        raise InputError('missing the "instances" key', path=source, fix=hint)
    instances = data["instances"]
    if not isinstance(instances, list):
        raise InputError(
            f'"instances" must be a list, found {type(instances).__name__}',
            path=source,
            fix=fix,
        )
    for idx, instance in enumerate(instances):
        where = f"instance #{idx}"
        if not isinstance(instance, dict):
            raise InputError(
                f"{where} must be an object, found {type(instance).__name__}",
                path=source,
                fix=fix,
            )
        filepath = instance.get("filepath")
        if not isinstance(filepath, str) or not filepath:
            raise InputError(
                f'{where} needs a non-empty string "filepath", found {filepath!r}',
                path=source,
                fix=fix,
            )
        for key in _LOCATION_STRING_KEYS:
            value = instance.get(key)
            if value is not None and not isinstance(value, str):
                raise InputError(
                    f'{where} ({filepath}): "{key}" must be a string, found {value!r}',
                    path=source,
                    fix=fix,
                )
        for key in _LOCATION_NUMBER_KEYS:
            value = instance.get(key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float))
            ):
                raise InputError(
                    f'{where} ({filepath}): "{key}" must be a number, found {value!r}',
                    path=source,
                    fix=fix,
                )
        lat, lon = instance.get("latitude"), instance.get("longitude")
        if lat is not None and not -90.0 <= lat <= 90.0:
            raise InputError(
                f"{where} ({filepath}): latitude {lat} is outside [-90, 90]",
                path=source,
                fix="latitude and longitude are decimal degrees (WGS84)",
            )
        if lon is not None and not -180.0 <= lon <= 180.0:
            raise InputError(
                f"{where} ({filepath}): longitude {lon} is outside [-180, 180]",
                path=source,
                fix="latitude and longitude are decimal degrees (WGS84)",
            )
    _check_instance_codes(instances, source)
    return instances


def _check_instance_codes(instances: list[dict], source: object) -> None:
    """Validate each distinct (country, admin1_region) pair once with the ensemble's checks."""
    seen: set[tuple[Any, Any]] = set()
    for instance in instances:
        pair = (instance.get("country"), instance.get("admin1_region"))
        if pair in seen or not pair[0]:
            continue
        seen.add(pair)
        _external_region_checks(
            pair[0], pair[1], source=source, context=f"instance {instance['filepath']!r}"
        )
