"""The one error every converter raises (detector, classifier, pack, pull): the model could
not be converted, or the converted graph does not reproduce its source; nothing was written.
It is an `EdgenetError`, so the CLI prints its path and fix and exits 2 without a traceback."""

from __future__ import annotations

from edgenet.errors import EdgenetError


class ConvertError(EdgenetError):
    """A conversion could not be done or did not pass its checks; nothing was written."""
