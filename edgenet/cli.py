"""The `edgenet` command line (Typer): run, doctor, demo, to-md, bench, convert, models.

Every user-fixable problem is an `EdgenetError`: `main()` prints it as one message on stderr,
without a traceback, and exits with code 2. An interrupted run (Ctrl-C, SIGTERM) saves what
is done and exits 130. `edgenet run` imports only onnxruntime, numpy, Pillow, OpenCV and
typer: the converter sub-apps are import-light and load torch/TensorFlow inside commands.
"""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from edgenet.errors import EdgenetError, InputError

app = typer.Typer(
    name="edgenet",
    help="SpeciesNet (MegaDetector + species classifier + ensemble) on onnxruntime.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    tensorrt = "tensorrt"
    dml = "dml"
    openvino = "openvino"
    coreml = "coreml"


class Precision(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"
    bf16 = "bf16"


class OutputFormat(str, Enum):
    speciesnet = "speciesnet"
    md = "md"


def _err(message: str) -> None:
    typer.echo(f"edgenet: error: {message}", err=True)


def _info(message: str, quiet: bool = False) -> None:
    if not quiet:
        typer.echo(f"edgenet: {message}", err=True)


def _split_list(values: list[str] | None) -> list[str] | None:
    """Repeatable list flags; each value may also be comma-separated, like absl's lists.

    A value that exists as a path is kept whole, so names with commas still work.
    """
    if not values:
        return None
    out: list[str] = []
    for value in values:
        if "," in value and not os.path.exists(value):
            out.extend(part for part in value.split(",") if part)
        else:
            out.append(value)
    return out


def md_companion_path(predictions_json: Path) -> Path:
    """Where `--output-format md` keeps the SpeciesNet-format working file (resume, to-md)."""
    return predictions_json.with_name(predictions_json.stem + ".speciesnet.json")


@app.command()
def run(
    model: Annotated[
        Path | None,
        typer.Option(help="Model pack folder (default: $EDGENET_HOME/... , see `edgenet models`)."),
    ] = None,
    folders: Annotated[
        list[str] | None, typer.Option(help="Image folder(s), searched recursively (repeatable).")
    ] = None,
    filepaths: Annotated[list[str] | None, typer.Option(help="Image file(s) (repeatable).")] = None,
    filepaths_txt: Annotated[
        Path | None, typer.Option(help="Text file with one image path per line.")
    ] = None,
    folders_txt: Annotated[
        Path | None, typer.Option(help="Text file with one folder per line.")
    ] = None,
    instances_json: Annotated[
        Path | None,
        typer.Option(help='JSON {"instances": [{"filepath", "country", ...}]} to process.'),
    ] = None,
    country: Annotated[
        str | None, typer.Option(help="ISO 3166-1 alpha-3 country for all images (e.g. AUS).")
    ] = None,
    admin1_region: Annotated[
        str | None, typer.Option(help="ISO 3166-2 region for all images (e.g. CA), with --country.")
    ] = None,
    predictions_json: Annotated[
        Path | None,
        typer.Option(
            help="Output predictions file. If it exists, only images not in it (or failed) "
            "are processed. Without it, predictions are printed to stdout."
        ),
    ] = None,
    detector_only: Annotated[bool, typer.Option(help="Run only the detector.")] = False,
    classifier_only: Annotated[bool, typer.Option(help="Run only the classifier.")] = False,
    ensemble_only: Annotated[
        bool, typer.Option(help="Run only the ensemble (needs both JSON inputs below).")
    ] = False,
    detections_json: Annotated[
        Path | None, typer.Option(help="Detections from a previous --detector-only run.")
    ] = None,
    classifications_json: Annotated[
        Path | None, typer.Option(help="Classifications from a previous --classifier-only run.")
    ] = None,
    geofence: Annotated[bool, typer.Option(help="Geofence the ensemble's predictions.")] = True,
    target_species_txt: Annotated[
        Path | None, typer.Option(help="Species labels to always report logits for.")
    ] = None,
    detection_threshold_for_classification: Annotated[
        float, typer.Option(help="Minimum detection confidence to classify a detection.")
    ] = 0.1,
    max_classifications_per_image: Annotated[
        int | None, typer.Option(help="Classify at most this many detections per image (<0: all).")
    ] = None,
    max_classifications_per_detection: Annotated[
        int,
        typer.Option(
            help="Top classes reported per detection (<0: all; classifier-only keeps >= 5)."
        ),
    ] = 2,
    batch_size: Annotated[
        int | None,
        typer.Option(help="Images per detector batch, and crops per classifier batch unless "
                          "--classifier-batch-size says otherwise (default: 8 on a GPU, 1 on "
                          "the CPU, where it is faster)."),
    ] = None,
    classifier_batch_size: Annotated[
        int | None,
        typer.Option(help="Crops per classifier batch (default: --batch-size). Predictions "
                          "are the same at any size on the CPU; on a GPU with TF32 (NVIDIA's "
                          "default) scores can differ slightly with the size."),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Decode worker processes (0: decode in-process).")
    ] = None,
    device: Annotated[Device, typer.Option(help="Execution provider.")] = Device.auto,
    precision: Annotated[Precision, typer.Option(
        help="Model precision: the pack variant (fp16, int8), or bf16 = the fp32 models computed "
        "in bfloat16 by OpenVINO (onnxruntime-openvino; CPUs with AVX512_BF16 or AMX).")] = (
        Precision.fp32
    ),
    threads: Annotated[int | None, typer.Option(help="onnxruntime intra-op threads.")] = None,
    ignore_existing_predictions: Annotated[
        bool, typer.Option(help="Reprocess everything, replacing --predictions-json.")
    ] = False,
    output_format: Annotated[
        OutputFormat,
        typer.Option(help="speciesnet (default) or md (MegaDetector 1.6, for Timelapse)."),
    ] = OutputFormat.speciesnet,
    checkpoint_every_images: Annotated[
        int, typer.Option(help="Save predictions every N images (0: off).")
    ] = 0,
    checkpoint_every_seconds: Annotated[
        float, typer.Option(help="Save predictions every T seconds (0: off).")
    ] = 120.0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")] = (
        False
    ),
) -> None:
    """Run SpeciesNet on images (full pipeline, or one component)."""
    code = run_command(**locals())
    if code:
        raise typer.Exit(code)


def run_command(**opts: object) -> int:
    """`edgenet run`, validated in the reference's order; returns the exit code."""
    from edgenet.instances import INPUT_FLAGS, check_region_codes, only_one_given

    o = dict(opts)
    quiet = bool(o["quiet"])
    # 1. Components: at most one single-component mode.
    comp_flags = {
        "--classifier-only": bool(o["classifier_only"]),
        "--detector-only": bool(o["detector_only"]),
        "--ensemble-only": bool(o["ensemble_only"]),
    }
    if sum(comp_flags.values()) > 1:
        received = ", ".join(f"{k}={v}" for k, v in comp_flags.items())
        raise InputError(
            f"Expected at most one of [{', '.join(comp_flags)}] to be provided. "
            f"Received: [{received}].",
            fix="choose one component, or none for the full pipeline",
        )
    if o["ensemble_only"] and (not o["classifications_json"] or not o["detections_json"]):
        raise InputError(
            "Expected --classifications-json and --detections-json to be set when "
            "--ensemble-only is requested.",
            fix="pass the outputs of --classifier-only and --detector-only runs",
        )
    mode = (
        "classifier"
        if o["classifier_only"]
        else "detector"
        if o["detector_only"]
        else "ensemble"
        if o["ensemble_only"]
        else "full"
    )
    # 2. Region codes.
    check_region_codes(o["country"], o["admin1_region"])  # type: ignore[arg-type]
    # 3. Exactly one input.
    folders = _split_list(o["folders"])  # type: ignore[arg-type]
    filepaths = _split_list(o["filepaths"])  # type: ignore[arg-type]
    inputs = [o["instances_json"], filepaths, o["filepaths_txt"], folders, o["folders_txt"]]
    if not only_one_given(*inputs):
        received = ", ".join(f"{n}={v}" for n, v in zip(INPUT_FLAGS, inputs, strict=True))
        raise InputError(
            f"Expected exactly one of [{', '.join(INPUT_FLAGS)}] to be provided. "
            f"Received: [{received}].",
            fix="say which images to process with exactly one of these flags",
        )
    from edgenet.instances import prepare_instances

    instances = prepare_instances(
        instances_json=o["instances_json"],  # type: ignore[arg-type]
        filepaths=filepaths,
        filepaths_txt=o["filepaths_txt"],  # type: ignore[arg-type]
        folders=folders,
        folders_txt=o["folders_txt"],  # type: ignore[arg-type]
        country=o["country"],  # type: ignore[arg-type]
        admin1_region=o["admin1_region"],  # type: ignore[arg-type]
    )
    # 4. Output file and resume.
    from edgenet import predictions as preds

    output_format = OutputFormat(o["output_format"])
    final_path: Path | None = o["predictions_json"]  # type: ignore[assignment]
    work_path = final_path
    if final_path is not None and output_format is OutputFormat.md:
        work_path = md_companion_path(final_path)
    if final_path is not None and final_path.is_dir():
        raise InputError(
            "--predictions-json is a folder", path=final_path, fix="give a file name, e.g. out.json"
        )
    if work_path is not None and not work_path.parent.exists():
        raise InputError(
            "the output folder does not exist",
            path=work_path.parent,
            fix="create it first, or choose another --predictions-json",
        )
    partial: dict[str, dict] = {}
    if work_path is not None:
        if o["ignore_existing_predictions"]:
            if work_path.exists():
                _info(
                    f"ignoring existing predictions in `{work_path}`; they will be replaced",
                    quiet,
                )
        else:
            partial, _ = preds.load_partial_predictions(work_path, instances)
            source = preds.guess_predictions_source(partial)
            preds.check_no_component_mixing(mode, work_path, source)
    # 5. Numeric options.
    mcpi = o["max_classifications_per_image"]
    if mcpi is not None and int(mcpi) < 0:  # type: ignore[call-overload]
        mcpi = None
    mcpd = o["max_classifications_per_detection"]
    if mcpd is not None and int(mcpd) < 0:  # type: ignore[call-overload]
        mcpd = None
    target = o["target_species_txt"]
    if target is not None and not Path(target).exists():  # type: ignore[arg-type]
        raise InputError(
            f"Target species file '{target}' specified via --target-species-txt does not exist.",
            path=target,
            fix="check the path",
        )
    # 6. Previous component outputs (only loaded where the mode uses them).
    detections = classifications = None
    if mode in ("classifier", "ensemble") and o["detections_json"]:
        detections = preds.load_component_results(o["detections_json"], instances, "detector")  # type: ignore[arg-type]
    if mode == "ensemble" and o["classifications_json"]:
        same = Path(o["classifications_json"]).resolve() == Path(o["detections_json"]).resolve()  # type: ignore[arg-type]
        if same:
            raise InputError(
                "--classifications-json and --detections-json are the same file",
                path=o["classifications_json"],
                fix="give the --classifier-only output and the --detector-only output",
            )
        classifications = preds.load_component_results(
            o["classifications_json"], instances, "classifier"  # type: ignore[arg-type]
        )
        preds.check_matching_detections(
            classifications, detections or {}, o["classifications_json"]  # type: ignore[arg-type]
        )
    if mode in ("full", "detector") and (o["detections_json"] or o["classifications_json"]):
        _info("warning: --detections-json/--classifications-json are ignored in this mode", quiet)
    if mode == "classifier" and o["classifications_json"]:
        _info("warning: --classifications-json is ignored with --classifier-only", quiet)
    # 7. Models.
    from edgenet import pipeline

    # Defaults that depend on the device, decided before the models load (the workers start,
    # and import, meanwhile; the batch size picks the CPU memory arena).
    on_gpu = pipeline.accelerated_device(Device(o["device"]).value,
                                         Precision(o["precision"]).value)
    workers = o["workers"]
    if workers is None and mode != "ensemble":
        workers = pipeline.default_workers(on_gpu)
    batch_size = o["batch_size"]
    if batch_size is None:
        batch_size = pipeline.default_batch_size(on_gpu)
    config = pipeline.PipelineConfig(
        instances=instances,
        mode=mode,  # type: ignore[arg-type]
        predictions_json=work_path,
        model=o["model"],  # type: ignore[arg-type]
        detections=detections,
        classifications=classifications,
        partial_predictions=partial,
        batch_size=int(batch_size),  # type: ignore[call-overload]
        classifier_batch_size=(None if o["classifier_batch_size"] is None  # type: ignore[arg-type]
                               else int(o["classifier_batch_size"])),  # type: ignore[call-overload]
        workers=None if workers is None else int(workers),  # type: ignore[call-overload]
        device=Device(o["device"]).value,
        precision=Precision(o["precision"]).value,
        threads=o["threads"],  # type: ignore[arg-type]
        geofence=bool(o["geofence"]),
        target_species_txt=target,  # type: ignore[arg-type]
        detection_threshold_for_classification=float(o["detection_threshold_for_classification"]),  # type: ignore[arg-type]
        max_classifications_per_image=mcpi,  # type: ignore[arg-type]
        max_classifications_per_detection=mcpd,  # type: ignore[arg-type]
        checkpoint_every_images=int(o["checkpoint_every_images"]),  # type: ignore[call-overload]
        checkpoint_every_seconds=float(o["checkpoint_every_seconds"]),  # type: ignore[arg-type]
    )
    # Spawned decode workers start (and import) while the models load.
    executor = None
    if mode != "ensemble":
        assert config.workers is not None  # resolved above for every mode that decodes
        executor = pipeline.start_workers(config.workers)
        pipeline.prefetch_first_image(config, executor)
    try:
        comps = pipeline.load_components(config)
        _check_classifier_only(mode, comps.whole_image, o["detections_json"], quiet)  # type: ignore[arg-type]
        # 8. Run.
        from edgenet.progress import ProgressBar

        runner = pipeline.PipelineRun(config, comps, executor=executor)
        runner.config.progress = ProgressBar(len(runner.todo), enabled=not quiet)
        if partial and not quiet:
            _info(f"resuming: {len(partial)} image(s) already done in `{work_path}`")
        predictions_dict, stats = runner.run()
    finally:
        if executor is not None:
            executor.shutdown(cancel=True)

    # 9. Outputs.
    if final_path is not None and output_format is OutputFormat.md:
        from edgenet.mdformat import save_md, to_md_format

        save_md(to_md_format(predictions_dict, detector=comps.detector_name), final_path)
    if final_path is None:
        data = predictions_dict
        if output_format is OutputFormat.md:
            from edgenet.mdformat import to_md_format

            data = to_md_format(predictions_dict, detector=comps.detector_name)
        from edgenet.predictions import dumps_predictions

        sys.stdout.write(dumps_predictions(data) + "\n")
    stats_path = os.environ.get("EDGENET_STATS_JSON")
    if stats_path:  # a measurement switch: the run's own timings (benchmarks/gpu_device.py)
        import json

        Path(stats_path).write_text(json.dumps(stats, indent=1, default=str) + "\n",
                                    encoding="utf-8")
    if stats["interrupted"]:
        where = f" to `{work_path}`" if work_path else ""
        _err(
            f"interrupted: saved {stats['images_processed']} new prediction(s){where} "
            f"({stats['images_pending']} image(s) left); run the same command again to resume"
        )
        return EXIT_INTERRUPTED
    if not quiet:
        _info(
            f"{stats['images_total']} image(s): {stats['images_reused']} reused, "
            f"{stats['images_processed']} processed in {stats['wall_s']:.1f} s "
            f"({stats['images_per_s']:.2f} img/s), {stats['predictions_with_failures']} with "
            f"failures" + (f"; wrote `{final_path}`" if final_path else "")
        )
    return 0


def _check_classifier_only(
    mode: str, whole_image: bool, detections_json: Path | None, quiet: bool
) -> None:
    """The reference's classifier-only rules, once the classifier type is known."""
    if mode != "classifier":
        return
    if not whole_image and not (detections_json and Path(detections_json).exists()):
        raise InputError(
            "This classifier classifies detection crops, so it needs detections. Please "
            "provide detections via --detections-json and make sure that file exists.",
            fix="run --detector-only first and pass its output with --detections-json",
        )
    if whole_image and detections_json:
        _info(
            "warning: this classifier classifies whole images; the --detections-json "
            "given has no effect",
            quiet,
        )


@app.command("to-md")
def to_md(
    input_json: Annotated[Path, typer.Argument(help="SpeciesNet predictions JSON.")],
    output_json: Annotated[Path, typer.Argument(help="MegaDetector-format JSON to write.")],
    detector: Annotated[
        str | None, typer.Option(help="Detector name recorded in info (default md_v5a.0.0.pt).")
    ] = None,
) -> None:
    """Convert a predictions file to MegaDetector batch output format 1.6 (Timelapse)."""
    from edgenet.mdformat import convert_file

    md = convert_file(input_json, output_json, detector=detector)
    typer.echo(f"edgenet: wrote {len(md['images'])} image(s) to `{output_json}`", err=True)


@app.command()
def doctor() -> None:
    """Versions, available execution providers, and a tiny session on each of them."""
    from edgenet.doctor import run_doctor

    run_doctor(echo=typer.echo)


@app.command()
def demo(
    output: Annotated[Path, typer.Option(help="Folder for the demo's outputs.")] = Path(
        "edgenet-demo"
    ),
    images: Annotated[
        Path | None, typer.Option(help="Image folder (default: ../shared/images or generated).")
    ] = None,
    max_images: Annotated[
        int, typer.Option(help="Process at most this many images (0: all).")
    ] = 16,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Run the full pipeline with the bundled tiny SYNTHETIC pack (offline smoke test)."""
    from edgenet.demo import run_demo

    code = run_demo(
        output=output, images=images, quiet=quiet, echo=typer.echo,
        max_images=max_images if max_images > 0 else None,
    )
    if code:
        raise typer.Exit(code)


def _mount_optional() -> None:
    """Mount sub-apps that live in other modules; a missing one must not break `run`."""
    try:
        from converters.cli import convert_app, models_app
    except Exception as err:  # noqa: BLE001 - converters are optional at runtime
        note = f"(unavailable: {type(err).__name__}: {err})"

        @app.command("convert", help=f"Convert models to ONNX {note}", context_settings={
            "allow_extra_args": True, "ignore_unknown_options": True})
        def _convert_missing() -> None:
            raise EdgenetError(f"the converters are not available {note}")

        @app.command("models", help=f"Model packs {note}", context_settings={
            "allow_extra_args": True, "ignore_unknown_options": True})
        def _models_missing() -> None:
            raise EdgenetError(f"the model-pack commands are not available {note}")
    else:
        app.add_typer(convert_app, name="convert")
        app.add_typer(models_app, name="models")
    try:
        from edgenet.bench import bench_command
    except Exception:  # noqa: BLE001 - bench is optional
        return
    app.command("bench")(bench_command)


_mount_optional()


def main(argv: list[str] | None = None) -> int:
    """Console entry point: EdgenetError -> one message on stderr, exit 2, no traceback."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        rv = app(args=args, prog_name="edgenet", standalone_mode=False)
    except EdgenetError as err:
        _err(str(err))
        return getattr(err, "exit_code", EXIT_USER_ERROR) or EXIT_USER_ERROR
    except KeyboardInterrupt:
        _err("interrupted")
        return EXIT_INTERRUPTED
    except OSError as err:
        # A file edgenet needs cannot be read or written (permissions, missing, full disk):
        # user-fixable, so one message and exit 2 rather than a traceback.
        where = f"{err.filename}: " if getattr(err, "filename", None) else ""
        _err(f"{where}{err.strerror or err}\n  fix: check the path and its permissions")
        return EXIT_USER_ERROR
    except SystemExit as exit_:
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else 1
    except Exception as err:  # click usage errors and exits in non-standalone mode
        return _handle_click_exception(err)
    return rv if isinstance(rv, int) else 0


def console_main() -> None:
    """The `edgenet` executable and `python -m edgenet`: `main()`, then a quick exit.

    Once a command has returned, its outputs are written and closed; what is left is the
    interpreter's teardown, which frees every model session and module one by one: 0.07 s
    of a 10.9 s one-image run on the 2-core CPU (benchmarks/NOTES.md, entry 18). So the
    process leaves with `os._exit` after flushing stdout and stderr, unless something
    still needs the teardown: a child process, a thread other than idle pools, or a
    tracer/coverage that saves its data at exit. `main()` itself (tests, embedding) returns.
    """
    code = main()
    if _exit_is_safe():
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # closed or broken pipe: nothing more can be said
                pass
        os._exit(code)
    sys.exit(code)


def _exit_is_safe() -> bool:
    """True when leaving without the interpreter's teardown loses nothing (see above)."""
    import threading

    if sys.gettrace() is not None or sys.getprofile() is not None or "coverage" in sys.modules:
        return False
    if "multiprocessing" in sys.modules:
        import multiprocessing

        if multiprocessing.active_children():
            return False
    main_thread = threading.main_thread()
    for thread in threading.enumerate():
        if thread is main_thread or thread.daemon:
            continue
        # Idle crop pool threads (edgenet-crop_N) only wait for work that will not come.
        if not thread.name.startswith("edgenet-crop"):
            return False
    return True


def _handle_click_exception(err: Exception) -> int:
    """Render typer/click's own exceptions as standalone mode would."""
    show = getattr(err, "show", None)
    exit_code = getattr(err, "exit_code", None)
    if callable(show) and exit_code is not None:
        show()
        return int(exit_code)
    if type(err).__name__ == "Abort":
        _err("aborted")
        return 1
    if exit_code is not None:  # click.exceptions.Exit
        return int(exit_code)
    raise err


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())


__all__ = ["app", "main", "run_command"]
