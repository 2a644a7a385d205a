"""The `edgenet` command: help listing, exit codes and messages, run/resume/md, no heavy imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgenet import cli

REPO = Path(__file__).resolve().parents[1]


def _main(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_commands() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "edgenet", "--help"], capture_output=True, text=True, cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0
    for command in ("run", "doctor", "demo", "to-md", "convert", "models"):
        assert f" {command} " in proc.stdout, command


def test_run_help_lists_reference_flags(capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # rich would elide long option names
    monkeypatch.setenv("TERMINAL_WIDTH", "250")
    code, out, _ = _main(capsys, "run", "--help")
    assert code == 0
    for flag in (
        "--folders", "--filepaths", "--filepaths-txt", "--folders-txt", "--instances-json",
        "--country", "--admin1-region", "--predictions-json", "--detector-only",
        "--classifier-only", "--ensemble-only", "--detections-json", "--classifications-json",
        "--geofence", "--no-geofence", "--target-species-txt",
        "--detection-threshold-for-classification", "--max-classifications-per-image",
        "--max-classifications-per-detection", "--batch-size", "--workers", "--device",
        "--precision", "--threads", "--ignore-existing-predictions", "--output-format",
        "--quiet", "--checkpoint-every-images", "--checkpoint-every-seconds", "--model",
    ):
        assert flag in out, flag


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--detector-only", "--classifier-only", "--filepaths", "a.jpg"],
         "Expected at most one of [--classifier-only, --detector-only, --ensemble-only]"),
        (["--ensemble-only", "--filepaths", "a.jpg"],
         "Expected --classifications-json and --detections-json to be set"),
        (["--country", "US", "--filepaths", "a.jpg"], "Invalid three-letter country code US"),
        (["--country", "USA", "--admin1-region", "CAL", "--filepaths", "a.jpg"],
         "Invalid two-letter region code CAL"),
        (["--country", "ZZZ", "--filepaths", "a.jpg"], "unknown country code 'ZZZ'"),
        ([], "Expected exactly one of [--instances-json, --filepaths"),
        (["--filepaths", "a.jpg", "--folders", "x"], "Expected exactly one of"),
        (["--folders", "/definitely/not/here"], "folder not found"),
    ],
)
def test_configuration_errors_exit_2_without_traceback(capsys, args, message) -> None:
    code, out, err = _main(capsys, "run", *args)
    assert code == 2
    assert message in err
    assert "Traceback" not in err and err.startswith("edgenet: error:")


def test_missing_pack_says_how_to_get_one(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("EDGENET_HOME", str(tmp_path / "home"))
    code, _, err = _main(capsys, "run", "--filepaths", "a.jpg", "-q")
    assert code == 2
    assert "edgenet models pull" in err and "Traceback" not in err


def test_target_species_file_must_exist(capsys, tmp_path) -> None:
    code, _, err = _main(capsys, "run", "--filepaths", "a.jpg", "--target-species-txt",
                         tmp_path / "t.txt", "--predictions-json", tmp_path / "p.json")
    assert code == 2 and "Target species file" in err


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    pytest.importorskip("onnx")
    from tinypack import build_tiny_pack, write_images

    root = tmp_path_factory.mktemp("cli")
    pack = build_tiny_pack(root / "pack")
    write_images(root / "imgs")
    return {"root": root, "pack": pack, "imgs": root / "imgs"}


def test_run_resume_mixing_and_md(capsys, tiny, tmp_path) -> None:
    out = tmp_path / "p.json"
    base = ["run", "--model", tiny["pack"], "--folders", tiny["imgs"], "--workers", "0"]
    code, _, err = _main(capsys, *base, "--predictions-json", out)
    assert code == 0, err
    first = out.read_text(encoding="utf-8")
    preds = json.loads(first)["predictions"]
    assert len(preds) == 9 and sum(1 for p in preds if p.get("failures")) == 2
    # Resume: everything done but the two failures, which are retried (and fail again).
    code, _, err = _main(capsys, *base, "--predictions-json", out)
    assert code == 0 and "resuming: 7 image(s)" in err
    assert out.read_text(encoding="utf-8") == first
    # A single-component run refuses to overwrite ensemble output.
    code, _, err = _main(capsys, *base, "--predictions-json", out, "--detector-only")
    assert code == 2 and "The detector risks overwriting" in err
    # An unrelated image set is refused.
    code, _, err = _main(capsys, "run", "--model", tiny["pack"], "--filepaths", "other.jpg",
                         "--predictions-json", out)
    assert code == 2 and "missing from the set of instances" in err
    # --ignore-existing-predictions reprocesses from scratch.
    code, _, err = _main(capsys, *base, "--predictions-json", out, "--detector-only",
                         "--ignore-existing-predictions", "-q")
    assert code == 0 and "raw" not in out.read_text(encoding="utf-8")
    # MegaDetector format: the MD file plus the SpeciesNet working file beside it.
    md = tmp_path / "md.json"
    code, _, err = _main(capsys, *base, "--predictions-json", md, "--output-format", "md", "-q")
    assert code == 0, err
    data = json.loads(md.read_text())
    assert data["info"]["format_version"] == "1.6" and len(data["images"]) == 9
    assert (tmp_path / "md.speciesnet.json").is_file()
    # to-md on the SpeciesNet file gives the same images.
    md2 = tmp_path / "md2.json"
    code, _, _ = _main(capsys, "to-md", tmp_path / "md.speciesnet.json", md2)
    assert code == 0
    assert json.loads(md2.read_text())["images"] == data["images"]


def test_classifier_only_needs_detections(capsys, tiny, tmp_path) -> None:
    code, _, err = _main(capsys, "run", "--model", tiny["pack"], "--folders", tiny["imgs"],
                         "--classifier-only", "--predictions-json", tmp_path / "c.json")
    assert code == 2
    assert "This classifier classifies detection crops, so it needs detections" in err


def test_stdout_without_predictions_json(capsys, tiny) -> None:
    files = sorted(str(p) for p in tiny["imgs"].glob("img 0[01].jpg"))
    code, out, _ = _main(capsys, "run", "--model", tiny["pack"], "--detector-only", "-q",
                         *[x for f in files for x in ("--filepaths", f)])
    assert code == 0
    assert [p["filepath"] for p in json.loads(out)["predictions"]] == files


def test_run_never_imports_training_frameworks(tiny, tmp_path) -> None:
    code = (
        "import sys; from edgenet.cli import main; "
        f"rc = main(['run', '--model', {str(tiny['pack'])!r}, '--filepaths', "
        f"{str(tiny['imgs'] / 'img 00.jpg')!r}, '--predictions-json', "
        f"{str(tmp_path / 'p.json')!r}, '-q', '--workers', '0']); "
        "bad = [m for m in ('torch', 'tensorflow', 'onnx', 'tf2onnx', 'keras') "
        "if m in sys.modules]; print('BAD', bad); sys.exit(rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "BAD []" in proc.stdout


def test_sigterm_saves_and_exits_130(tiny, tmp_path) -> None:
    """A real `edgenet run` process killed with SIGTERM saves what is done and exits 130."""
    import signal
    import time

    out = tmp_path / "p.json"
    files = [str(p) for p in sorted(tiny["imgs"].glob("img*.jpg"))]
    txt = tmp_path / "files.txt"
    # Many copies of the same images under distinct names make the run long enough to kill.
    names = []
    for i in range(60):
        for f in files[:3]:
            link = tmp_path / f"c{i:03d}_{Path(f).name}"
            link.symlink_to(f)
            names.append(str(link))
    txt.write_text("\n".join(names) + "\n", encoding="utf-8")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgenet", "run", "--model", str(tiny["pack"]),
         "--filepaths-txt", str(txt), "--predictions-json", str(out), "--workers", "0",
         "--batch-size", "1", "--checkpoint-every-images", "1"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not out.exists():
        time.sleep(0.1)  # the first checkpoint appears once an image is done
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "run the same command again" in err
    saved = json.loads(out.read_text())["predictions"]
    assert len(saved) == len(names)
    assert any(not p.get("failures") for p in saved)


def test_doctor_never_crashes(capsys) -> None:
    code, out, _ = _main(capsys, "doctor")
    assert code == 0
    assert "onnxruntime" in out and "check cpu: ok" in out


def test_demo_runs_or_explains(capsys, tmp_path) -> None:
    from edgenet.demo import demo_pack_dir

    code, out, err = _main(capsys, "demo", "--output", tmp_path / "demo", "-q",
                           "--images", tmp_path / "gen")
    if not (demo_pack_dir() / "info.json").is_file():
        assert code == 2 and "demo pack is missing" in err
        return
    assert code == 0, err
    assert "SYNTHETIC WEIGHTS" in out
    assert (tmp_path / "demo" / "predictions.json").is_file()


def kill_resume_loop(pack: Path, work: Path, images: int = 200, kills: int = 20,
                     seed: int = 0, log=print) -> tuple[int, int, bool]:
    """`kill -9` an `edgenet run` at random moments, rerun it each time, then finish.

    Returns (images, unique predictions, equal to an uninterrupted run). Images are distinct
    small JPEGs so every prediction is different.
    """
    import random
    import signal
    import time

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder = work / "imgs"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(images):
        arr = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        arr[:24] = rng.integers(0, 256, 3, dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"im_{i:04d}.jpg")
    base = [sys.executable, "-m", "edgenet", "run", "--model", str(pack), "--folders",
            str(folder), "--workers", "0", "--batch-size", "4", "-q",
            "--max-classifications-per-image", "1"]
    reference = work / "uninterrupted.json"
    subprocess.run([*base, "--predictions-json", str(reference)], check=True, cwd=REPO,
                   timeout=1800)
    out = work / "killed.json"
    pick = random.Random(seed)
    done_kills = 0
    while done_kills < kills:
        proc = subprocess.Popen([*base, "--predictions-json", str(out),
                                 "--checkpoint-every-images", str(pick.randint(1, 7))],
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(pick.uniform(0.5, 4.0))
        if proc.poll() is not None:
            break  # finished before we could kill it
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done_kills += 1
        if out.exists():
            json.loads(out.read_text(encoding="utf-8"))  # never a torn file
    subprocess.run([*base, "--predictions-json", str(out)], check=True, cwd=REPO, timeout=1800)
    final = json.loads(out.read_text(encoding="utf-8"))["predictions"]
    unique = len({p["filepath"] for p in final})
    equal = out.read_bytes() == reference.read_bytes()
    log(f"{images} images, {unique} unique predictions, "
        f"{'equal' if equal else 'NOT equal'} to the uninterrupted run ({done_kills} kills)")
    return images, unique, equal


@pytest.mark.slow
def test_kill9_resume_loop(tiny, tmp_path) -> None:
    """Issue 5: 20 random kill -9s, then the same command: every image once, same file."""
    n, unique, equal = kill_resume_loop(tiny["pack"], tmp_path, images=200, kills=20)
    assert unique == n and equal


if __name__ == "__main__":  # python tests/test_cli.py PACK_DIR [IMAGES] [KILLS]
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        args = sys.argv[1:]
        n, unique, equal = kill_resume_loop(
            Path(args[0]), Path(tmp), images=int(args[1]) if len(args) > 1 else 200,
            kills=int(args[2]) if len(args) > 2 else 20,
        )
    sys.exit(0 if unique == n and equal else 1)
