"""The one pipeline: every mode, failures, ordering, batch/worker invariance, interruption."""

from __future__ import annotations

import errno
import json
import os
import signal
from pathlib import Path

import pytest

pytest.importorskip("onnx")  # tiny models are built with onnx.helper (dev dependency)

from tinypack import build_tiny_pack, write_images  # noqa: E402

from edgenet import pipeline  # noqa: E402
from edgenet import predictions as P  # noqa: E402
from edgenet.errors import OutputError  # noqa: E402
from edgenet.instances import prepare_instances  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tiny")
    pack = build_tiny_pack(root / "pack")
    whole = build_tiny_pack(root / "pack_full", pack_type="full_image")
    write_images(root / "imgs")
    instances = prepare_instances(folders=[str(root / "imgs")])
    instances.append({"filepath": str(root / "missing.jpg"), "country": "KEN"})
    instances[0] = {**instances[0], "country": "USA", "latitude": 41.46, "longitude": -73.84}
    return {"root": root, "pack": pack, "whole": whole, "instances": instances}


def _run(tiny: dict, **kw) -> tuple[dict, dict]:
    kw.setdefault("instances", tiny["instances"])
    kw.setdefault("model", tiny["pack"])
    kw.setdefault("handle_signals", False)
    return pipeline.run_pipeline(pipeline.PipelineConfig(**kw))


@pytest.fixture(scope="module")
def baseline(tiny) -> dict:
    preds, _ = _run(tiny, batch_size=1, workers=0)
    return preds


def test_full_run_shapes_failures_and_order(tiny, baseline) -> None:
    preds = baseline["predictions"]
    assert baseline["info"] == {"format_version": "20261015"}
    assert [p["filepath"] for p in preds] == [i["filepath"] for i in tiny["instances"]]
    bad = {p["filepath"].rsplit("/", 1)[-1]: p for p in preds if p.get("failures")}
    assert set(bad) == {"zero.jpg", "text.jpg", "missing.jpg"}
    for p in bad.values():
        assert p["failures"] == ["CLASSIFIER", "DETECTOR"]
        assert "detections" not in p and p["model_version"] == "tiny-test"
    assert bad["missing.jpg"]["country"] == "KEN"
    good = [p for p in preds if not p.get("failures")]
    assert good and all(p["model_version"] == "tiny-test" for p in good)
    assert preds[0]["country"] == "USA" and preds[0]["admin1_region"] == "NY"
    classified = 0
    for p in good:
        confs = [d["conf"] for d in p["detections"]]
        assert confs == sorted(confs, reverse=True)
        for det in p["detections"]:
            if det["conf"] >= 0.1:
                assert len(det["raw_classifications"]["classes"]) == 2  # mcpd default 2
                assert {"class", "score", "source"} <= set(det["processed_classification"])
                classified += 1
            else:
                assert "raw_classifications" not in det
    assert classified > 5


@pytest.mark.parametrize(("batch_size", "workers"), [(3, 0), (8, 0), (4, 1)])
def test_same_json_for_any_batch_size_and_worker_count(tiny, baseline, batch_size, workers):
    preds, stats = _run(tiny, batch_size=batch_size, workers=workers)
    assert P.dumps_predictions(preds) == P.dumps_predictions(baseline)
    assert stats["images_processed"] == len(tiny["instances"])
    assert stats["timings"]["detector"] > 0 and stats["counts"]["crops"] > 0


@pytest.mark.parametrize("batch_size", [5, 7])
def test_fixed_batch_padding_gives_the_same_json(tiny, baseline, batch_size, monkeypatch):
    # What GPU providers get (providers.SHAPE_SENSITIVE_PROVIDERS): every session run at
    # exactly batch_size rows, zero-padded. Forced here on the CPU.
    from edgenet import providers

    monkeypatch.setenv("EDGENET_FIXED_BATCH", "1")
    sizes: list[int] = []
    real = providers.run_with_iobinding

    def spy(sess, feeds, names=None):
        sizes.append(len(next(iter(feeds.values()))))
        return real(sess, feeds, names)

    monkeypatch.setattr(providers, "run_with_iobinding", spy)
    preds, stats = _run(tiny, batch_size=batch_size, workers=0)
    assert P.dumps_predictions(preds) == P.dumps_predictions(baseline)
    assert stats["counts"]["crops"] % batch_size != 0  # some batch really was padded
    assert sizes and set(sizes) == {batch_size}


@pytest.mark.parametrize(("batch_size", "crop_batch", "workers"), [(1, 5, 0), (4, 2, 0), (2, 9, 1)])
def test_classifier_batch_size_changes_batches_not_json(tiny, baseline, batch_size, crop_batch,
                                                        workers, monkeypatch):
    # --classifier-batch-size: crops per classifier batch, apart from images per detector
    # batch. Fixed-size batches forced on (what a GPU gets), so each model's run sizes show
    # which batch size it was given.
    from edgenet import providers

    monkeypatch.setenv("EDGENET_FIXED_BATCH", "1")
    sizes: dict[int, set[int]] = {}
    real = providers.run_with_iobinding

    def spy(sess, feeds, names=None):
        x = next(iter(feeds.values()))
        sizes.setdefault(x.ndim and x.shape[-1], set()).add(len(x))
        return real(sess, feeds, names)

    monkeypatch.setattr(providers, "run_with_iobinding", spy)
    preds, stats = _run(tiny, batch_size=batch_size, classifier_batch_size=crop_batch,
                        workers=workers)
    assert P.dumps_predictions(preds) == P.dumps_predictions(baseline)
    crops = stats["counts"]["crops"]
    assert stats["classifier_batch_size"] == crop_batch
    assert stats["counts"]["classifier_batches"] == -(-crops // crop_batch)
    # The classifier's input is NHWC (last axis 3 channels), the detector's NCHW.
    assert sizes[3] == ({crop_batch} if crop_batch > 1 else {1})
    assert {n for k, v in sizes.items() if k != 3 for n in v} == (
        {batch_size} if batch_size > 1 else {1})


def test_classifier_batch_size_must_be_positive(tiny) -> None:
    from edgenet.errors import InputError

    with pytest.raises(InputError, match="--classifier-batch-size"):
        _run(tiny, batch_size=2, classifier_batch_size=0)


@pytest.mark.parametrize(("batch_size", "overlap", "which"),
                         [(1, "0", "1"), (3, "1", "1"), (3, "1", "classifier"),
                          (1, "0", "both")])
def test_device_pixels_give_the_same_json(tiny, baseline, batch_size, overlap, which,
                                          monkeypatch):
    # EDGENET_DEVICE_PIXELS: the detector ("1"/"detector"), the classifier or both get uint8
    # batches and convert them in a second onnxruntime session (on a GPU, on the device);
    # with padding and stage threads forced as a GPU gets them. The JSON must not change.
    from edgenet import providers

    monkeypatch.setenv("EDGENET_DEVICE_PIXELS", which)
    monkeypatch.setenv("EDGENET_FIXED_BATCH", "1")
    monkeypatch.setenv("EDGENET_OVERLAP", overlap)
    chained: list[tuple[str, str]] = []
    real = providers.run_chain_rows

    def spy(first, second, *args):
        # the pixel graph's output: NCHW for the detector, NHWC for the classifier
        role = "detector" if first.get_outputs()[0].shape[1] == 3 else "classifier"
        chained.append((role, str(args[4].dtype)))
        return real(first, second, *args)

    monkeypatch.setattr(providers, "run_chain_rows", spy)  # both models run through it
    preds, stats = _run(tiny, batch_size=batch_size, workers=1)
    assert P.dumps_predictions(preds) == P.dumps_predictions(baseline)
    want = {"1": {"detector"}, "classifier": {"classifier"},
            "both": {"detector", "classifier"}}[which]
    assert {role for role, _ in chained} == want
    assert {dtype for _, dtype in chained} == {"uint8"}
    assert stats["counts"]["detector_batches"] > 0 and stats["counts"]["crops"] > 0


@pytest.mark.parametrize(("batch_size", "workers"), [(1, 0), (3, 1)])
def test_overlapped_stages_give_the_same_json(tiny, baseline, batch_size, workers, monkeypatch):
    # What GPU providers get (overlap.py): decode results and input tensors on one thread,
    # detector runs and crops on a second, classifier and ensemble on the caller's. Forced
    # here on the CPU.
    import threading

    monkeypatch.setenv("EDGENET_OVERLAP", "1")
    threads: dict[str, set[str]] = {"run": set(), "tensor": set()}
    real_run, real_tensor = pipeline.DetectorStage.run_batch, pipeline.DetectorStage.with_tensor

    def spy_run(self, batch, tensor):
        threads["run"].add(threading.current_thread().name)
        yield from real_run(self, batch, tensor)

    def spy_tensor(self, batch):
        threads["tensor"].add(threading.current_thread().name)
        return real_tensor(self, batch)

    monkeypatch.setattr(pipeline.DetectorStage, "run_batch", spy_run)
    monkeypatch.setattr(pipeline.DetectorStage, "with_tensor", spy_tensor)
    preds, stats = _run(tiny, batch_size=batch_size, workers=workers)
    assert P.dumps_predictions(preds) == P.dumps_predictions(baseline)
    assert stats["counts"]["crops"] > 0 and stats["timings"]["detector"] > 0
    # input tensors, detector runs and the classifier each on their own thread
    assert threads == {"tensor": {"edgenet-decode"}, "run": {"edgenet-detect"}}
    # ... and the run says how long each of them waited on the thread before and after it
    rows = stats["stage_threads"]
    assert [r["thread"] for r in rows] == ["edgenet-decode", "edgenet-detect", "main"]
    assert rows[0]["waiting_for_input_s"] is None and rows[-1]["waiting_for_output_s"] == 0.0
    for r in rows:
        assert r["seconds"] > 0
        for key in ("waiting_for_input_s", "waiting_for_output_s"):
            assert r[key] is None or 0.0 <= r[key] <= r["seconds"] + 0.05


@pytest.mark.parametrize("overlap", ["0", "1"])
def test_a_batch_whose_input_tensor_fails_fails_only_its_images(tiny, baseline, overlap,
                                                                  monkeypatch, capsys):
    monkeypatch.setenv("EDGENET_OVERLAP", overlap)
    comps = pipeline.load_components(pipeline.PipelineConfig(
        instances=[], model=tiny["pack"], batch_size=1))
    real = comps.detector.to_tensor
    calls: list[int] = []

    def flaky(letterboxed):
        calls.append(1)
        if len(calls) == 2:
            raise MemoryError("no room for this batch")
        return real(letterboxed)

    comps.detector.to_tensor = flaky
    config = pipeline.PipelineConfig(instances=tiny["instances"], model=tiny["pack"],
                                     batch_size=1, handle_signals=False)
    preds, _ = pipeline.PipelineRun(config, comps).run()
    got, want = preds["predictions"], baseline["predictions"]
    differ = [g for g, w in zip(got, want, strict=True) if g != w]
    assert len(differ) == 1 and differ[0]["failures"] == ["CLASSIFIER", "DETECTOR"]
    assert "no room for this batch" in capsys.readouterr().err


def test_overlapped_classifier_only_gives_the_same_json(tiny, tmp_path, monkeypatch) -> None:
    det_path = tmp_path / "d.json"
    _run(tiny, mode="detector", predictions_json=det_path)
    detections = P.load_component_results(det_path, tiny["instances"], "detector")
    plain, plain_stats = _run(tiny, mode="classifier", detections=detections, batch_size=2)
    monkeypatch.setenv("EDGENET_OVERLAP", "1")
    overlapped, stats = _run(tiny, mode="classifier", detections=detections, batch_size=2)
    assert P.dumps_predictions(overlapped) == P.dumps_predictions(plain)
    # one stage thread (decoding and cropping) before the caller's; none without overlap
    assert [(r["thread"], r["work"]) for r in stats["stage_threads"]] == [
        ("edgenet-decode", "decoding and cropping results"), ("main", "classifier, results")]
    assert plain_stats["stage_threads"] == []


def test_overlap_is_off_on_the_cpu(tiny, monkeypatch) -> None:
    monkeypatch.delenv("EDGENET_OVERLAP", raising=False)
    run = pipeline.PipelineRun(pipeline.PipelineConfig(
        instances=[], model=tiny["pack"], handle_signals=False))
    assert run.overlap is False and run.config.workers == 0


def _exiting_pool(self):
    import concurrent.futures as cf
    import multiprocessing

    # Every worker exits in its initializer: what a spawn that cannot re-import the main
    # module (a script fed on stdin) looks like from the pool's side.
    return cf.ProcessPoolExecutor(max_workers=self.workers, initializer=os._exit, initargs=(3,),
                                  mp_context=multiprocessing.get_context("spawn"))


def test_workers_that_cannot_start_fall_back_to_in_process(tiny, baseline, monkeypatch, capsys):
    monkeypatch.setattr(pipeline.DecodeExecutor, "_new_pool", _exiting_pool)
    executor = pipeline.DecodeExecutor(1)
    config = pipeline.PipelineConfig(instances=tiny["instances"], model=tiny["pack"],
                                     batch_size=2, workers=1, handle_signals=False)
    preds, stats = pipeline.PipelineRun(config, executor=executor).run()
    assert P.dumps_predictions(preds) == P.dumps_predictions(baseline)  # nothing lost
    assert executor.inline_fallback
    assert "decoding in-process instead" in capsys.readouterr().err


def test_a_worker_killed_by_one_job_is_retried_not_abandoned(tiny, baseline, monkeypatch):
    # The first job on one image kills its worker; the pool is rebuilt, the job retried there
    # (and succeeds), and workers are not given up on: they do start.
    real_submit = pipeline.DecodeExecutor.submit
    target = next(i["filepath"] for i in tiny["instances"] if i["filepath"].endswith(".jpg"))
    killed: list[str] = []

    def submit(self, job):
        if job.filepath == target and not killed:
            killed.append(job.filepath)
            return self._pool, self._pool.submit(os._exit, 7)
        return real_submit(self, job)

    monkeypatch.setattr(pipeline.DecodeExecutor, "submit", submit)
    executor = pipeline.DecodeExecutor(1)
    config = pipeline.PipelineConfig(instances=tiny["instances"], model=tiny["pack"],
                                     batch_size=1, workers=1, handle_signals=False)
    preds, _ = pipeline.PipelineRun(config, executor=executor).run()
    assert killed and executor.restarts >= 1 and not executor.inline_fallback
    assert P.dumps_predictions(preds) == P.dumps_predictions(baseline)

def test_decode_workers_do_not_load_onnxruntime(tmp_path: Path) -> None:
    """A decode worker letterboxes and crops; loading onnxruntime there would cost every worker
    ~20 MB of resident memory and ~30 ms of start-up for nothing (edgenet/letterbox.py)."""
    import subprocess
    import sys

    from PIL import Image

    image = tmp_path / "frame.jpg"
    Image.new("RGB", (640, 480), (90, 120, 60)).save(image)
    code = (
        "import sys\n"
        "from edgenet.decode_workers import DecodeJob, _warm_worker, run_decode_job\n"
        "_warm_worker()\n"
        f"r = run_decode_job(DecodeJob({str(image)!r}, letterbox=True,\n"
        "                              crops=[[0.1, 0.1, 0.5, 0.5]]))\n"
        "assert r.ok and r.letterboxed.shape == (960, 1280, 3), r.error\n"
        "assert r.crops.shape == (1, 480, 480, 3)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'onnxruntime'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"



@pytest.mark.parametrize(("cores", "on_gpu", "on_cpu"),
                         [(1, 1, 0), (2, 1, 0), (4, 2, 1), (10, 8, 2), (16, 8, 4), (64, 8, 4)])
def test_default_workers(cores, on_gpu, on_cpu, monkeypatch) -> None:
    from edgenet import run_defaults

    monkeypatch.setattr(run_defaults.os, "sched_getaffinity", lambda _pid: set(range(cores)),
                        raising=False)
    assert pipeline.default_workers(accelerated=True) == on_gpu
    assert pipeline.default_workers(accelerated=False) == on_cpu
    assert pipeline.accelerated_device("cpu") is False


def test_run_fixed_batches_pads_and_trims() -> None:
    import numpy as np

    from edgenet.providers import run_fixed_batches

    seen: list[int] = []

    def double(x):
        seen.append(len(x))
        return x * 2

    x = np.arange(7 * 2, dtype=np.float32).reshape(7, 2) + 1
    padded: list[np.ndarray] = []
    out = run_fixed_batches(lambda c: padded.append(c.copy()) or double(c), x, 3)
    assert seen == [3, 3, 3] and np.array_equal(out, x * 2)
    assert np.array_equal(padded[-1], [x[6], [0, 0], [0, 0]])  # the last batch, zero-padded
    seen.clear()
    one = run_fixed_batches(double, x[:2], 3)  # a single padded batch: its two real rows
    assert seen == [3] and np.array_equal(one, x[:2] * 2)
    with pytest.raises(ValueError):
        run_fixed_batches(double, x, 0)


def test_fixed_batch_only_on_shape_sensitive_providers(tiny, monkeypatch) -> None:
    monkeypatch.delenv("EDGENET_FIXED_BATCH", raising=False)
    comps = pipeline.load_components(pipeline.PipelineConfig(
        instances=[], model=tiny["pack"], batch_size=4))
    assert comps.detector.fixed_batch is None and comps.classifier.fixed_batch is None


def test_component_modes_chain(tiny, baseline, tmp_path: Path) -> None:
    det_path, cls_path, ens_path = (tmp_path / n for n in ("d.json", "c.json", "e.json"))
    dets, _ = _run(tiny, mode="detector", predictions_json=det_path)
    for p, full in zip(dets["predictions"], baseline["predictions"], strict=True):
        assert set(p) <= {"filepath", "detections", "failures"}
        if full.get("failures"):
            assert p["failures"] == ["DETECTOR"]
        else:
            assert [d["bbox"] for d in p["detections"]] == [
                d["bbox"] for d in full["detections"]
            ]
    instances = tiny["instances"]
    detections = P.load_component_results(det_path, instances, "detector")
    cls, _ = _run(tiny, mode="classifier", detections=detections, predictions_json=cls_path,
                  max_classifications_per_detection=2)
    saved = json.loads(cls_path.read_text())
    assert P.guess_predictions_source({p["filepath"]: p for p in saved["predictions"]}) == (
        "classifier")
    for p in cls["predictions"]:
        if p.get("failures"):
            assert p["failures"] == ["CLASSIFIER"]
            continue
        for det in p["detections"]:
            if "raw_classifications" in det:
                assert len(det["raw_classifications"]["classes"]) == 5  # keeps >= 5
    classifications = P.load_component_results(cls_path, instances, "classifier")
    P.check_matching_detections(classifications, detections, cls_path)
    ens, _ = _run(tiny, mode="ensemble", detections=detections,
                  classifications=classifications, predictions_json=ens_path)
    for p, c in zip(ens["predictions"], saved["predictions"], strict=True):
        assert p["model_version"] == "tiny-test"
        if c.get("failures"):
            assert "CLASSIFIER" in p["failures"]
            continue
        for det, cdet in zip(p["detections"], c["detections"], strict=True):
            assert det["bbox"] == cdet["bbox"]
            if "raw_classifications" in cdet:
                assert det["raw_classifications"]["classes"] == (
                    cdet["raw_classifications"]["classes"][:2])
                assert "processed_classification" in det


def test_whole_image_classifier(tiny) -> None:
    preds, _ = _run(tiny, model=tiny["whole"], workers=0, batch_size=2)
    for p in preds["predictions"]:
        if p.get("failures"):
            assert p["failures"] == ["CLASSIFIER", "DETECTOR"]
            continue
        first = p["detections"][0]
        assert first["category"] == "0" and first["bbox"] == [0.0, 0.0, 1.0, 1.0]
        assert "processed_classification" in first and "raw_classifications" in first
        assert all("raw_classifications" not in d for d in p["detections"][1:])


@pytest.mark.parametrize("overlap", ["0", "1"])
def test_interrupt_saves_and_resume_equals_uninterrupted(tiny, baseline, tmp_path: Path,
                                                         overlap, monkeypatch):
    import threading

    monkeypatch.setenv("EDGENET_OVERLAP", overlap)  # "1": stage threads, as on a GPU
    out = tmp_path / "p.json"
    seen = []

    def stop_after_four(fp: str, result: dict) -> None:
        seen.append(fp)
        if len(seen) == 4:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does

    preds, stats = _run(tiny, predictions_json=out, on_image_done=stop_after_four,
                        handle_signals=True, batch_size=2)
    assert stats["interrupted"] and stats["signal"] == signal.SIGINT
    saved = json.loads(out.read_text())
    done = [p for p in saved["predictions"] if not p.get("failures")]
    assert 1 <= len(done) <= 4
    pending = [p for p in saved["predictions"] if p["filepath"] not in seen]
    assert all(p["failures"] == ["CLASSIFIER", "DETECTOR", "GEOLOCATION"] for p in pending)
    assert not [t for t in threading.enumerate() if t.name.startswith("edgenet-d")]
    # Same command again: resumes, processes the rest, equals an uninterrupted run.
    _, stats2 = _run(tiny, predictions_json=out, batch_size=3)
    assert stats2["images_reused"] == len(done)
    assert out.read_text(encoding="utf-8") == P.dumps_predictions(baseline)


@pytest.mark.parametrize("overlap", ["0", "1"])
def test_keyboard_interrupt_without_handlers_still_saves(tiny, tmp_path: Path, overlap,
                                                         monkeypatch) -> None:
    monkeypatch.setenv("EDGENET_OVERLAP", overlap)
    out = tmp_path / "p.json"

    def boom(fp: str, result: dict) -> None:
        raise KeyboardInterrupt

    _, stats = _run(tiny, predictions_json=out, on_image_done=boom)
    assert stats["interrupted"] and stats["images_processed"] == 1
    assert len(json.loads(out.read_text())["predictions"]) == len(tiny["instances"])


def test_checkpoints_are_written_atomically(tiny, tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    sizes = []

    def watch(fp: str, result: dict) -> None:
        if out.exists():
            sizes.append(len(json.loads(out.read_text())["predictions"]))  # always parseable

    _, stats = _run(tiny, predictions_json=out, checkpoint_every_images=3, on_image_done=watch)
    assert stats["checkpoints"] >= 4  # 10 images / 3, plus the final save
    assert sizes and set(sizes) == {len(tiny["instances"])}
    assert [p.name for p in tmp_path.iterdir()] == ["p.json"]


def test_write_failure_stops_with_clear_error_and_keeps_old_file(tiny, tmp_path, monkeypatch):
    out = tmp_path / "p.json"
    P.save_predictions(P.make_predictions_dict([]), out)
    before = out.read_bytes()

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(P.os, "replace", full)
    with pytest.raises(OutputError, match="disk is full"):
        _run(tiny, predictions_json=out, checkpoint_every_images=2, resume=False)
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["p.json"]


def test_first_image_prefetch_is_used_once_and_only_when_it_matches(tiny, baseline,
                                                                     monkeypatch) -> None:
    """In-process decoding: the first image still to do is decoded while the models load;
    the pipeline takes that result for the same job (the JSON is unchanged), a different job
    is decoded afresh, and a resumed run prefetches the first image it has not done."""
    from edgenet import decode_workers

    calls: list[str] = []
    real = decode_workers.run_decode_job

    def counted(job):
        calls.append(job.filepath)
        return real(job)

    monkeypatch.setattr(decode_workers, "run_decode_job", counted)
    config = pipeline.PipelineConfig(instances=tiny["instances"], model=tiny["pack"],
                                     batch_size=1, workers=0, handle_signals=False)
    executor = pipeline.DecodeExecutor(0)
    pipeline.prefetch_first_image(config, executor)
    first = tiny["instances"][0]["filepath"]
    executor._early[1].result(timeout=60)
    assert calls == [first]
    preds, _ = pipeline.PipelineRun(config, executor=executor).run()
    assert preds == baseline
    assert calls.count(first) == 1  # the prefetched decode was used (crops cut from it)
    assert executor._early is None

    calls.clear()
    other = pipeline.DecodeExecutor(0)
    other.prefetch(pipeline.detector_decode_job(first, "detector", False, other))
    other._early[1].result(timeout=60)
    full_job = pipeline.detector_decode_job(first, "full", False, other)
    assert other.result(other.submit(full_job), full_job).image is not None  # not the early one
    assert calls == [first, first]

    done = {first: baseline["predictions"][0]}
    resumed = pipeline.PipelineConfig(instances=tiny["instances"], model=tiny["pack"],
                                      partial_predictions=done, workers=0)
    third = pipeline.DecodeExecutor(0)
    pipeline.prefetch_first_image(resumed, third)
    assert third._early[0].filepath == tiny["instances"][1]["filepath"]
    third._early[1].result(timeout=60)


def test_run_timed_for_bench(tiny) -> None:
    files = [i["filepath"] for i in tiny["instances"][:3]]
    report = pipeline.run_timed(model=tiny["pack"], filepaths=files, batch_size=2)
    assert len(report["predictions"]["predictions"]) == 3
    assert report["stats"]["detector"] > 0 and "wall_s" in report["stats"]
    assert report["summary"]["images_processed"] == 3


@pytest.mark.reference
def test_ensemble_only_and_discovery_equal_reference(tiny, ref_python, tmp_path: Path) -> None:
    """speciesnet 5.0.6 --ensemble_only on the same JSON inputs gives the same file.

    The reference's ensemble needs only info.json, taxonomy and geofence from a model folder,
    so it runs on the tiny pack. Covers ordering, failure merging, geolocation (USA lat/lon ->
    admin1), geofencing, roll-ups and the top-k trimming, end to end through both CLIs.
    """
    import subprocess

    from edgenet.cli import main

    instances = [
        {**i, "country": i.get("country", "KEN" if n % 2 else "USA")}
        for n, i in enumerate(tiny["instances"])
    ]
    inst = tmp_path / "instances.json"
    inst.write_text(json.dumps({"instances": instances}), encoding="utf-8")
    det, cls = tmp_path / "d.json", tmp_path / "c.json"
    assert main(["run", "--model", str(tiny["pack"]), "--instances-json", str(inst), "-q",
                 "--detector-only", "--predictions-json", str(det), "--workers", "0"]) == 0
    assert main(["run", "--model", str(tiny["pack"]), "--instances-json", str(inst), "-q",
                 "--classifier-only", "--detections-json", str(det), "--predictions-json",
                 str(cls), "--workers", "0"]) == 0
    ours, ref = tmp_path / "ours.json", tmp_path / "ref.json"
    assert main(["run", "--model", str(tiny["pack"]), "--instances-json", str(inst), "-q",
                 "--ensemble-only", "--detections-json", str(det), "--classifications-json",
                 str(cls), "--predictions-json", str(ours)]) == 0
    proc = subprocess.run(
        [str(ref_python), "-m", "speciesnet.scripts.run_model", "--model", str(tiny["pack"]),
         "--ensemble_only", "--detections_json", str(det), "--classifications_json", str(cls),
         "--instances_json", str(inst), "--predictions_json", str(ref), "--bypass_prompts",
         "--noprogress_bars"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(ours.read_text()) == json.loads(ref.read_text())
    assert ours.read_text() == ref.read_text()  # byte for byte: rounding, indent, order

    # Folder discovery: the reference's prepare_instances_dict on the same tree.
    code = (
        "import json, sys; from speciesnet.utils import prepare_instances_dict; "
        "print(json.dumps(prepare_instances_dict(folders=sys.argv[1:])['instances']))"
    )
    folders = [str(tiny["root"]), str(tiny["root"] / "imgs")]
    proc = subprocess.run([str(ref_python), "-c", code, *folders], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert prepare_instances(folders=folders) == json.loads(proc.stdout)


def test_int8_warning_only_on_x86_without_vnni() -> None:
    from edgenet.run_defaults import int8_cpu_warning

    assert "VNNI" in int8_cpu_warning(["avx2", "fma"], "x86_64")
    assert int8_cpu_warning(["avx2", "avx512f", "avx512_vnni"], "x86_64") is None
    assert int8_cpu_warning(["avx2", "avx_vnni"], "AMD64") is None
    assert int8_cpu_warning(["asimd", "asimddp"], "aarch64") is None
    assert int8_cpu_warning([], "x86_64") is None  # flags unknown: no guess


def test_int8_run_warns_on_a_cpu_without_vnni(monkeypatch, capsys) -> None:
    from edgenet import run_defaults
    from edgenet.demo import demo_pack_dir  # the bundled pack has an int8 variant

    monkeypatch.setattr(run_defaults, "cpu_flags", lambda: ["avx2", "fma"])
    monkeypatch.setattr(run_defaults.platform, "machine", lambda: "x86_64")
    pipeline.load_components(pipeline.PipelineConfig(instances=[], model=demo_pack_dir(),
                                                     precision="int8"))
    assert "no VNNI" in capsys.readouterr().err
    pipeline.load_components(pipeline.PipelineConfig(instances=[], model=demo_pack_dir()))
    assert "VNNI" not in capsys.readouterr().err  # fp32: nothing to say


@pytest.mark.parametrize(("value", "detector_on", "classifier_on", "warned"), [
    ("0", False, False, False), ("1", True, False, False), ("detector", True, False, False),
    ("classifier", False, True, False), ("Both", True, True, False), ("yes", False, False, True)])
def test_device_pixels_switch_picks_the_models(value, detector_on, classifier_on, warned,
                                               monkeypatch, capsys):
    from types import SimpleNamespace

    from edgenet.run_defaults import _set_device_pixels

    monkeypatch.setenv("EDGENET_DEVICE_PIXELS", value)
    comps = SimpleNamespace(detector=SimpleNamespace(device_pixels=True),
                            classifier=SimpleNamespace(device_pixels=True))
    _set_device_pixels(comps)
    assert (comps.detector.device_pixels, comps.classifier.device_pixels) == (
        detector_on, classifier_on)
    assert ("EDGENET_DEVICE_PIXELS" in capsys.readouterr().err) == warned


def test_gpu_warm_up_gives_the_same_json(tiny, baseline, monkeypatch) -> None:
    # EDGENET_GPU_WARMUP=1 with the provider treated as shape-sensitive (as CUDA is): the
    # classifier's session runs once on zeros in the background while the detector loads;
    # the predictions do not change.
    from edgenet import providers

    monkeypatch.setenv("EDGENET_GPU_WARMUP", "1")
    monkeypatch.setattr(providers, "is_shape_sensitive", lambda _sess: True)
    started: list[int] = []
    real = providers.warm_up_in_background

    def spy(sess, rows):
        thread = real(sess, rows)
        started.append(rows)
        return thread

    monkeypatch.setattr(providers, "warm_up_in_background", spy)  # components imports it late
    preds, _ = _run(tiny, batch_size=3, workers=1)
    assert P.dumps_predictions(preds) == P.dumps_predictions(baseline)
    assert started == [3]


def test_cuda_graph_switch_gives_the_same_json(tiny, baseline, monkeypatch) -> None:
    # EDGENET_CUDA_GRAPH=1 with batches fixed as on a GPU: the classifier's session is asked
    # for graph capture (only CUDA acts on it), takes no warm-up run even when one is asked
    # for, and runs through one pair of bound buffers; the predictions do not change.
    from edgenet import cuda_graph, providers

    monkeypatch.setenv("EDGENET_CUDA_GRAPH", "1")
    monkeypatch.setenv("EDGENET_FIXED_BATCH", "1")
    monkeypatch.setenv("EDGENET_GPU_WARMUP", "1")
    monkeypatch.setattr(providers, "is_shape_sensitive", lambda _sess: True)
    asked: list[tuple[str, bool]] = []
    real_make = providers.make_session

    def make(path, *args, cuda_graph=False, **kw):
        asked.append((Path(path).name, cuda_graph))
        return real_make(path, *args, cuda_graph=cuda_graph, **kw)

    warmed: list[int] = []
    real_warm = providers.warm_up_in_background
    monkeypatch.setattr(providers, "make_session", make)
    monkeypatch.setattr(providers, "warm_up_in_background",
                        lambda sess, rows: warmed.append(rows) or real_warm(sess, rows))
    shapes: list[tuple[int, ...]] = []
    real_run = cuda_graph.FixedBindingRunner.run

    def run(self, batch):
        shapes.append(batch.shape)
        return real_run(self, batch)

    monkeypatch.setattr(cuda_graph.FixedBindingRunner, "run", run)
    preds, stats = _run(tiny, batch_size=3, workers=1)
    assert P.dumps_predictions(preds) == P.dumps_predictions(baseline)
    assert dict(asked) == {"detector.onnx": False, "classifier.onnx": True}
    assert warmed == []
    assert shapes and len(set(shapes)) == 1 and shapes[0][0] == 3
    assert len(shapes) == stats["counts"]["classifier_batches"]


def test_cuda_graph_refused_runs_as_without_the_switch(tiny, baseline, monkeypatch,
                                                       capsys) -> None:
    # onnxruntime refuses a capture when a node of the model would run on the CPU: the
    # classifier then gets a plain session (and its warm-up, when asked for), with a warning.
    from edgenet import cuda_graph, providers
    from edgenet.errors import PackError

    monkeypatch.setenv("EDGENET_CUDA_GRAPH", "1")
    monkeypatch.setenv("EDGENET_FIXED_BATCH", "1")
    monkeypatch.setenv("EDGENET_GPU_WARMUP", "1")
    monkeypatch.setattr(providers, "is_shape_sensitive", lambda _sess: True)
    real_make = providers.make_session

    def make(path, *args, cuda_graph=False, **kw):
        if cuda_graph:
            raise PackError("onnxruntime cannot load this model: graph capture refused")
        return real_make(path, *args, **kw)

    warmed: list[int] = []
    real_warm = providers.warm_up_in_background
    monkeypatch.setattr(providers, "make_session", make)
    monkeypatch.setattr(providers, "warm_up_in_background",
                        lambda sess, rows: warmed.append(rows) or real_warm(sess, rows))
    monkeypatch.setattr(cuda_graph.FixedBindingRunner, "run", None)  # must not be reached
    preds, _ = _run(tiny, batch_size=3, workers=1)
    assert P.dumps_predictions(preds) == P.dumps_predictions(baseline)
    assert warmed == [3]
    assert "no graph capture for the classifier" in capsys.readouterr().err
