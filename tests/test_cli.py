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
    # Other detector and classifier batch sizes: the same file (and, asked for through
    # EDGENET_STATS_JSON, the run's own stats).
    other, stats_path = tmp_path / "batches.json", tmp_path / "stats.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGENET_STATS_JSON", str(stats_path))
        code, _, err = _main(capsys, *base, "--predictions-json", other, "--batch-size", "2",
                             "--classifier-batch-size", "3", "-q")
    assert code == 0, err
    assert other.read_text(encoding="utf-8") == first
    stats = json.loads(stats_path.read_text(encoding="utf-8"))
    assert stats["images_processed"] == 9 and stats["classifier_batch_size"] == 3
    assert stats["timings"]["detector"] > 0 and stats["stage_threads"] == []
    code, _, err = _main(capsys, *base, "--predictions-json", other, "--classifier-batch-size",
                         "0")
    assert code == 2 and "--classifier-batch-size must be at least 1" in err
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


def test_console_exit_flushes_a_piped_stdout(tiny) -> None:
    """`python -m edgenet` leaves through `os._exit` after a command: everything it printed
    to a pipe still arrives, and the exit code is the command's."""
    files = sorted(str(p) for p in tiny["imgs"].glob("img*.jpg"))
    args = [x for f in files for x in ("--filepaths", f)]
    proc = subprocess.run(
        [sys.executable, "-m", "edgenet", "run", "--model", str(tiny["pack"]), "-q",
         "--workers", "0", *args],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert [p["filepath"] for p in json.loads(proc.stdout)["predictions"]] == files
    bad = subprocess.run([sys.executable, "-m", "edgenet", "run", "--model", "/nonexistent"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert bad.returncode == cli.EXIT_USER_ERROR
    assert "edgenet: error:" in bad.stderr


def test_quick_exit_waits_for_children_and_busy_threads(monkeypatch) -> None:
    """The teardown is skipped only when nothing still needs it."""
    import threading

    monkeypatch.delitem(sys.modules, "coverage", raising=False)
    monkeypatch.setattr(sys, "gettrace", lambda: None)
    monkeypatch.setattr(sys, "getprofile", lambda: None)
    assert cli._exit_is_safe()
    release = threading.Event()
    busy = threading.Thread(target=release.wait, name="writer")
    busy.start()
    try:
        assert not cli._exit_is_safe()
    finally:
        release.set()
        busy.join()
    idle_pool = threading.Thread(target=lambda: None, name="edgenet-crop_0")
    monkeypatch.setattr(threading, "enumerate", lambda: [threading.main_thread(), idle_pool])
    assert cli._exit_is_safe()
    import multiprocessing

    monkeypatch.setattr(multiprocessing, "active_children", lambda: ["child"])
    assert not cli._exit_is_safe()
    monkeypatch.setitem(sys.modules, "coverage", sys)
    monkeypatch.setattr(multiprocessing, "active_children", lambda: [])
    assert not cli._exit_is_safe()


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


def test_doctor_never_crashes(capsys, monkeypatch) -> None:
    code, out, _ = _main(capsys, "doctor")
    assert code == 0
    assert "onnxruntime" in out and "check cpu: ok" in out
    assert "decode workers' results: " in out  # files in /dev/shm, or the pipe and why
    (bf16,) = [ln for ln in out.splitlines() if ln.startswith("--precision bf16: ")]
    from edgenet.providers import available_devices

    if not available_devices()["openvino"]:
        assert bf16.startswith("--precision bf16: no: ") and "OpenVINO" in bf16
    monkeypatch.setenv("EDGENET_DECODE_TRANSFER", "pipe")
    code, out, _ = _main(capsys, "doctor")
    assert code == 0 and "through the pipe (EDGENET_DECODE_TRANSFER=pipe)" in out


def test_doctor_reports_the_session_cache(capsys, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("EDGENET_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EDGENET_ORT_CACHE", "1")
    _, out, _ = _main(capsys, "doctor")
    folder = tmp_path / "home" / "ort-optimized"
    # the doctor's own checks build a throwaway model's sessions: nothing cached for it
    assert f"session cache: {folder} (empty: " in out
    assert not folder.exists()
    entry = folder / "m.0123"
    entry.mkdir(parents=True, exist_ok=True)
    (entry / "source.json").write_text("{}")
    (entry / "weights.data").write_bytes(b"\0" * 3_000_000)
    _, out, _ = _main(capsys, "doctor")
    assert f"session cache: {folder} (1 model(s), 3 MB: " in out
    monkeypatch.setenv("EDGENET_ORT_CACHE", "0")
    _, out, _ = _main(capsys, "doctor")
    assert f"session cache: {folder} (off: EDGENET_ORT_CACHE=0)" in out


def test_demo_runs_or_explains(capsys, tmp_path, monkeypatch) -> None:
    from edgenet import demo

    monkeypatch.setattr(demo, "shared_images_dir", lambda: None)  # generated images
    code, out, err = _main(capsys, "demo", "--output", tmp_path / "demo", "-q")
    if not (demo.demo_pack_dir() / "info.json").is_file():
        assert code == 2 and "demo pack is missing" in err and "Traceback" not in err
        return
    assert code == 0, err
    assert "SYNTHETIC WEIGHTS" in out
    preds = json.loads((tmp_path / "demo" / "predictions.json").read_text())["predictions"]
    # Generated scenes that the synthetic detector ignores get an explanation, not silence.
    assert ("note: the synthetic demo detector" in out) == (
        not any(p.get("detections") for p in preds))


def test_demo_flow_with_a_pack(capsys, tiny, tmp_path, monkeypatch) -> None:
    from edgenet import demo

    monkeypatch.setattr(demo, "demo_pack_dir", lambda: tiny["pack"])
    monkeypatch.setattr(demo, "shared_images_dir", lambda: None)
    code, out, err = _main(capsys, "demo", "--output", tmp_path / "demo", "-q")
    assert code == 0, err
    assert out.count("SYNTHETIC WEIGHTS") == 2
    preds = json.loads((tmp_path / "demo" / "predictions.json").read_text())["predictions"]
    assert len(preds) == 4 and all("detections" in p for p in preds)
    assert "4 image(s), 0 with failures" in out


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


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that claims width x height pixels but holds almost no data (a 'bomb')."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
                     + chunk(b"IEND", b""))


def test_odd_inputs_run_to_completion(capsys, tiny, tmp_path) -> None:
    """Issue 5: every odd input gives a prediction or a failures entry; the run completes."""
    import numpy as np
    from PIL import Image

    folder = tmp_path / "odd ünï"
    folder.mkdir()
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(rgb).convert("L").save(folder / "grey.jpg")
    Image.fromarray(rgb).convert("P").save(folder / "palette.png")
    Image.fromarray(rng.integers(0, 65535, (60, 80), dtype=np.uint16)).save(folder / "16bit.png")
    Image.fromarray(np.dstack([rgb, rgb[..., 0]]), "RGBA").save(folder / "rgba.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    Image.fromarray(rgb).save(folder / "exif rotated.jpg", exif=exif)
    Image.fromarray(rgb).save(folder / "png named.JPG", format="PNG")
    (folder / "text.jpg").write_text("hello", encoding="utf-8")
    (folder / "zero.jpg").write_bytes(b"")
    full = folder / "truncated.jpg"
    Image.fromarray(rgb).save(full)
    full.write_bytes(full.read_bytes()[: len(full.read_bytes()) // 2])
    _png_header_only(folder / "bomb.png", 30000, 30000)
    (folder / "dir.jpg").mkdir()
    (folder / "loop").symlink_to(folder, target_is_directory=True)
    names = sorted(p.name for p in folder.iterdir() if p.name != "loop")
    inst = tmp_path / "instances.json"
    instances = [{"filepath": (folder / n).as_posix()} for n in names]
    instances += [{"filepath": (folder / "absent.jpg").as_posix()},
                  {"filepath": "http://127.0.0.1:9/unreachable.jpg"}]
    inst.write_text(json.dumps({"instances": instances}), encoding="utf-8")
    out = tmp_path / "p.json"
    code, _, err = _main(capsys, "run", "--model", tiny["pack"], "--instances-json", inst,
                         "--predictions-json", out, "-q", "--workers", "1")
    assert code == 0, err
    saved = json.loads(out.read_text())["predictions"]
    preds = {p["filepath"].rsplit("/", 1)[-1]: p for p in saved}
    assert len(preds) == len(instances)
    must_fail = {"text.jpg", "zero.jpg", "bomb.png", "dir.jpg", "absent.jpg", "unreachable.jpg"}
    for name, pred in preds.items():
        if name in must_fail:
            assert pred.get("failures") == ["CLASSIFIER", "DETECTOR"], name
        else:
            assert "detections" in pred, (name, pred.get("failures"))
    # The same folder through --folders: the loop is not followed, the run completes.
    code, _, err = _main(capsys, "run", "--model", tiny["pack"], "--folders", folder,
                         "--predictions-json", tmp_path / "f.json", "-q", "--detector-only")
    assert code == 0, err
    found = json.loads((tmp_path / "f.json").read_text())["predictions"]
    assert sorted(p["filepath"].rsplit("/", 1)[-1] for p in found) == sorted(
        n for n in names if n.rsplit(".", 1)[-1] in ("jpg", "JPG", "png"))


def test_broken_pack_and_unavailable_device_exit_2(capsys, tiny, tmp_path) -> None:
    import shutil

    pack = tmp_path / "pack"
    shutil.copytree(tiny["pack"], pack)
    labels = pack / "labels.txt"
    labels.write_text("\n".join(labels.read_text().splitlines()[:-1]) + "\n")
    code, _, err = _main(capsys, "run", "--model", pack, "--filepaths", "a.jpg", "-q")
    assert code == 2 and "labels.txt" in err and "Traceback" not in err
    shutil.copy(tiny["pack"] / "labels.txt", labels)
    onnx_file = pack / "detector.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes()[:100])
    code, _, err = _main(capsys, "run", "--model", pack, "--filepaths", "a.jpg", "-q")
    assert code == 2 and "detector.onnx" in err and "Traceback" not in err
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        code, _, err = _main(capsys, "run", "--model", tiny["pack"], "--filepaths", "a.jpg",
                             "--device", "cuda", "-q")
        assert code == 2 and "cuda" in err.lower() and "Traceback" not in err
