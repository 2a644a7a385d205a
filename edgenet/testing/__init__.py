"""Helpers for reliability tests: folders of odd inputs, bulk image sets, closed URLs.

Why a package inside `edgenet` (and not under `tests/`): `scripts/kill_resume.py` and the
tests both need the same input makers, and users can run `python -m`-style checks on an
installed edgenet without the test tree. Nothing here is imported by `edgenet run`.
Only numpy, Pillow and the standard library are used (no onnx/torch).
"""

from __future__ import annotations

from edgenet.testing.bad_inputs import (
    FAILURE,
    PREDICTION,
    closed_loopback_url,
    make_bad_inputs,
    make_image_set,
    png_bytes,
    running_as_root,
)

__all__ = [
    "FAILURE",
    "PREDICTION",
    "closed_loopback_url",
    "make_bad_inputs",
    "make_image_set",
    "png_bytes",
    "running_as_root",
]
