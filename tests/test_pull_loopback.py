"""`edgenet models pull` against a loopback HTTP server (no internet needed).

The server (http.server on 127.0.0.1, in a thread) serves files the way the real sources do:
MegaDetector `.pt` files under a release-like base URL, and SpeciesNet folders packed as the
tar.gz that Kaggle's model download endpoint returns, with HTTP Range support. Per-path
behaviours simulate the failures users meet: 404, a transfer that stops early, and a file whose
checksum does not match the manifest. Every failure must be a clear EdgenetError and leave no
pack behind.

The download tests are fast (seconds). The end-to-end pulls convert a tiny synthetic SpeciesNet
folder (shared with test_convert_pack.py) and need the `convert` extra.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from converters import pull
from converters.pull import ChecksumError, DownloadError
from edgenet.errors import EdgenetError

MD_GITHUB = "https://github.com/agentmorris/MegaDetector/releases/download/v5.0"


@dataclass
class Route:
    body: bytes
    status: int = 200
    truncate_once_at: int | None = None  # close the connection after this many bytes, once
    support_range: bool = True


@dataclass
class Server:
    base: str
    routes: dict[str, Route]
    log: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)


def _handler(server_state: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # keep pytest output clean
            return

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            rng = self.headers.get("Range")
            server_state.log.append((self.path, rng))
            route = server_state.routes.get(self.path)
            if route is None or route.status == 404:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = route.body
            start = 0
            if rng and route.support_range:
                start = int(rng.split("=")[1].split("-")[0])
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            chunk = body[start:]
            self.send_header("Content-Length", str(len(chunk)))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            if route.truncate_once_at is not None:
                cut = route.truncate_once_at
                route.truncate_once_at = None
                self.wfile.write(chunk[:cut])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(chunk)

    return Handler


@pytest.fixture()
def server() -> Iterator[Server]:
    state = Server(base="", routes={})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------
# download(): resume, errors, checksums


def test_download_success_verifies_and_reports_progress(server: Server, tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 123)
    server.routes["/f.bin"] = Route(data)
    seen: list[tuple[int, int | None]] = []
    out = pull.download(f"{server.base}/f.bin", tmp_path / "f.bin", sha256=_sha(data),
                        md5=hashlib.md5(data).hexdigest(),
                        progress=lambda _n, done, total: seen.append((done, total)))
    assert out.read_bytes() == data
    assert not (tmp_path / "f.bin.part").exists()
    assert seen[-1] == (len(data), len(data))
    # A second call reuses the verified file without any request.
    before = len(server.log)
    pull.download(f"{server.base}/f.bin", tmp_path / "f.bin", sha256=_sha(data))
    assert len(server.log) == before


def test_download_404_is_a_clear_error(server: Server, tmp_path: Path) -> None:
    with pytest.raises(DownloadError) as err:
        pull.download(f"{server.base}/missing.pt", tmp_path / "missing.pt")
    assert "404" in str(err.value) and "/missing.pt" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_truncated_transfer_resumes_with_range(server: Server, tmp_path: Path) -> None:
    data = os.urandom(2 * (1 << 20) + 77)
    server.routes["/big.pt"] = Route(data, truncate_once_at=700_000)
    dst = tmp_path / "big.pt"
    with pytest.raises(DownloadError) as err:
        pull.download(f"{server.base}/big.pt", dst, sha256=_sha(data), retries=0)
    assert "interrupted" in str(err.value) and "again" in str(err.value)
    part = tmp_path / "big.pt.part"
    assert part.exists() and 0 < part.stat().st_size < len(data)
    assert not dst.exists()
    have = part.stat().st_size
    pull.download(f"{server.base}/big.pt", dst, sha256=_sha(data), retries=0)
    assert dst.read_bytes() == data and not part.exists()
    assert server.log[-1] == ("/big.pt", f"bytes={have}-")


def test_truncated_transfer_is_retried_automatically(server: Server, tmp_path: Path) -> None:
    data = os.urandom(1 << 20)
    server.routes["/x.pt"] = Route(data, truncate_once_at=100_000)
    pull.download(f"{server.base}/x.pt", tmp_path / "x.pt", sha256=_sha(data), retries=1)
    assert (tmp_path / "x.pt").read_bytes() == data
    assert [r for _, r in server.log] == [None, "bytes=100000-"]


def test_server_without_range_support_restarts_cleanly(server: Server, tmp_path: Path) -> None:
    data = os.urandom(500_000)
    server.routes["/n.pt"] = Route(data, truncate_once_at=1000, support_range=False)
    with pytest.raises(DownloadError):
        pull.download(f"{server.base}/n.pt", tmp_path / "n.pt", retries=0)
    pull.download(f"{server.base}/n.pt", tmp_path / "n.pt", sha256=_sha(data))
    assert (tmp_path / "n.pt").read_bytes() == data


def test_checksum_mismatch_deletes_the_partial_file(server: Server, tmp_path: Path) -> None:
    data = b"not the real megadetector" * 1000
    server.routes["/md.pt"] = Route(data)
    with pytest.raises(ChecksumError) as err:
        pull.download(f"{server.base}/md.pt", tmp_path / "md.pt", sha256="0" * 64)
    msg = str(err.value)
    assert "sha256" in msg and _sha(data) in msg and "0" * 64 in msg
    assert list(tmp_path.iterdir()) == []


def test_unreachable_host_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError) as err:
        pull.download(f"http://127.0.0.1:{port}/a.pt", tmp_path / "a.pt", timeout=5)
    assert "cannot reach" in str(err.value)


# --------------------------------------------------------------------------------------------
# manifest, names, archives


def test_manifest_bases_follow_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGENET_MD_BASE_URL", "http://127.0.0.1:1/md/")
    monkeypatch.setenv("EDGENET_KAGGLE_BASE_URL", "http://127.0.0.1:1/kaggle")
    models = pull.load_manifest()
    assert models["md_v5a"].url == "http://127.0.0.1:1/md/md_v5a.0.0.pt"
    assert models["speciesnet-v4.0.3a"].url == (
        "http://127.0.0.1:1/kaggle/google/speciesnet/pyTorch/v4.0.3a/1/download")
    assert models["speciesnet-v4.0.0a"].url.endswith("/keras/v4.0.0a/1/download")
    assert pull.rewrite_detector_url(f"{MD_GITHUB}/md_v5b.0.0.pt") == (
        "http://127.0.0.1:1/md/md_v5b.0.0.pt")
    handle = pull.resolve_name("kaggle:google/speciesnet/pyTorch/v4.0.9z/2", models)
    assert handle.url.endswith("/google/speciesnet/pyTorch/v4.0.9z/2/download")
    with pytest.raises(EdgenetError, match="unknown model name"):
        pull.resolve_name("md_v9", models)


def test_default_manifest_urls_are_the_real_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGENET_MD_BASE_URL", raising=False)
    monkeypatch.delenv("EDGENET_KAGGLE_BASE_URL", raising=False)
    models = pull.load_manifest()
    assert models["md_v5a"].url == f"{MD_GITHUB}/md_v5a.0.0.pt"
    assert models["md_v5b"].url == f"{MD_GITHUB}/md_v5b.0.0.pt"
    assert models["speciesnet-v4.0.2a"].url == (
        "https://www.kaggle.com/api/v1/models/google/speciesnet/pyTorch/v4.0.2a/1/download")


def test_archive_members_cannot_escape(tmp_path: Path) -> None:
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(DownloadError, match="escapes"):
        pull.extract_archive(evil, tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists()
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["evil.tar.gz"]


def test_truncated_archive_is_reported(tmp_path: Path) -> None:
    good = tmp_path / "a.tar.gz"
    with tarfile.open(good, "w:gz") as tar:
        data = os.urandom(200_000)
        info = tarfile.TarInfo("info.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good.read_bytes()[:50_000])
    with pytest.raises(EdgenetError):
        pull.extract_archive(cut, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------
# end to end: pull a (synthetic) SpeciesNet variation, convert it, install it


def _kaggle_tarball(src: Path) -> tuple[bytes, bytes]:
    """(tar.gz of the folder as Kaggle serves a PyTorch variation, detector bytes).

    As in SpeciesNet's Kaggle packages, the detector is not in the archive (info.json names
    it by its GitHub release URL) and there are no Keras files (nor the twin key).
    """
    info = json.loads((src / "info.json").read_text())
    detector = (src / info["detector"]).read_bytes()
    skip = {"info.json", info["detector"], *info.pop("edgenet_keras_classifier", {}).values()}
    info["detector"] = f"{MD_GITHUB}/md_v5a.0.0.pt"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted(src.iterdir()):
            if path.name not in skip:
                tar.add(path, arcname=path.name)
        blob = json.dumps(info, indent=1).encode()
        ti = tarfile.TarInfo("info.json")
        ti.size = len(blob)
        tar.addfile(ti, io.BytesIO(blob))
    return buf.getvalue(), detector


@pytest.fixture()
def pull_env(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
             request: pytest.FixtureRequest) -> dict:
    from test_convert_pack import tiny_source_folder

    src = tiny_source_folder(request)
    tarball, detector = _kaggle_tarball(src)
    manifest = json.loads(pull.manifest_path().read_text())
    manifest["models"]["md_v5a"]["sha256"] = _sha(detector)
    manifest_file = tmp_path / "known_models.json"
    manifest_file.write_text(json.dumps(manifest))
    home = tmp_path / "home"
    monkeypatch.setenv("EDGENET_HOME", str(home))
    monkeypatch.setenv("EDGENET_KNOWN_MODELS", str(manifest_file))
    monkeypatch.setenv("EDGENET_MD_BASE_URL", f"{server.base}/md")
    monkeypatch.setenv("EDGENET_KAGGLE_BASE_URL", f"{server.base}/kaggle")
    archive_path = "/kaggle/google/speciesnet/pyTorch/v4.0.2a/1/download"
    server.routes[archive_path] = Route(tarball)
    server.routes["/md/md_v5a.0.0.pt"] = Route(detector)
    return {"home": home, "archive": archive_path, "tarball": tarball, "detector": detector,
            "manifest": manifest_file}


def _no_pack_left(home: Path) -> None:
    packs = home / "packs"
    leftovers = sorted(p.name for p in packs.iterdir()) if packs.exists() else []
    assert leftovers == [], leftovers


@pytest.mark.convert
def test_pull_truncated_then_resumed_installs_a_pack(pull_env: dict, server: Server) -> None:
    """The archive transfer stops early: clear error, no pack; the next pull resumes the
    `.part` file with a Range request, converts, installs and makes the pack the default."""
    from edgenet.pack import ModelPack, default_pack_dir

    home = pull_env["home"]
    tarball = pull_env["tarball"]
    cut = len(tarball) // 3
    server.routes[pull_env["archive"]] = Route(tarball, truncate_once_at=cut)
    with pytest.raises(DownloadError, match="interrupted"):
        pull.pull("speciesnet-v4.0.2a", variants=(), retries=0, max_images=1)
    _no_pack_left(home)
    part = home / "downloads" / "speciesnet-v4.0.2a.tar.gz.part"
    assert part.stat().st_size == cut

    pack_dir = pull.pull("speciesnet-v4.0.2a", variants=(), retries=0, max_images=1)
    assert (pull_env["archive"], f"bytes={cut}-") in server.log
    assert not part.exists()
    assert pack_dir == home / "packs" / "speciesnet-v4.0.2a"
    pack = ModelPack.load(pack_dir)
    info = json.loads((pack_dir / "info.json").read_text())
    src = info["edgenet"]["source"]
    assert src["detector"]["url"] == f"{MD_GITHUB}/md_v5a.0.0.pt"
    assert src["detector"]["sha256"] == _sha(pull_env["detector"])
    assert pack.synthetic is True
    # First pack installed becomes the default; `models list` shows it.
    assert default_pack_dir().resolve() == pack_dir.resolve()
    listing = pull.list_models()
    names = {p["name"]: p for p in listing["installed"]}
    assert names["speciesnet-v4.0.2a"]["default"] is True
    assert {m["name"]: m["installed"] for m in listing["known"]}["speciesnet-v4.0.2a"]
    # Pulling again refuses without --force instead of silently rebuilding.
    with pytest.raises(EdgenetError, match="already installed"):
        pull.pull("speciesnet-v4.0.2a", variants=())


@pytest.mark.convert
def test_pull_archive_404_leaves_nothing(pull_env: dict, server: Server) -> None:
    server.routes[pull_env["archive"]] = Route(b"", status=404)
    with pytest.raises(DownloadError, match="404"):
        pull.pull("speciesnet-v4.0.2a", variants=(), retries=0, max_images=1)
    _no_pack_left(pull_env["home"])


@pytest.mark.convert
def test_pull_detector_checksum_mismatch_leaves_no_pack(pull_env: dict, server: Server) -> None:
    server.routes["/md/md_v5a.0.0.pt"] = Route(pull_env["detector"][:-10] + b"0123456789")
    with pytest.raises(ChecksumError, match="sha256"):
        pull.pull("speciesnet-v4.0.2a", variants=(), retries=0, max_images=1)
    _no_pack_left(pull_env["home"])
    assert not (pull_env["home"] / "downloads" / "md_v5a.0.0.pt").exists()
    assert not (pull_env["home"] / "downloads" / "md_v5a.0.0.pt.part").exists()


def test_pull_detector_only_downloads_the_checkpoint(server: Server, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(10_000)
    manifest = json.loads(pull.manifest_path().read_text())
    manifest["models"]["md_v5b"]["sha256"] = _sha(data)
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    monkeypatch.setenv("EDGENET_KNOWN_MODELS", str(tmp_path / "m.json"))
    monkeypatch.setenv("EDGENET_MD_BASE_URL", f"{server.base}/md")
    monkeypatch.setenv("EDGENET_HOME", str(tmp_path / "home"))
    server.routes["/md/md_v5b.0.0.pt"] = Route(data)
    out = pull.pull("md_v5b")
    assert out == tmp_path / "home" / "downloads" / "md_v5b.0.0.pt"
    assert out.read_bytes() == data
    assert {m["name"]: m["installed"] for m in pull.list_models()["known"]}["md_v5b"] is True


def test_models_cli_list_and_pull_errors(server: Server, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from converters.cli import models_app

    monkeypatch.setenv("EDGENET_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EDGENET_MD_BASE_URL", f"{server.base}/md")
    runner = CliRunner()
    res = runner.invoke(models_app, ["list"])
    assert res.exit_code == 0, res.output
    assert "md_v5a" in res.output and "speciesnet-v4.0.3a" in res.output
    res = runner.invoke(models_app, ["list", "--json"])
    assert json.loads(res.output)["installed"] == []
    res = runner.invoke(models_app, ["pull", "md_v5a", "--retries", "0"])
    assert res.exit_code == 2
    assert "404" in res.output and "Traceback" not in res.output
    res = runner.invoke(models_app, ["pull", "no-such-model"])
    assert res.exit_code == 2 and "unknown model name" in res.output
    shutil.rmtree(tmp_path / "home", ignore_errors=True)
