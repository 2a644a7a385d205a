"""`edgenet models pull` / `edgenet models list`: fetch real weights, then build a pack.

Why a downloader of our own instead of kagglehub/requests: the two sources we need are plain
HTTPS files (MegaDetector's GitHub release assets and Kaggle's public model download endpoint,
which redirects to a tar.gz), the downloads are large (~270 MB for MegaDetector, ~200 MB per
SpeciesNet variation) and flaky links are common in the field, so we want HTTP Range resume of
`.part` files, progress output and checksum verification, all with the standard library only.

Layout under `$EDGENET_HOME` (default `~/.cache/edgenet`):

    downloads/<file>            finished downloads (verified), `<file>.part` while in flight
    downloads/<name>/           an extracted SpeciesNet archive (the source folder)
    packs/<name>/               converted edgenet packs; `packs/default` points at one of them

Base URLs can be redirected with `EDGENET_MD_BASE_URL` and `EDGENET_KAGGLE_BASE_URL` (the
loopback tests serve synthetic files this way); the manifest of known names lives in
`models/known_models.json` (override with `EDGENET_KNOWN_MODELS`).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgenet.errors import EdgenetError, PackError

ENV_MD_BASE = "EDGENET_MD_BASE_URL"
ENV_KAGGLE_BASE = "EDGENET_KAGGLE_BASE_URL"
ENV_MANIFEST = "EDGENET_KNOWN_MODELS"

DEFAULT_MD_BASE = "https://github.com/agentmorris/MegaDetector/releases/download/v5.0"
DEFAULT_KAGGLE_BASE = "https://www.kaggle.com/api/v1/models"
# Release-asset prefixes that SpeciesNet info.json files use for the detector URL; both are
# rewritten onto $EDGENET_MD_BASE_URL when it is set.
KNOWN_MD_PREFIXES = (
    "https://github.com/agentmorris/MegaDetector/releases/download/v5.0",
    "https://github.com/microsoft/CameraTraps/releases/download/v5.0",
)
CHUNK = 1 << 20
USER_AGENT = "edgenet-models-pull/0.1 (+https://github.com/google/cameratrapai)"

ProgressFn = Callable[[str, int, "int | None"], None]


class DownloadError(EdgenetError):
    """A download failed (HTTP error, unreachable host, interrupted transfer)."""


class ChecksumError(DownloadError):
    """A finished download does not match the checksum the manifest publishes."""


@dataclass(frozen=True)
class KnownModel:
    """One entry of the known-models manifest (URL already has its base substituted)."""

    name: str
    kind: str  # "detector" or "speciesnet"
    url: str
    filename: str
    sha256: str | None = None
    md5: str | None = None
    description: str = ""


# --------------------------------------------------------------------------------------------
# locations


def edgenet_home() -> Path:
    """The cache root: `$EDGENET_HOME`, else `~/.cache/edgenet` (edgenet.pack's rule)."""
    from edgenet.pack import edgenet_home as home

    return home()


def downloads_dir(home: Path | None = None) -> Path:
    return (home or edgenet_home()) / "downloads"


def packs_dir(home: Path | None = None) -> Path:
    return (home or edgenet_home()) / "packs"


# --------------------------------------------------------------------------------------------
# manifest


def manifest_path() -> Path:
    """`$EDGENET_KNOWN_MODELS`, else `models/known_models.json` of this checkout, else the copy
    a wheel install puts in `<prefix>/share/edgenet/models/` (pyproject's data-files)."""
    env = os.environ.get(ENV_MANIFEST)
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parents[1] / "models" / "known_models.json"
    if checkout.is_file():
        return checkout
    installed = Path(sys.prefix) / "share" / "edgenet" / "models" / "known_models.json"
    return installed if installed.is_file() else checkout


def load_manifest(path: Path | None = None) -> dict[str, KnownModel]:
    """Known models by name, with `{md_base}`/`{kaggle_base}` resolved from the environment."""
    path = path or manifest_path()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EdgenetError(
            "known-models manifest not found", path=path,
            fix=f"run from an edgenet checkout or point {ENV_MANIFEST} at known_models.json",
        ) from None
    except json.JSONDecodeError as exc:
        raise EdgenetError(f"known-models manifest is not valid JSON ({exc})", path=path) from None
    defaults = raw.get("defaults", {})
    bases = {
        "md_base": os.environ.get(ENV_MD_BASE) or defaults.get("md_base", DEFAULT_MD_BASE),
        "kaggle_base": os.environ.get(ENV_KAGGLE_BASE)
        or defaults.get("kaggle_base", DEFAULT_KAGGLE_BASE),
    }
    bases = {k: v.rstrip("/") for k, v in bases.items()}
    models: dict[str, KnownModel] = {}
    for name, entry in raw.get("models", {}).items():
        models[name] = KnownModel(
            name=name,
            kind=entry["kind"],
            url=entry["url"].format(**bases),
            filename=entry["filename"],
            sha256=(entry.get("sha256") or None),
            md5=(entry.get("md5") or None),
            description=entry.get("description", ""),
        )
    return models


def resolve_name(name: str, manifest: dict[str, KnownModel] | None = None) -> KnownModel:
    """A manifest entry for NAME; also accepts `kaggle:google/speciesnet/<fw>/<var>/<ver>`.

    Kaggle handles let users pull variations this release does not list yet.
    """
    manifest = manifest if manifest is not None else load_manifest()
    if name in manifest:
        return manifest[name]
    handle = name.removeprefix("kaggle:")
    parts = handle.split("/")
    if len(parts) == 5 and parts[0] == "google" and parts[1] == "speciesnet":
        base = (os.environ.get(ENV_KAGGLE_BASE) or DEFAULT_KAGGLE_BASE).rstrip("/")
        variation = parts[3]
        return KnownModel(
            name=f"speciesnet-{variation}",
            kind="speciesnet",
            url=f"{base}/{handle}/download",
            filename=f"speciesnet-{variation}-{parts[4]}.tar.gz",
            description=f"Kaggle model {handle}",
        )
    raise EdgenetError(
        f"unknown model name {name!r}",
        fix="see `edgenet models list` for known names, or pass a Kaggle handle such as "
        "kaggle:google/speciesnet/pyTorch/v4.0.3a/1",
    )


def rewrite_detector_url(url: str) -> str:
    """Point a MegaDetector release URL at `$EDGENET_MD_BASE_URL` when that is set."""
    base = os.environ.get(ENV_MD_BASE)
    if not base:
        return url
    for prefix in KNOWN_MD_PREFIXES:
        if url.startswith(prefix + "/"):
            return base.rstrip("/") + url[len(prefix):]
    return url


# --------------------------------------------------------------------------------------------
# download with resume


def file_digest(path: Path, algo: str = "sha256") -> str:
    """Hex digest of a file, streamed (model files are hundreds of MB)."""
    h = hashlib.new(algo)
    with open(path, "rb") as fp:
        while chunk := fp.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _checksum_problem(path: Path, sha256: str | None, md5: str | None) -> str | None:
    if sha256:
        got = file_digest(path, "sha256")
        if got.lower() != sha256.lower():
            return f"sha256 is {got}, expected {sha256}"
    if md5:
        got = file_digest(path, "md5")
        if got.lower() != md5.lower():
            return f"md5 is {got}, expected {md5}"
    return None


class _Interrupted(Exception):
    """The transfer stopped early; the `.part` file holds what arrived and can be resumed."""


def stderr_progress(min_interval: float = 0.5) -> ProgressFn:
    """A progress printer for the CLI: one updating line on a TTY, sparse lines otherwise."""
    state = {"t": 0.0, "pct": -10}
    tty = sys.stderr.isatty()

    def report(label: str, done: int, total: int | None) -> None:
        now = time.monotonic()
        finished = total is not None and done >= total
        if not finished and now - state["t"] < min_interval:
            return
        if total:
            pct = int(100 * done / total)
            if not tty and not finished and pct < state["pct"] + 10:
                return
            state["pct"] = pct
            text = f"{label}: {done / 1e6:.1f}/{total / 1e6:.1f} MB ({pct}%)"
        else:
            text = f"{label}: {done / 1e6:.1f} MB"
        state["t"] = now
        end = "\n" if (finished or not tty) else ""
        print(("\r" if tty else "") + text, end=end, file=sys.stderr, flush=True)

    return report


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (https/http only)


def _fetch_into(url: str, part: Path, progress: ProgressFn | None, timeout: float) -> None:
    """Append the rest of URL to PART (Range resume), raising `_Interrupted` on a short read."""
    offset = part.stat().st_size if part.exists() else 0
    try:
        response = _open(url, offset, timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            # Range past the end: the .part file is already whole (or longer than the file).
            total = _content_range_total(exc.headers.get("Content-Range", ""))
            if total == offset:
                return
            part.unlink()
            return _fetch_into(url, part, progress, timeout)
        if exc.code in (401, 403):
            fix = ("the server refused an anonymous download: open the URL in a browser (for "
                   "Kaggle, sign in and accept the model's terms), download the archive, unpack "
                   "it and run `edgenet convert pack FOLDER DST`")
        else:
            fix = ("check the model name with `edgenet models list` and the base URL variables "
                   f"{ENV_MD_BASE}/{ENV_KAGGLE_BASE}; for Kaggle, the variation/version must "
                   "exist")
        raise DownloadError(f"download failed: HTTP {exc.code} {exc.reason} for {url}",
                            fix=fix) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        host = urllib.parse.urlsplit(url).netloc
        raise DownloadError(
            f"cannot reach {host} ({reason}) while downloading {url}",
            fix="check the network connection/proxy, or download the file by other means and "
            "pass its local path (e.g. set info.json's detector to the local .pt)",
        ) from None
    with response:
        resumed = bool(offset) and response.status == 206
        if resumed:
            start = _content_range_start(response.headers.get("Content-Range", ""))
            if start != offset:
                resumed = False
        if not resumed:
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        done = offset
        label = part.name.removesuffix(".part")
        try:
            with open(part, "ab" if resumed else "wb") as fp:
                while True:
                    chunk = response.read(CHUNK)
                    if not chunk:
                        break
                    fp.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(label, done, total)
                fp.flush()
                os.fsync(fp.fileno())
        except (http.client.IncompleteRead, ConnectionError, TimeoutError) as exc:
            raise _Interrupted(f"{done} of {total or '?'} bytes ({type(exc).__name__})") from None
        if total is not None and done < total:
            raise _Interrupted(f"{done} of {total} bytes")


def _content_range_total(value: str) -> int | None:
    try:
        return int(value.rsplit("/", 1)[1])
    except (IndexError, ValueError):
        return None


def _content_range_start(value: str) -> int | None:
    try:
        return int(value.split()[1].split("-", 1)[0])
    except (IndexError, ValueError):
        return None


def download(
    url: str,
    dst: Path,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    retries: int = 0,
    progress: ProgressFn | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download URL to DST, resuming `DST.part` with HTTP Range; verify checksums if known.

    An interrupted transfer is retried RETRIES times (each resuming where it stopped); if it
    still fails the `.part` file stays for the next call to resume. A checksum mismatch
    deletes the `.part` file (its bytes are wrong, resuming would keep them) and raises.
    An existing DST is reused when it verifies.
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_file():
        if _checksum_problem(dst, sha256, md5) is None:
            return dst
        dst.unlink()
    part = dst.with_name(dst.name + ".part")
    attempt = 0
    while True:
        try:
            _fetch_into(url, part, progress, timeout)
            break
        except _Interrupted as exc:
            if attempt >= retries:
                raise DownloadError(
                    f"download of {url} was interrupted after {exc}",
                    path=part,
                    fix="run the same command again: it resumes from the partial file",
                ) from None
            attempt += 1
            time.sleep(min(2.0 ** attempt, 10.0) if retries > 1 else 0.1)
    problem = _checksum_problem(part, sha256, md5)
    if problem:
        part.unlink()
        raise ChecksumError(
            f"downloaded file is corrupt or not the expected release: {problem}",
            path=dst,
            fix="run the command again to re-download; if it keeps failing the server "
            "serves a different file than models/known_models.json lists",
        )
    os.replace(part, dst)
    return dst


# --------------------------------------------------------------------------------------------
# archives and detector URLs


def _safe_members(tar: tarfile.TarFile, dest: Path) -> list[tarfile.TarInfo]:
    """Regular files and folders only, all inside DEST (no links, devices or `..`)."""
    members = []
    root = dest.resolve()
    for member in tar.getmembers():
        if not (member.isfile() or member.isdir()):
            continue
        target = (dest / member.name).resolve()
        if root != target and root not in target.parents:
            raise DownloadError(f"archive member {member.name!r} escapes the folder", path=dest)
        members.append(member)
    return members


def extract_archive(archive: Path, dest: Path) -> Path:
    """Unpack a tar(.gz) or zip into DEST (atomically); return the folder holding info.json."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.extract-", dir=dest.parent))
    try:
        if tarfile.is_tarfile(archive):
            with tarfile.open(archive, "r:*") as tar:
                tar.extractall(tmp, members=_safe_members(tar, tmp))  # noqa: S202 (filtered)
        elif zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    target = (tmp / info.filename).resolve()
                    if tmp.resolve() not in target.parents and target != tmp.resolve():
                        raise DownloadError(f"zip member {info.filename!r} escapes", path=archive)
                zf.extractall(tmp)
        else:
            raise DownloadError(
                "downloaded file is neither a tar(.gz) nor a zip archive",
                path=archive, fix="delete it and pull again",
            )
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DownloadError(
            f"cannot unpack the archive ({exc})", path=archive,
            fix="delete the file and pull again (it is probably truncated)",
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return find_model_folder(dest)


def find_model_folder(root: Path) -> Path:
    """The folder with SpeciesNet's info.json: ROOT itself or its single subfolder that has it."""
    if (root / "info.json").is_file():
        return root
    candidates = sorted(p.parent for p in root.rglob("info.json"))
    if len(candidates) == 1:
        return candidates[0]
    raise PackError(
        "no SpeciesNet info.json found" if not candidates else "several info.json files found",
        path=root, fix="the archive is not a SpeciesNet model package",
    )


def url_to_filename(url: str) -> str:
    """speciesnet's name for a downloaded detector inside the model folder."""
    return url.split("?")[0].replace(":", "_").replace("/", "_")


def fetch_detector(
    url: str,
    *,
    src_dir: Path | None = None,
    home: Path | None = None,
    retries: int = 2,
    progress: ProgressFn | None = None,
    manifest: dict[str, KnownModel] | None = None,
) -> Path:
    """Local path of the detector a SpeciesNet info.json names by URL.

    Reuses what speciesnet itself would have downloaded into the model folder, else downloads
    into `$EDGENET_HOME/downloads/` (checked against the manifest when the file name is known).
    """
    if src_dir is not None:
        local = Path(src_dir) / url_to_filename(url)
        if local.is_file():
            return local
    filename = urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1] or "detector.pt"
    try:
        manifest = manifest if manifest is not None else load_manifest()
    except EdgenetError:
        manifest = {}
    known = next((m for m in manifest.values() if m.filename == filename), None)
    return download(
        rewrite_detector_url(url),
        downloads_dir(home) / filename,
        sha256=known.sha256 if known else None,
        md5=known.md5 if known else None,
        retries=retries,
        progress=progress,
    )


# --------------------------------------------------------------------------------------------
# pull / list


def set_default_pack(name: str, home: Path | None = None) -> Path:
    """Make `packs/default` point at `packs/NAME` (relative symlink, replaced atomically)."""
    packs = packs_dir(home)
    target = packs / name
    if not target.is_dir():
        raise PackError("no such installed pack", path=target, fix="pull or convert it first")
    link = packs / "default"
    tmp = packs / f".default.{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    try:
        os.symlink(name, tmp, target_is_directory=True)
        if link.is_dir() and not link.is_symlink():
            shutil.rmtree(link)
        os.replace(tmp, link)
    except OSError:
        # No symlinks (e.g. Windows without developer mode): copy the pack instead.
        if tmp.is_symlink():
            tmp.unlink()
        if link.is_symlink() or link.is_file():
            link.unlink()
        elif link.exists():
            shutil.rmtree(link)
        shutil.copytree(target, link)
    return link


def pull(
    name: str,
    *,
    home: Path | None = None,
    set_default: bool = False,
    force: bool = False,
    retries: int = 3,
    variants: Sequence[str] = ("fp16", "int8"),
    progress: ProgressFn | None = None,
    manifest: dict[str, KnownModel] | None = None,
    max_images: int = 6,
) -> Path:
    """Download NAME; for a SpeciesNet variation also convert it into `packs/NAME`.

    Returns the downloaded .pt for detectors, the pack folder for SpeciesNet. The pack is
    made the default when SET_DEFAULT or when no default exists yet. Nothing is left in
    `packs/` unless the conversion passed (convert_pack builds in a temp folder).
    """
    entry = resolve_name(name, manifest)
    home = home or edgenet_home()
    dl = downloads_dir(home)
    if entry.kind == "detector":
        return download(entry.url, dl / entry.filename, sha256=entry.sha256, md5=entry.md5,
                        retries=retries, progress=progress)
    if entry.kind != "speciesnet":
        raise EdgenetError(f"manifest entry {name!r} has unknown kind {entry.kind!r}")
    dst = packs_dir(home) / entry.name
    if dst.exists() and not force:
        raise PackError("pack already installed", path=dst,
                        fix="pass --force to download and convert it again")
    archive = download(entry.url, dl / entry.filename, sha256=entry.sha256, md5=entry.md5,
                       retries=retries, progress=progress)
    src = extract_archive(archive, dl / entry.name)
    from converters.pack import convert_pack

    convert_pack(src, dst, variants=variants, overwrite=force, home=home, progress=progress,
                 manifest=manifest, max_images=max_images)
    default = packs_dir(home) / "default"
    if set_default or not (default.exists() or default.is_symlink()):
        set_default_pack(entry.name, home)
    return dst


def list_models(home: Path | None = None) -> dict[str, Any]:
    """Known names (with whether each is downloaded/installed) and installed packs."""
    home = home or edgenet_home()
    try:
        manifest = load_manifest()
    except EdgenetError:
        manifest = {}
    dl, packs = downloads_dir(home), packs_dir(home)
    default = packs / "default"
    default_target = os.readlink(default) if default.is_symlink() else None
    known = []
    for m in manifest.values():
        installed = (packs / m.name).is_dir() if m.kind == "speciesnet" else (
            dl / m.filename).is_file()
        known.append({"name": m.name, "kind": m.kind, "installed": installed,
                      "description": m.description, "url": m.url})
    installed_packs = []
    if packs.is_dir():
        for p in sorted(packs.iterdir()):
            if p.name.startswith(".") or p.name == "default" or not p.is_dir():
                continue
            info: dict[str, Any] = {}
            try:
                info = json.loads((p / "info.json").read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                pass
            edgenet = info.get("edgenet", {}) if isinstance(info, dict) else {}
            installed_packs.append({
                "name": p.name,
                "path": str(p),
                "version": info.get("version"),
                "type": info.get("type"),
                "synthetic": edgenet.get("synthetic"),
                "variants": sorted(edgenet.get("variants", {})),
                "default": default_target == p.name,
            })
    return {"home": str(home), "known": known, "installed": installed_packs}
