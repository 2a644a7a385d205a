"""`edgenet run` needs none of the converter stack: with torch, tensorflow, onnx and tf2onnx made
unimportable, the full pipeline still runs on a pack and writes real predictions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

DEMO_PACK = Path(__file__).resolve().parents[1] / "edgenet" / "data" / "demo_pack"

_BLOCKED_RUN = """
import sys
for name in ("torch", "torchvision", "tensorflow", "keras", "tf_keras", "onnx", "tf2onnx",
             "onnx2torch"):
    sys.modules[name] = None  # `import name` now raises ImportError
from edgenet.cli import main
code = main(sys.argv[1:])
leaked = [n for n in ("torch", "tensorflow", "onnx") if sys.modules.get(n) is not None]
assert not leaked, leaked
sys.exit(code)
"""


def test_run_works_with_torch_and_tensorflow_unimportable(tmp_path: Path, speciesnet_images):
    if not (DEMO_PACK / "info.json").is_file():
        pytest.skip("demo pack absent")
    images = sorted(speciesnet_images.glob("*.jpg"))[:3]
    out = tmp_path / "predictions.json"
    proc = subprocess.run(
        [sys.executable, "-c", _BLOCKED_RUN, "run", "--model", str(DEMO_PACK),
         "--filepaths", ",".join(str(p) for p in images), "--predictions-json", str(out),
         "--quiet", "--workers", "0"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    predictions = json.loads(out.read_text(encoding="utf-8"))["predictions"]
    assert sorted(p["filepath"] for p in predictions) == sorted(str(p) for p in images)
    assert any(p.get("detections") for p in predictions)
