"""User-facing errors.

`EdgenetError` is raised for anything the user can fix (bad flags, bad files, missing packs).
The CLI prints its message on one line block, with no traceback, and exits with code 2.
"""

from __future__ import annotations


class EdgenetError(Exception):
    """A problem the user can fix. `str(err)` names the file, the problem and the fix."""

    exit_code = 2

    def __init__(self, message: str, *, path: object | None = None, fix: str | None = None):
        parts = []
        if path is not None:
            parts.append(f"{path}: ")
        parts.append(message)
        if fix:
            parts.append(f"\n  fix: {fix}")
        super().__init__("".join(parts))
        self.path = path
        self.fix = fix


class PackError(EdgenetError):
    """A model pack is missing, incomplete or inconsistent."""


class InputError(EdgenetError):
    """Instances, detections/classifications JSON or flags are malformed."""


class OutputError(EdgenetError):
    """The predictions file cannot be written; the previous file is left intact."""


def warn(message: str) -> None:
    """A warning on stderr that does not stop the run (a failed image, a fallback)."""
    import sys

    print(f"edgenet: warning: {message}", file=sys.stderr)
