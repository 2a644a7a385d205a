"""Typer sub-apps `edgenet convert ...` and `edgenet models ...` (mounted by edgenet/cli.py).

Import-light on purpose: importing this module pulls in typer and edgenet.errors only; torch,
TensorFlow and onnx are imported inside the commands that need them, so `edgenet run` (which
imports the main app, and through it these sub-apps) never loads a training framework.
Every user-fixable problem is an EdgenetError: printed on stderr without a traceback, exit 2.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from edgenet.errors import EdgenetError

convert_app = typer.Typer(
    name="convert", no_args_is_help=True,
    help="Convert SpeciesNet / MegaDetector models to ONNX (needs the `convert` extra).",
)
models_app = typer.Typer(
    name="models", no_args_is_help=True,
    help="Synthesise, download and list model packs.",
)

F = TypeVar("F", bound=Callable[..., Any])


def _user_errors(fn: F) -> F:
    """Map EdgenetError (and a missing convert extra) to exit code 2 with a one-block message."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EdgenetError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(getattr(exc, "exit_code", 2)) from None
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.split(".")[0] in {
                "torch", "tensorflow", "onnx", "tf2onnx", "onnx2torch", "keras", "tf_keras",
                "torchvision", "onnxscript",
            }:
                typer.echo(
                    f"error: this command needs {exc.name}, which is not installed\n"
                    "  fix: pip install 'edgenet[convert]'", err=True)
                raise typer.Exit(2) from None
            raise

    return wrapper  # type: ignore[return-value]


def _log(msg: str) -> None:
    typer.echo(msg, err=True)


def _variants(value: str) -> tuple[str, ...]:
    if value.strip().lower() in ("", "none", "fp32"):
        return ()
    out = tuple(v.strip().lower() for v in value.split(",") if v.strip())
    bad = [v for v in out if v not in ("fp16", "int8")]
    if bad:
        raise EdgenetError(f"unknown variant(s): {', '.join(bad)}",
                           fix="--variants takes a comma list of fp16, int8 (or none)")
    return out


ImagesOpt = Annotated[
    list[Path] | None,
    typer.Option("--images", help="Image files/folders for the fidelity checks and int8 "
                 "calibration (default: ../shared/images when present). Repeatable."),
]
OpsetOpt = Annotated[int, typer.Option(help="ONNX opset (tf2onnx supports up to 18).")]


# --------------------------------------------------------------------------------------------
# edgenet convert ...


@convert_app.command("pack")
@_user_errors
def convert_pack_cmd(
    src: Annotated[Path, typer.Argument(help="SpeciesNet model folder (with info.json).")],
    dst: Annotated[Path, typer.Argument(help="Pack folder to create.")],
    variants: Annotated[str, typer.Option(help="Extra precisions: fp16,int8 or none.")]
    = "fp16,int8",
    opset: OpsetOpt = 17,
    images: ImagesOpt = None,
    max_images: Annotated[int, typer.Option(help="Images used for checks/calibration.")] = 6,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing DST.")] = False,
) -> None:
    """Turn a SpeciesNet model folder into an edgenet pack (ONNX + fidelity report)."""
    from converters.pack import convert_pack
    from converters.pull import stderr_progress

    out = convert_pack(src, dst, variants=_variants(variants), opset=opset, overwrite=force,
                       check_images=images, max_images=max_images, log=_log,
                       progress=stderr_progress())
    _summary(out)


@convert_app.command("detector")
@_user_errors
def convert_detector_cmd(
    src: Annotated[Path, typer.Argument(help="MegaDetector v5 checkpoint (.pt).")],
    dst: Annotated[Path, typer.Argument(help="ONNX file to write.")],
    opset: OpsetOpt = 17,
    images: ImagesOpt = None,
) -> None:
    """Convert one MegaDetector checkpoint; prints its fidelity report."""
    from converters.detector import convert_detector
    from converters.fidelity import find_images

    if not src.is_file():
        raise EdgenetError("checkpoint not found", path=src, fix="check the path")
    report = convert_detector(src, dst, opset=opset,
                              check_images=find_images(images) if images else None)
    typer.echo(json.dumps(_brief(report), indent=1, default=str))


@convert_app.command("classifier")
@_user_errors
def convert_classifier_cmd(
    src: Annotated[Path, typer.Argument(help="SpeciesNet classifier: .pt, .keras, .h5 or a "
                                        "SavedModel folder.")],
    dst: Annotated[Path, typer.Argument(help="ONNX file to write.")],
    opset: OpsetOpt = 17,
    images: ImagesOpt = None,
) -> None:
    """Convert one SpeciesNet classifier; prints its fidelity report."""
    from converters.fidelity import find_images
    from converters.pack import convert_classifier

    report = convert_classifier(src, dst, opset=opset,
                                check_images=find_images(images) if images else None)
    typer.echo(json.dumps(_brief(report), indent=1, default=str))


def _max_key(tree: Any, key: str) -> float | None:
    """Largest numeric KEY anywhere in a nested report (its layout varies by builder)."""
    found: list[float] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == key and isinstance(v, int | float):
                    found.append(float(v))
                else:
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(tree)
    return max(found) if found else None


def _brief(report: dict[str, Any]) -> dict[str, Any]:
    """The report without bulky per-image lists, for the terminal."""
    return {k: v for k, v in report.items() if not (isinstance(v, list) and len(v) > 20)}


def _summary(pack: Path) -> None:
    info = json.loads((pack / "info.json").read_text(encoding="utf-8"))
    edge = info.get("edgenet", {})
    fid = json.loads((pack / edge.get("fidelity", "fidelity.json")).read_text(encoding="utf-8"))
    typer.echo(f"pack: {pack}")
    typer.echo(f"  version {info['version']} ({info['type']}), {edge.get('num_labels')} labels,"
               f" synthetic: {edge.get('synthetic')}")
    for variant in edge.get("variants", {}):
        d = fid["detector"].get(variant, {}).get("detections_used", {})
        c = fid["classifier"].get(variant, {})
        dv = fid["detector"].get(variant, {}).get("verdict", "?")
        typer.echo(f"  {variant}: detector recall {d.get('recall', float('nan')):.3f} "
                   f"precision {d.get('precision', float('nan')):.3f} at conf >= 0.1 ({dv}); "
                   f"classifier top-1 {c.get('top1_agreement', float('nan')):.3f} "
                   f"top-5 overlap {c.get('top5_overlap', float('nan')):.3f} "
                   f"({c.get('verdict', '?')})")


# --------------------------------------------------------------------------------------------
# edgenet models ...


@models_app.command("synth")
@_user_errors
def models_synth_cmd(
    dst: Annotated[Path, typer.Argument(help="Folder to write the SpeciesNet model folder to.")],
    size: Annotated[str, typer.Option(help="tiny (seconds, for tests) or full (real sizes).")]
    = "tiny",
    seed: int = 0,
    labels: Annotated[str, typer.Option(help="auto (real files from ../shared when present), "
                                        "real or generated.")] = "auto",
    num_labels: Annotated[int | None, typer.Option(help="Generated labels only (default "
                                                   "2498).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty DST.")] = False,
) -> None:
    """Write a synthetic SpeciesNet model folder in the real formats (speciesnet loads it)."""
    from converters.synth import synth_source_folder

    if size not in ("tiny", "full"):
        raise EdgenetError(f"unknown size {size!r}", fix="use --size tiny or --size full")
    out = synth_source_folder(dst, size=size, seed=seed, labels=labels, num_labels=num_labels,
                              overwrite=force, log=_log)
    typer.echo(f"synthetic SpeciesNet folder: {out}")
    try:
        report = json.loads((out / "synth_report.json").read_text(encoding="utf-8"))
        det, cls = report.get("detector", {}), report.get("classifier", {})
        typer.echo(f"  labels: {report.get('labels')}")
        typer.echo(f"  detector: {det.get('parameters')} parameters, boxes per image at conf "
                   f">= 0.1: {det.get('boxes_per_image_at_0.1')}")
        drift = _max_key(cls.get("drift_fp32_vs_fp64", {}), "max_rel_diff")
        typer.echo(f"  classifier: {cls.get('params')} parameters, fp32 vs fp64 max relative "
                   f"logit drift {drift}")
    except (OSError, ValueError, AttributeError):
        pass


@models_app.command("pull")
@_user_errors
def models_pull_cmd(
    name: Annotated[str, typer.Argument(help="A name from `edgenet models list`, or "
                                        "kaggle:google/speciesnet/<framework>/<variation>/<n>.")],
    default: Annotated[bool, typer.Option("--default", help="Make it the default pack.")]
    = False,
    force: Annotated[bool, typer.Option("--force", help="Rebuild an installed pack.")] = False,
    variants: Annotated[str, typer.Option(help="Extra precisions: fp16,int8 or none.")]
    = "fp16,int8",
    retries: Annotated[int, typer.Option(help="Resume attempts after an interrupted "
                                         "transfer.")] = 3,
) -> None:
    """Download real weights (resumable, checksummed) and convert them into a pack."""
    from converters.pull import pull, stderr_progress

    out = pull(name, set_default=default, force=force, retries=retries,
               variants=_variants(variants), progress=stderr_progress())
    if out.is_dir():
        _summary(out)
    else:
        typer.echo(f"downloaded: {out}")


@models_app.command("list")
@_user_errors
def models_list_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Known model names and installed packs."""
    from converters.pull import list_models

    data = list_models()
    if as_json:
        typer.echo(json.dumps(data, indent=1))
        return
    typer.echo(f"EDGENET_HOME: {data['home']}")
    typer.echo("known models (edgenet models pull NAME):")
    for m in data["known"]:
        mark = "*" if m["installed"] else " "
        typer.echo(f" {mark} {m['name']:<22} {m['kind']:<10} {m['description']}")
    typer.echo("installed packs:")
    if not data["installed"]:
        typer.echo("   (none)")
    for p in data["installed"]:
        flags = ", ".join(filter(None, [
            "default" if p["default"] else "",
            "synthetic" if p["synthetic"] else "",
            "variants: " + "/".join(p["variants"]) if p["variants"] else "",
        ]))
        typer.echo(f"   {p['name']:<24} {p['version'] or '?':<26} {flags}")


def main() -> None:  # pragma: no cover - convenience for `python -m converters.cli`
    app = typer.Typer(no_args_is_help=True)
    app.add_typer(convert_app)
    app.add_typer(models_app)
    app(sys.argv[1:])


if __name__ == "__main__":  # pragma: no cover
    main()
