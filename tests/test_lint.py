"""The tree is ruff-clean and the runtime package type-checks (mypy, `[tool.mypy]` in
pyproject.toml). Both tools come with the dev extra at the versions in constraints.txt;
without them (a runtime-only install) these tests skip."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_ruff_clean() -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (dev extra)")
    proc = _run([ruff, "check", "--no-cache", "."])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_runtime_package_type_checks(tmp_path: Path) -> None:
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (dev extra)")
    proc = _run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache")])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
