"""Model packs: a folder with SpeciesNet's `info.json` keys and ONNX models, validated up front.

Layout (`info.json`, paths relative to the folder, as speciesnet's `ModelInfo` reads them)::

    {"version": "4.0.2a", "type": "always_crop" | "full_image",
     "classifier": "classifier.onnx", "classifier_labels": "labels.txt",
     "detector": "detector.onnx", "taxonomy": "taxonomy_release.txt",
     "geofence": "geofence_release.json",
     "edgenet": {"format": 1, "precision": "fp32", "synthetic": false,
                 "sha256": {"classifier.onnx": "<hex>", ...},
                 "variants": {"fp16": {"detector": "...", "classifier": "..."}, "int8": {...}},
                 "fidelity": "fidelity.json"}}

Why validate everything before any work: a run over a field drive can take hours; a pack with a
truncated download, a labels file from another model or a classifier exported with the wrong
layout must be refused at once, naming the file, the problem and the fix (`PackError`, exit 2).

Loading is cheap and device-independent: model input/output shapes are read straight from the
ONNX protobuf header fields (a ~100-line reader over an mmap, no `onnx` package, no session),
so the one onnxruntime session per model is created later, by the stage that uses it. A file
whose protobuf framing runs past its end (a truncated download) is caught by that reader even
when no checksum is listed.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from edgenet.errors import PackError

__all__ = [
    "FieldSpan",
    "FramingError",
    "ModelPack",
    "OnnxIO",
    "PackFiles",
    "TensorInfo",
    "default_pack_dir",
    "edgenet_home",
    "field_spans",
    "read_labels",
    "read_onnx_io",
]

PACK_TYPES = ("always_crop", "full_image")
REQUIRED_KEYS = ("version", "type", "classifier", "classifier_labels", "detector", "taxonomy",
                 "geofence")
CLASSIFIER_INPUT = (480, 480, 3)
GET_A_PACK = (
    "get a pack with `edgenet models pull speciesnet-v4.0.2a` (real weights, needs internet), "
    "or build one with `edgenet models synth SRC && edgenet convert pack SRC DST`, "
    "or run `edgenet demo` for a synthetic pack"
)
# ONNX TensorProto.DataType values we name in messages.
ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 10: "float16",
               11: "float64", 16: "bfloat16"}


def edgenet_home() -> Path:
    """`$EDGENET_HOME`, else `~/.cache/edgenet` (where packs and caches live)."""
    home = os.environ.get("EDGENET_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "edgenet"


def default_pack_dir() -> Path:
    """The pack used when `--model` is absent: `$EDGENET_HOME/packs/default`."""
    return edgenet_home() / "packs" / "default"


# --------------------------------------------------------------------------------------------
# Minimal ONNX protobuf reader (graph inputs/outputs only)
# --------------------------------------------------------------------------------------------


class TensorInfo(NamedTuple):
    """A graph input or output: name, element type (ONNX enum), dims (int, str symbol, None)."""

    name: str
    elem_type: int
    dims: tuple[int | str | None, ...] | None

    @property
    def dtype(self) -> str:
        return ONNX_DTYPES.get(self.elem_type, f"onnx-type-{self.elem_type}")


class OnnxIO(NamedTuple):
    """Real (non-initializer) graph inputs and the graph outputs of an ONNX model."""

    inputs: list[TensorInfo]
    outputs: list[TensorInfo]


class FramingError(Exception):
    """Protobuf framing that runs past the end of its message (a truncated or corrupt file)."""


def _varint(buf: Any, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise FramingError
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 70:
            raise FramingError


class FieldSpan(NamedTuple):
    """One protobuf field of a message: where its bytes lie and what it holds."""

    num: int
    wire: int
    start: int  # first byte of the field's key
    value: Any  # the varint (wire 0), (payload start, payload stop) (wire 2), else None
    end: int  # one past the field's last byte


def field_spans(buf: Any, pos: int, end: int):
    """Yield a FieldSpan for each field of the message in buf[pos:end] (raises on bad framing)."""
    while pos < end:
        start = pos
        key, pos = _varint(buf, pos, end)
        num, wire = key >> 3, key & 7
        val: Any = None
        if wire == 0:
            val, pos = _varint(buf, pos, end)
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise FramingError
            val = (pos, pos + length)
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise FramingError
        if pos > end:
            raise FramingError
        yield FieldSpan(num, wire, start, val, pos)


def _fields(buf: Any, pos: int, end: int):
    """Yield (field_number, wire_type, value_or_(start, stop)) for a message in buf[pos:end]."""
    for f in field_spans(buf, pos, end):
        if f.wire in (0, 2):
            yield f.num, f.wire, f.value


def _value_info(buf: Any, start: int, stop: int) -> TensorInfo:
    name, elem, dims = "", 0, None
    for num, wire, val in _fields(buf, start, stop):
        if num == 1 and wire == 2:
            name = bytes(buf[val[0]:val[1]]).decode("utf-8", "replace")
        elif num == 2 and wire == 2:  # TypeProto
            for tnum, twire, tval in _fields(buf, *val):
                if tnum == 1 and twire == 2:  # tensor_type
                    for snum, swire, sval in _fields(buf, *tval):
                        if snum == 1 and swire == 0:
                            elem = sval
                        elif snum == 2 and swire == 2:  # TensorShapeProto
                            dims_list: list[int | str | None] = []
                            for dnum, dwire, dval in _fields(buf, *sval):
                                if dnum == 1 and dwire == 2:
                                    dim: int | str | None = None
                                    for xnum, xwire, xval in _fields(buf, *dval):
                                        if xnum == 1 and xwire == 0:
                                            dim = xval - (1 << 64) if xval >= 1 << 63 else xval
                                        elif xnum == 2 and xwire == 2:
                                            dim = bytes(buf[xval[0]:xval[1]]).decode(
                                                "utf-8", "replace")
                                    dims_list.append(dim)
                            dims = tuple(dims_list)
    return TensorInfo(name, elem, dims)


def read_onnx_io(path: str | os.PathLike[str]) -> OnnxIO:
    """Graph inputs/outputs of an ONNX file without loading weights (mmap, skip by length).

    Raises PackError for an empty, truncated or non-ONNX file.
    """
    p = Path(path)
    try:
        size = p.stat().st_size
        if size == 0:
            raise PackError("ONNX file is empty (0 bytes)", path=p,
                            fix="re-download or re-convert the model pack")
        with open(p, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            graph = None
            for num, wire, val in _fields(buf, 0, size):
                if num == 7 and wire == 2:
                    graph = val
            if graph is None:
                raise PackError("not an ONNX model (no graph found)", path=p,
                                fix="point the pack at a .onnx file written by edgenet convert")
            inputs: list[TensorInfo] = []
            outputs: list[TensorInfo] = []
            initializers: set[str] = set()
            for num, wire, val in _fields(buf, *graph):
                if wire != 2:
                    continue
                if num == 11:
                    inputs.append(_value_info(buf, *val))
                elif num == 12:
                    outputs.append(_value_info(buf, *val))
                elif num == 5:  # initializer: only its name (field 8)
                    for inum, iwire, ival in _fields(buf, *val):
                        if inum == 8 and iwire == 2:
                            initializers.add(bytes(buf[ival[0]:ival[1]]).decode("utf-8",
                                                                                  "replace"))
    except FramingError as e:
        raise PackError("ONNX file is truncated or corrupt (protobuf framing runs past the end)",
                        path=p, fix="re-download or re-convert the model pack") from e
    except PermissionError as e:
        raise PackError("permission denied reading the ONNX file", path=p,
                        fix="make the pack files readable") from e
    except (OSError, ValueError) as e:
        raise PackError(f"cannot read ONNX file ({e})", path=p,
                        fix="re-download or re-convert the model pack") from e
    real_inputs = [t for t in inputs if t.name not in initializers]
    if not real_inputs or not outputs:
        raise PackError("ONNX model has no inputs or no outputs", path=p,
                        fix="re-download or re-convert the model pack")
    return OnnxIO(real_inputs, outputs)


# --------------------------------------------------------------------------------------------
# Pack
# --------------------------------------------------------------------------------------------


def read_labels(path: Path) -> list[str]:
    """Labels one per line, stripped, every line kept (as the reference's `readlines`)."""
    try:
        with open(path, encoding="utf-8") as fh:
            return [line.strip() for line in fh.readlines()]
    except UnicodeDecodeError as e:
        raise PackError("labels file is not UTF-8 text", path=path,
                        fix="use the labels .txt that came with the classifier") from e
    except OSError as e:
        raise PackError(f"cannot read labels file ({e.strerror or e})", path=path,
                        fix="make the file readable or re-create the pack") from e


_HASH_CACHE: dict[str, str] = {}
_HASH_CACHE_FILE = "sha256-verified.json"
_PERSISTENT: dict[Path, dict[str, str]] = {}


def _hash_key(path: Path) -> str:
    # ctime too: it changes on every write AND on every metadata change (a tool that restores
    # the mtime after editing still moves the ctime), and users cannot set it.
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}"


def _persistent_hashes() -> tuple[Path, dict[str, str]]:
    """The digests file and its content, read once per process and cache location."""
    from edgenet.providers import cache_dir

    where = cache_dir() / _HASH_CACHE_FILE
    if where not in _PERSISTENT:
        try:
            data = json.loads(where.read_text(encoding="utf-8"))
            _PERSISTENT[where] = ({str(k): str(v) for k, v in data.items()}
                                  if isinstance(data, dict) else {})
        except (OSError, ValueError):
            _PERSISTENT[where] = {}
    return where, _PERSISTENT[where]


def _sha256(path: Path) -> str:
    """Hex sha256 of a file, remembered per (path, size, mtime, ctime, inode).

    Why remembered across runs: a full-size pack is ~800 MB of ONNX, ~1.5 s of hashing on a
    laptop core at every start (a tenth of a one-image run). A file that changes in any way
    gets a new key and is hashed again, so truncation, corruption and edits are still caught;
    the digests live in the cache dir (`$EDGENET_HOME`), and a cache that cannot be read or
    written just means hashing every time.
    """
    key = _hash_key(path)
    if key in _HASH_CACHE:
        return _HASH_CACHE[key]
    where, known = _persistent_hashes()
    if key in known:
        _HASH_CACHE[key] = known[key]
        return known[key]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    _HASH_CACHE[key] = h.hexdigest()
    for stale in [k for k in known if not Path(k.split("|", 1)[0]).exists()]:
        del known[stale]
    known[key] = _HASH_CACHE[key]
    try:
        where.parent.mkdir(parents=True, exist_ok=True)
        tmp = where.with_name(f".{where.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=0), encoding="utf-8")
        os.replace(tmp, where)
    except OSError:
        pass
    return _HASH_CACHE[key]


def _verify_sha256(path: Path, want: str) -> None:
    """Raise PackError when `path` is missing or its sha256 is not `want`."""
    if not path.is_file():
        raise _fail(path, "file listed in edgenet.sha256 is missing",
                    "re-download or re-create the pack")
    got = _sha256(path)
    if got != want.lower():
        raise _fail(path, f"sha256 mismatch (expected {want}, file has {got}): the file "
                    "is truncated, corrupt or was modified",
                    "re-download it (`edgenet models pull`) or re-create the pack "
                    "(`edgenet convert pack`)")


class PackFiles(NamedTuple):
    """The two model files of one precision; a tuple (unpacks) with named fields."""

    detector: Path
    classifier: Path


def files_precision(precision: str) -> str:
    """The pack variant whose model files a precision runs. bf16 has no files of its own: it
    is the fp32 graphs computed in bfloat16 (`providers.BF16_DEVICES`)."""
    return "fp32" if precision == "bf16" else precision


@dataclass
class ModelPack:
    """A validated model pack. Paths are absolute; `labels` is the classifier's label list."""

    root: Path
    version: str
    type: str
    classifier: Path
    classifier_labels: Path
    detector: Path
    taxonomy: Path
    geofence: Path
    labels: list[str]
    info: dict[str, Any]
    precision: str = "fp32"
    synthetic: bool = False
    variants: dict[str, PackFiles] = field(default_factory=dict)
    fidelity: Path | None = None
    onnx_io: dict[Path, OnnxIO] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    checksums: dict[Path, str] = field(default_factory=dict, repr=False)

    @property
    def type_(self) -> str:
        """Alias of `type` under speciesnet's `ModelInfo` spelling."""
        return self.type

    @property
    def whole_image(self) -> bool:
        return self.type == "full_image"

    def variant(self, precision: str) -> PackFiles:
        """(detector, classifier) paths for `precision`, checksums verified; fp32 (or the
        pack's own precision) is the base, and bf16 runs it (`files_precision`)."""
        files = None
        if files_precision(precision) in ("fp32", self.precision):
            files = PackFiles(self.detector, self.classifier)
        elif precision in self.variants:
            files = self.variants[precision]
        if files is not None:
            for p in files:  # model files are hashed on first use only (see `_load`)
                if p in self.checksums:
                    _verify_sha256(p, self.checksums[p])
            self._check_io(files)
            return files
        have = ", ".join(sorted({self.precision, *self.variants})) or self.precision
        raise PackError(
            f"pack has no {precision} models (it has: {have})",
            path=self.root / "info.json",
            fix=f"run without --precision {precision}, or build the variant with "
            "`edgenet convert pack SRC DST --variants " + precision + "`",
        )

    def _check_io(self, files: PackFiles) -> None:
        """Read and check the inputs/outputs of those of FILES not read yet: the base pair
        when the pack loads, a variant's pair when `variant()` first asks for it (an fp32
        run need not parse the int8 and fp16 graphs). A file is remembered only once it
        passed its check."""
        if files.detector not in self.onnx_io:
            io_ = read_onnx_io(files.detector)
            _check_detector(files.detector, io_)
            self.onnx_io[files.detector] = io_
        if files.classifier not in self.onnx_io:
            io_ = read_onnx_io(files.classifier)
            _check_classifier(files.classifier, io_, len(self.labels), self.classifier_labels,
                              self.notes)
            self.onnx_io[files.classifier] = io_

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, verify_checksums: bool = True) -> ModelPack:
        """Read and validate the pack at `path`; raise PackError on the first problem."""
        return _load(Path(path), verify_checksums)


def _fail(path: Path, problem: str, fix: str) -> PackError:
    return PackError(problem, path=path, fix=fix)


def _require_file(root: Path, rel: Any, key: str, info_path: Path) -> Path:
    if not isinstance(rel, str) or not rel.strip():
        raise _fail(info_path, f'"{key}" must be a non-empty file name, got {rel!r}',
                    f'set "{key}" to a file inside {root}')
    p = root / rel
    if not p.exists():
        raise _fail(p, f'file named by "{key}" in info.json is missing',
                    "copy the file into the pack or re-create it with `edgenet convert pack`")
    if not p.is_file():
        raise _fail(p, f'"{key}" must name a file, this is a directory', "fix info.json")
    if not os.access(p, os.R_OK):
        raise _fail(p, "file is not readable (permission denied)", "make the pack files readable")
    if p.stat().st_size == 0:
        raise _fail(p, "file is empty (0 bytes)", "re-download or re-create the pack")
    return p


def _check_detector(p: Path, io_: OnnxIO) -> None:
    dims = io_.inputs[0].dims
    if dims is None or len(dims) != 4:
        raise _fail(p, f"detector input must be rank 4 (N, 3, H, W), got {dims}",
                    "re-export MegaDetector with `edgenet convert pack`")
    if dims[1] != 3:  # a symbolic channel axis is refused too: we feed exactly 3 (RGB)
        raise _fail(p, f"detector input must have 3 channels at axis 1 (NCHW), got {dims}",
                    "re-export MegaDetector with `edgenet convert pack` (NCHW RGB input)")
    if io_.inputs[0].elem_type not in (1, 10):
        raise _fail(p, f"detector input must be float32 or float16, got {io_.inputs[0].dtype}",
                    "re-export the detector with `edgenet convert pack`")


def _check_classifier(p: Path, io_: OnnxIO, n_labels: int, labels_path: Path,
                      notes: list[str]) -> None:
    dims = io_.inputs[0].dims
    if dims is None or len(dims) != 4:
        raise _fail(p, f"classifier input must be (N, 480, 480, 3), got {dims}",
                    "re-export the classifier with `edgenet convert pack` (NHWC input)")
    for axis, want in zip((1, 2, 3), CLASSIFIER_INPUT, strict=True):
        got = dims[axis]
        if isinstance(got, int) and got != want:
            raise _fail(p, f"classifier input must be (N, 480, 480, 3), got {dims}",
                        "re-export the classifier with `edgenet convert pack` (NHWC 480x480 RGB)")
        if not isinstance(got, int):
            notes.append(f"{p.name}: input axis {axis} is symbolic ({got!r}); fed {want}")
    if io_.inputs[0].elem_type not in (1, 10):
        raise _fail(p, f"classifier input must be float32 or float16, got {io_.inputs[0].dtype}",
                    "re-export the classifier with `edgenet convert pack`")
    out = io_.outputs[0].dims
    width = out[-1] if out else None
    if isinstance(width, int):
        if width != n_labels:
            raise _fail(labels_path,
                        f"labels file has {n_labels} lines but the classifier {p.name} has "
                        f"{width} outputs",
                        "use the labels file that belongs to this classifier (one label per "
                        "line, no blank lines)")
    else:
        notes.append(f"{p.name}: output width is symbolic ({width!r}); the label count "
                     f"({n_labels}) is checked on the first inference instead")


def _load(root: Path, verify: bool) -> ModelPack:
    root = root.expanduser()
    if not root.exists():
        raise _fail(root, "model pack folder not found", GET_A_PACK + "; then pass --model DIR")
    if not root.is_dir():
        raise _fail(root, "--model must be a pack folder (with info.json), this is a file",
                    "pass the folder that holds info.json")
    info_path = root / "info.json"
    if not info_path.is_file():
        raise _fail(info_path, "pack has no info.json",
                    "this is not an edgenet pack; " + GET_A_PACK)
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise _fail(info_path, f"info.json is not valid JSON ({e})",
                    "fix the file or re-create the pack with `edgenet convert pack`") from e
    except OSError as e:
        raise _fail(info_path, f"cannot read info.json ({e.strerror or e})",
                    "make the file readable") from e
    if not isinstance(info, dict):
        raise _fail(info_path, "info.json must hold a JSON object", "re-create the pack")
    missing = [k for k in REQUIRED_KEYS if k not in info]
    if missing:
        raise _fail(info_path, f"info.json lacks key(s) {', '.join(missing)}",
                    "add them (SpeciesNet's info.json keys) or re-create the pack")
    if not isinstance(info["version"], str):
        raise _fail(info_path, f'"version" must be a string, got {info["version"]!r}',
                    'set e.g. "version": "4.0.2a"')
    if info["type"] not in PACK_TYPES:
        raise _fail(info_path, f'"type" must be "always_crop" or "full_image", got '
                    f'{info["type"]!r}', "fix info.json")

    files = {k: _require_file(root, info[k], k, info_path)
             for k in ("classifier", "classifier_labels", "detector", "taxonomy", "geofence")}
    for key in ("classifier", "detector"):
        if files[key].suffix.lower() != ".onnx":
            raise _fail(files[key], f'"{key}" must name an .onnx file',
                        "convert the SpeciesNet model folder with `edgenet convert pack SRC DST`")

    ext = info.get("edgenet", {})
    if not isinstance(ext, dict):
        raise _fail(info_path, '"edgenet" must be an object', "fix info.json")
    fmt = ext.get("format", 1)
    if fmt != 1:
        raise _fail(info_path, f"unsupported edgenet pack format {fmt!r} (this edgenet reads 1)",
                    "upgrade edgenet or re-create the pack")
    precision = ext.get("precision", "fp32")
    synthetic = ext.get("synthetic", False)
    if not isinstance(precision, str) or not isinstance(synthetic, bool):
        raise _fail(info_path, '"edgenet.precision" must be a string and "edgenet.synthetic" '
                    "a boolean", "fix info.json")
    variants: dict[str, PackFiles] = {}
    raw_variants = ext.get("variants", {})
    if not isinstance(raw_variants, dict):
        raise _fail(info_path, '"edgenet.variants" must be an object', "fix info.json")
    for prec, entry in raw_variants.items():
        if not isinstance(entry, dict) or not {"detector", "classifier"} <= set(entry):
            raise _fail(info_path, f'variant "{prec}" must give "detector" and "classifier"',
                        "fix info.json")
        variants[prec] = PackFiles(
            _require_file(root, entry["detector"], f"variants.{prec}.detector", info_path),
            _require_file(root, entry["classifier"], f"variants.{prec}.classifier", info_path),
        )
    fidelity = None
    if ext.get("fidelity") is not None:
        fidelity = _require_file(root, ext["fidelity"], "edgenet.fidelity", info_path)

    sums = ext.get("sha256", {})
    if not isinstance(sums, dict):
        raise _fail(info_path, '"edgenet.sha256" must map file names to hex digests',
                    "fix info.json")
    # Variant model files are hashed only when that precision is asked for (`variant()`): a pack
    # with fp16 and int8 variants holds ~2x the fp32 bytes, which need not be read on every run.
    # (Digests are remembered across runs per file identity; see `_sha256`.)
    lazy = {p.resolve() for v in variants.values() for p in v} - {
        files["detector"].resolve(), files["classifier"].resolve()}
    checksums: dict[Path, str] = {}
    for rel, want in sums.items():
        p = root / str(rel)
        if not isinstance(want, str):
            raise _fail(info_path, f'"edgenet.sha256" value for {rel!r} must be a hex string',
                        "re-create the pack")
        checksums[p.resolve()] = want.lower()
        if verify and p.resolve() not in lazy:
            _verify_sha256(p, want)

    labels = read_labels(files["classifier_labels"])
    pack = ModelPack(
        root=root.resolve(),
        version=info["version"],
        type=info["type"],
        classifier=files["classifier"].resolve(),
        classifier_labels=files["classifier_labels"].resolve(),
        detector=files["detector"].resolve(),
        taxonomy=files["taxonomy"].resolve(),
        geofence=files["geofence"].resolve(),
        labels=labels,
        info=info,
        precision=precision,
        synthetic=synthetic,
        variants={k: PackFiles(v.detector.resolve(), v.classifier.resolve())
                  for k, v in variants.items()},
        fidelity=fidelity.resolve() if fidelity else None,
        checksums=checksums if verify else {},
    )
    # The base pair only; each variant's pair is read when it is asked for (`variant()`).
    pack._check_io(PackFiles(pack.detector, pack.classifier))
    return pack
