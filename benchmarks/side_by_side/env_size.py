"""Installed environment sizes: the reference venv's whole site-packages, and edgenet's
runtime dependency closure (its requirements, extras excluded), read in the target Python."""

from __future__ import annotations

import json
import subprocess
from typing import Any

_SIZE_SNIPPET = r'''
import json, os, re, sys, sysconfig
from importlib import metadata
mode, root = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else ""
def tree_size(path):
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(d, f)).st_size
            except OSError:
                pass
    return total
if mode == "site":
    paths = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    print(json.dumps({"bytes": sum(tree_size(p) for p in paths), "paths": sorted(paths)}))
    raise SystemExit
def norm(n):
    return re.sub(r"[-_.]+", "-", n).lower()
try:
    from packaging.requirements import Requirement
except ImportError:
    Requirement = None
def _installed(name):
    try:
        metadata.distribution(name)
        return True
    except metadata.PackageNotFoundError:
        return False
def deps(dist):
    out = []
    for spec in dist.requires or []:
        if Requirement is not None:
            req = Requirement(spec)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            out.append(req.name)
        elif "extra ==" not in spec:
            out.append(re.split(r"[ ;<>=!~\[(]", spec.strip(), 1)[0])
    return out
seen, todo, total, files = {}, [root], 0, 0
while todo:
    name = norm(todo.pop())
    if name in seen:
        continue
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        # edgenet requires "onnxruntime"; a GPU/OpenVINO/DirectML venv has a flavour instead
        flavours = [f"{name}-{f}" for f in ("openvino", "gpu", "directml")] \
            if name == "onnxruntime" else []
        todo.extend(f for f in flavours if f not in seen and _installed(f))
        seen[name] = None
        continue
    size = 0
    for f in dist.files or []:
        try:
            p = f.locate()
            if os.path.isfile(p) and not os.path.islink(p):
                size += os.path.getsize(p)
                files += 1
        except OSError:
            pass
    if name == norm(root):
        # editable installs list only a .pth: count the package folder itself
        try:
            import importlib.util
            spec = importlib.util.find_spec(root)
            if spec and spec.submodule_search_locations:
                for loc in spec.submodule_search_locations:
                    if "site-packages" not in loc:
                        size += tree_size(loc)
        except Exception:
            pass
    seen[name] = size
    total += size
    todo.extend(deps(dist))
print(json.dumps({"bytes": total, "files": files,
                  "distributions": {k: v for k, v in sorted(seen.items()) if v is not None}}))
'''


def runtime_env_size(python: str, root: str = "edgenet") -> dict[str, Any]:
    """Bytes installed for ROOT's runtime dependency closure in PYTHON's environment (extras
    excluded: torch/tensorflow/onnx are the `convert` extra, not what `edgenet run` needs)."""
    r = subprocess.run([python, "-c", _SIZE_SNIPPET, "closure", root], capture_output=True,
                       text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"size probe failed: {r.stderr[-1000:]}")
    return json.loads(r.stdout)


def site_packages_size(python: str) -> dict[str, Any]:
    """Bytes of PYTHON's whole site-packages (the reference's installed environment)."""
    r = subprocess.run([python, "-c", _SIZE_SNIPPET, "site"], capture_output=True, text=True,
                       timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"size probe failed: {r.stderr[-1000:]}")
    return json.loads(r.stdout)
