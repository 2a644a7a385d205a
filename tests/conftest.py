"""Shared fixtures: locations of the shared test data and of the reference installation.

The shared data lives next to the checkout (`../shared`), never inside the repository; every
fixture here skips cleanly when it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The optimised-graph cache (edgenet.providers.optimized_model_path) would keep a copy of every
# throw-away test model in the user's cache dir; tests that exercise it turn it back on.
os.environ.setdefault("EDGENET_ORT_CACHE", "0")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("EDGENET_SHARED_DIR", REPO_ROOT.parent / "shared"))
SPECIESNET_TEST_IMAGES = SHARED_DIR / "images" / "speciesnet_test_data"
EXTRA_IMAGES = SHARED_DIR / "images" / "camera_trap_extra"
SPECIESNET_DATA = SHARED_DIR / "data" / "speciesnet"


def reference_python() -> Path | None:
    """Python of a venv with speciesnet 5.0.6 installed, or None."""
    env = os.environ.get("EDGENET_REFERENCE_PYTHON")
    candidates = [Path(env)] if env else [Path("/work/refvenv/bin/python")]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    return None


@pytest.fixture(scope="session")
def speciesnet_images() -> Path:
    if not SPECIESNET_TEST_IMAGES.is_dir():
        pytest.skip(f"shared images absent: {SPECIESNET_TEST_IMAGES}")
    return SPECIESNET_TEST_IMAGES


@pytest.fixture(scope="session")
def extra_images() -> Path:
    if not EXTRA_IMAGES.is_dir():
        pytest.skip(f"shared images absent: {EXTRA_IMAGES}")
    return EXTRA_IMAGES


@pytest.fixture(scope="session")
def speciesnet_data() -> Path:
    if not (SPECIESNET_DATA / "taxonomy_release.txt").is_file():
        pytest.skip(f"shared SpeciesNet data absent: {SPECIESNET_DATA}")
    return SPECIESNET_DATA


@pytest.fixture(scope="session")
def ref_python() -> Path:
    python = reference_python()
    if python is None:
        pytest.skip("speciesnet reference venv absent (set EDGENET_REFERENCE_PYTHON)")
    return python


@pytest.fixture()
def cache_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """edgenet's on-disk caches on, in a fresh `EDGENET_HOME` (the suite turns them off);
    returns the cache folder."""
    monkeypatch.setenv("EDGENET_ORT_CACHE", "1")
    monkeypatch.setenv("EDGENET_HOME", str(tmp_path / "home"))
    return tmp_path / "home" / "ort-optimized"


@pytest.fixture()
def loaded_paths(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The model paths onnxruntime sessions are built from, in order."""
    import onnxruntime as ort

    seen: list[str] = []
    real = ort.InferenceSession.__init__

    def spy(self: ort.InferenceSession, path: object, *args: object, **kwargs: object) -> None:
        seen.append(str(path))
        real(self, path, *args, **kwargs)

    monkeypatch.setattr(ort.InferenceSession, "__init__", spy)
    return seen
