"""Predictions files: loading (resume), validating, guessing their source, atomic saving.

Semantics follow speciesnet 5.0.6 (`utils.load_partial_predictions`, `save_predictions`,
`run_model.guess_predictions_source`): on resume, images that failed are retried, a filepath
that is not among the instances is refused, and files in the legacy output format are
refused. Saving is stricter than the reference's (which only renames a temp file): the temp
file is flushed and fsynced before `os.replace`, and the directory is fsynced after, so a
crash or power loss leaves either the old file or the new one, never a torn JSON. When the
file cannot be written (permissions, full disk) the previous file stays intact and an
`OutputError` says why.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from edgenet.constants import FORMAT_VERSION, OUTPUT_DECIMALS
from edgenet.errors import InputError, OutputError

StrPath = str | os.PathLike
Source = Literal["classifier", "detector", "ensemble", "unknown"]

# Per-image fields that only exist in output formats older than FORMAT_VERSION.
LEGACY_PREDICTION_FIELDS = (
    "classifications",
    "classifications_list",
    "prediction",
    "processed_classifications",
)


def make_predictions_dict(predictions: list[dict]) -> dict:
    """Wrap per-image predictions in the file's top-level structure."""
    return {"info": {"format_version": FORMAT_VERSION}, "predictions": predictions}


def limit_float_precision(obj: Any, num_decimals: int = OUTPUT_DECIMALS) -> Any:
    """Round every float (numpy floats included) in nested dicts/lists/tuples.

    Same rule as the reference's `limit_float_precision`: Python's `round(float(x), n)`.
    numpy floats are detected without importing numpy (they subclass float or expose
    `__float__` and a `dtype`).
    """
    if isinstance(obj, float):
        return round(float(obj), num_decimals)
    if isinstance(obj, dict):
        return {key: limit_float_precision(value, num_decimals) for key, value in obj.items()}
    if isinstance(obj, list):
        return [limit_float_precision(item, num_decimals) for item in obj]
    if isinstance(obj, tuple):
        return tuple(limit_float_precision(item, num_decimals) for item in obj)
    dtype = getattr(obj, "dtype", None)
    if dtype is not None and getattr(dtype, "kind", "") == "f" and getattr(obj, "ndim", 1) == 0:
        return round(float(obj), num_decimals)
    return obj


def dumps_predictions(predictions_dict: dict) -> str:
    """Serialise exactly as the reference writes files (indent=1, UTF-8, 4 decimals)."""
    data = limit_float_precision(predictions_dict, OUTPUT_DECIMALS)
    return json.dumps(data, ensure_ascii=False, indent=1)


def _fsync_dir(directory: Path) -> None:
    """fsync a directory so a rename inside it survives a power loss (POSIX only)."""
    if os.name == "nt":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _describe_os_error(err: OSError) -> tuple[str, str]:
    """Problem and fix for a write failure, in words a user can act on."""
    if err.errno == errno.ENOSPC:
        return "the disk is full", "free some space (or choose another output folder) and run again"
    if err.errno in (errno.EACCES, errno.EPERM):
        return "permission denied", "choose a folder you can write to, or fix its permissions"
    if err.errno == errno.EROFS:
        return "the file system is read-only", "choose a writable output folder"
    if err.errno == errno.ENOENT:
        return "the output folder does not exist", "create the folder or fix the path"
    if err.errno == errno.EDQUOT:
        return "the disk quota is exceeded", "free some space and run again"
    return (err.strerror or str(err)), "check the output location and run again"


def write_text_atomic(text: str, output: StrPath) -> None:
    """Write `text` to `output` atomically: temp file in the same folder, fsync, replace.

    On any failure the temp file is removed, the previous `output` is left as it was, and
    `OutputError` is raised.
    """
    output = Path(output)
    tmp = output.parent / f"{output.stem}.tmp.{uuid.uuid4()}{output.suffix}"
    try:
        try:
            # backslashreplace: a file name that is not valid UTF-8 reaches us with lone
            # surrogates (os.fsdecode); they can only sit inside JSON strings, where the
            # replacement `\udcXX` is the JSON escape of the same character, so the file
            # stays UTF-8 and reads back to the identical filepath (resume still matches).
            with open(tmp, mode="w", encoding="utf-8", errors="backslashreplace") as fp:
                fp.write(text)
                fp.flush()
                os.fsync(fp.fileno())
            os.replace(tmp, output)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
    except OSError as err:
        problem, fix = _describe_os_error(err)
        raise OutputError(
            f"cannot write the predictions file: {problem} ({err.strerror or err}); "
            "the previous file, if any, is unchanged",
            path=output,
            fix=fix,
        ) from None
    _fsync_dir(output.parent)


def save_predictions(predictions_dict: dict, output_json: StrPath) -> None:
    """Save a predictions dict atomically (floats rounded to 4 decimals, indent 1)."""
    write_text_atomic(dumps_predictions(predictions_dict), output_json)


def read_json_file(path: StrPath, what: str, flag: str) -> Any:
    """Read a JSON file, turning every way it can be unreadable into an `InputError`."""
    try:
        with open(path, encoding="utf-8") as fp:
            return json.load(fp)
    except FileNotFoundError:
        raise InputError(
            f"{what} not found", path=path, fix=f"check the path given to {flag}"
        ) from None
    except IsADirectoryError:
        raise InputError(
            f"is a directory, expected a {what}", path=path, fix=f"check {flag}"
        ) from None
    except UnicodeDecodeError:
        raise InputError(f"{what} is not UTF-8 text", path=path, fix="give a JSON file") from None
    except RecursionError:
        raise InputError(
            f"{what} is nested too deeply to parse", path=path,
            fix=f"give a {what} written by edgenet or speciesnet",
        ) from None
    except json.JSONDecodeError as err:
        raise InputError(
            f"{what} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})",
            path=path,
            fix=f"give a complete {what} written by edgenet or speciesnet, "
            "or delete it to start over",
        ) from None
    except OSError as err:
        raise InputError(
            f"{what} cannot be read ({err.strerror})", path=path, fix="check its permissions"
        ) from None


def validate_predictions_data(data: Any, path: StrPath, what: str) -> list[dict]:
    """Check the `{"predictions": [{"filepath": str, ...}]}` schema; return the list."""
    fix = f'a {what} looks like {{"info": {{...}}, "predictions": [{{"filepath": ...}}, ...]}}'
    if not isinstance(data, dict):
        raise InputError(
            f"{what} must be a JSON object, found {type(data).__name__}", path=path, fix=fix
        )
    if "predictions" not in data:
        hint = fix
        if "instances" in data:
            hint = "this looks like an instances file; " + fix
        elif "images" in data:
            hint = "this looks like a MegaDetector-format file; " + fix
        raise InputError(f'{what} has no "predictions" list', path=path, fix=hint)
    predictions = data["predictions"]
    if not isinstance(predictions, list):
        raise InputError(f'"predictions" must be a list in the {what}', path=path, fix=fix)
    for idx, prediction in enumerate(predictions):
        if not isinstance(prediction, dict):
            raise InputError(
                f"prediction #{idx} in the {what} is not an object", path=path, fix=fix
            )
        filepath = prediction.get("filepath")
        if not isinstance(filepath, str):
            raise InputError(
                f'prediction #{idx} in the {what} has no string "filepath"', path=path, fix=fix
            )
        failures = prediction.get("failures")
        if failures is not None and not (
            isinstance(failures, list) and all(isinstance(f, str) for f in failures)
        ):
            raise InputError(
                f'"failures" of {filepath!r} must be a list of strings', path=path, fix=fix
            )
        detections = prediction.get("detections")
        if detections is not None:
            _validate_detections(detections, filepath, path, what)
    return predictions


def _validate_detections(detections: Any, filepath: str, path: StrPath, what: str) -> None:
    """Check detection dicts (category, conf, bbox; raw classifications when present)."""
    fix = (
        'each detection is {"category": "1", "label": "animal", "conf": 0.9, '
        '"bbox": [xmin, ymin, width, height]}'
    )
    if not isinstance(detections, list):
        raise InputError(f'"detections" of {filepath!r} must be a list', path=path, fix=fix)
    for det in detections:
        if not isinstance(det, dict):
            raise InputError(f"a detection of {filepath!r} is not an object", path=path, fix=fix)
        if not isinstance(det.get("category"), str):
            raise InputError(
                f'a detection of {filepath!r} has no string "category"', path=path, fix=fix
            )
        conf = det.get("conf")
        if isinstance(conf, bool) or not isinstance(conf, (int, float)) or math.isnan(conf):
            raise InputError(
                f'a detection of {filepath!r} has no numeric "conf"', path=path, fix=fix
            )
        bbox = det.get("bbox")
        if not (
            isinstance(bbox, list)
            and len(bbox) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)
        ):
            raise InputError(
                f'a detection of {filepath!r} has no 4-number "bbox"', path=path, fix=fix
            )
        raw = det.get("raw_classifications")
        if raw is not None:
            if not (
                isinstance(raw, dict)
                and isinstance(raw.get("classes"), list)
                and isinstance(raw.get("scores"), list)
                and len(raw["classes"]) == len(raw["scores"])
                and all(isinstance(c, str) for c in raw["classes"])
                and all(
                    isinstance(s, (int, float)) and not isinstance(s, bool) for s in raw["scores"]
                )
            ):
                raise InputError(
                    f'"raw_classifications" of {filepath!r} must hold equal-length '
                    '"classes" (strings) and "scores" (numbers)',
                    path=path,
                    fix=f"give a {what} written by edgenet or speciesnet",
                )


def load_predictions_file(path: StrPath, what: str = "predictions file", flag: str = "") -> dict:
    """Read and validate a predictions-shaped JSON file; return the whole dict."""
    data = read_json_file(path, what, flag or "--predictions-json")
    validate_predictions_data(data, path, what)
    return data


def load_partial_predictions(
    predictions_json: StrPath | None,
    instances: list[dict],
    *,
    what: str = "predictions file",
    flag: str = "--predictions-json",
) -> tuple[dict[str, dict], list[dict]]:
    """Previous predictions to reuse, and the instances still to process.

    As the reference: a missing file means nothing to reuse; predictions with `failures`
    are dropped (so those images are retried); a filepath that is not among the instances,
    or a legacy-format prediction, is refused.
    """
    if not predictions_json:
        return {}, instances
    path = Path(predictions_json)
    if not path.exists() or not path.is_file():
        return {}, instances

    data = load_predictions_file(path, what=what, flag=flag)
    targets = {instance["filepath"] for instance in instances}
    partial: dict[str, dict] = {}
    for prediction in data["predictions"]:
        filepath = prediction["filepath"]
        if filepath not in targets:
            raise InputError(
                f"Filepath from loaded predictions is missing from the set of instances to "
                f"process: `{filepath}`. Make sure you're resuming the work using the same "
                f"set of instances.",
                path=path,
                fix=f"use the same input flags as the run that wrote it, or give {flag} "
                "another file (or --ignore-existing-predictions to overwrite it)"
                if flag == "--predictions-json"
                else f"give a {what} computed on the same images",
            )
        legacy = [field for field in LEGACY_PREDICTION_FIELDS if field in prediction]
        if legacy:
            raise InputError(
                f"Predictions from `{path}` use an older output format (found field "
                f"`{legacy[0]}` for `{filepath}`), and can't be reused. Regenerate them with "
                f"the current version of SpeciesNet, or use a different output location.",
                path=path,
                fix="regenerate the file, or use a different output location",
            )
        if "failures" in prediction:
            continue
        partial[filepath] = prediction
    remaining = [inst for inst in instances if inst["filepath"] not in partial]
    return partial, remaining


def guess_predictions_source(predictions: dict[str, dict]) -> Source:
    """Which component wrote these predictions (the reference's rule, verbatim in spirit).

    Ensemble results carry `model_version` or `processed_classification`; classifier results
    carry `raw_classifications`; detector results have detections only. Classifier results
    in which nothing was classified look like detector results; only failures -> "unknown".
    """
    found_ensemble = found_classifications = found_detections = False
    for prediction in predictions.values():
        detections = prediction.get("detections") or []
        if "model_version" in prediction or any(
            "processed_classification" in det for det in detections
        ):
            found_ensemble = True
        if any("raw_classifications" in det for det in detections):
            found_classifications = True
        if "detections" in prediction:
            found_detections = True
    if found_ensemble:
        return "ensemble"
    if found_classifications:
        return "classifier"
    if found_detections:
        return "detector"
    return "unknown"


_MODE_COMPONENT = {"classifier": "classifier", "detector": "detector", "ensemble": "ensemble"}


def check_no_component_mixing(mode: str, predictions_json: StrPath, source: Source) -> None:
    """Refuse to resume a file written by another component (the reference's rule).

    Only the single-component modes check; a full run (`mode == "full"`) is not checked,
    exactly as the reference does not check it.
    """
    component = _MODE_COMPONENT.get(mode)
    if component is None:
        return
    if source not in (component, "unknown"):
        raise InputError(
            f"The {component} risks overwriting previous predictions from "
            f"`{predictions_json}` that were produced by different components. Make sure to "
            f"provide a different output location to --predictions-json.",
            path=predictions_json,
            fix="give --predictions-json a new file name",
        )


def load_component_results(
    path: StrPath,
    instances: list[dict],
    component: Literal["detector", "classifier"],
) -> dict[str, dict]:
    """Load `--detections-json` / `--classifications-json` for classifier/ensemble-only runs.

    Reference semantics (`load_partial_predictions`: failed entries dropped, unknown filepaths
    refused), plus refusal of files written by another component: detections must not be an
    ensemble or classifier output, classifications must not be an ensemble output.
    """
    flag = "--detections-json" if component == "detector" else "--classifications-json"
    what = "detections file" if component == "detector" else "classifications file"
    if not Path(path).is_file():
        raise InputError(f"{what} not found", path=path, fix=f"check the path given to {flag}")
    results, _ = load_partial_predictions(path, instances, what=what, flag=flag)
    source = guess_predictions_source(results)
    refused = {"ensemble", "classifier"} if component == "detector" else {"ensemble"}
    if source in refused:
        writer = {"ensemble": "a full run or --ensemble-only", "classifier": "--classifier-only"}
        raise InputError(
            f"this {what} holds {source} output (written by {writer[source]}), not "
            f"{component} output",
            path=path,
            fix=f"give {flag} the file written by "
            + ("--detector-only" if component == "detector" else "--classifier-only"),
        )
    return results


def check_matching_detections(
    classifications: dict[str, dict], detections: dict[str, dict], source: StrPath
) -> None:
    """Refuse classifications computed on other detections than the given ones.

    The reference raises this (as a ValueError, mid-run) from the ensemble; edgenet checks
    all images before any work starts. Whole-image classifications (category "0") are not
    tied to detections and are not checked, as in the reference.
    """
    for filepath, result in classifications.items():
        classified = result.get("detections")
        if not classified or "failures" in result:
            continue
        if classified[0].get("category") == "0":
            continue
        detected = detections.get(filepath, {}).get("detections")
        if detected is None:
            continue
        matching = len(classified) == len(detected) and all(
            a["category"] == b["category"]
            and len(a["bbox"]) == len(b["bbox"])
            and all(
                math.isclose(x, y, abs_tol=1e-4)
                for x, y in zip(a["bbox"], b["bbox"], strict=True)
            )
            for a, b in zip(classified, detected, strict=True)
        )
        if not matching:
            raise InputError(
                f"Classifications for `{filepath}` were computed on different detections "
                f"than the ones provided. Make sure classifications and detections come from "
                f"the same detector output.",
                path=source,
                fix="run --classifier-only with --detections-json set to the same detections "
                "file you give --ensemble-only",
            )


class Checkpointer:
    """Saves the predictions built by `build` every N images or T seconds, atomically.

    `build()` returns the full predictions dict at that moment (as the reference's periodic
    saver writes it: every instance, not-yet-processed ones as failures). `every_images`
    or `every_seconds` of 0/None disables that trigger.
    """

    def __init__(
        self,
        path: StrPath | None,
        build: Callable[[], dict],
        every_images: int | None = None,
        every_seconds: float | None = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path) if path else None
        self._build = build
        self.every_images = every_images or 0
        self.every_seconds = every_seconds or 0.0
        self._clock = clock
        self._last_time = clock()
        self._since_save = 0
        self.saves = 0
        self.save_seconds = 0.0

    def tick(self, new_images: int = 1) -> bool:
        """Count finished images; save when a trigger fires. Returns whether it saved."""
        if self.path is None:
            return False
        self._since_save += new_images
        due = (self.every_images and self._since_save >= self.every_images) or (
            self.every_seconds and self._clock() - self._last_time >= self.every_seconds
        )
        if due and self._since_save > 0:
            self.save()
            return True
        return False

    def save(self) -> None:
        """Save now (also used for the final save and on interruption)."""
        if self.path is None:
            return
        start = time.perf_counter()
        save_predictions(self._build(), self.path)
        self.save_seconds += time.perf_counter() - start
        self.saves += 1
        self._since_save = 0
        self._last_time = self._clock()
