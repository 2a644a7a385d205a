"""Minimal YOLOv5 (7.0.x) modules, so a MegaDetector checkpoint loads without the yolov5 package.

Why: a MegaDetector v5 `.pt` is a `torch.save` dict whose "model" entry is a *pickled* yolov5
model: unpickling it needs classes called `models.yolo.Model` / `DetectionModel`, `Detect`,
`models.common.Conv`, `C3`, ... The yolov5 pip package drags in pandas, IPython, requests and
friends and edits `sys.path`; users converting a model should not need it. This module defines
classes with the SAME names and the SAME instance attributes, whose eval-mode forwards compute
exactly what yolov5 7.0.11's compute, and an unpickler that maps the pickled class names onto
them (`load_checkpoint`). The same classes also build synthetic MegaDetector-shaped models
(`converters/synth_detector.py`) and are pickled back under yolov5's names (`save_checkpoint`),
so yolov5's own classes unpickle what we write.

torch is imported at module import time: this module belongs to the `convert` extra and is
only ever imported from inside converter functions.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import pickle
import types
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgenet.errors import EdgenetError


class CheckpointError(EdgenetError):
    """A detector checkpoint cannot be read or is not a YOLOv5/MegaDetector model."""


# --------------------------------------------------------------------------------------------
# models.common
# --------------------------------------------------------------------------------------------


def autopad(k: int | list[int], p: int | None = None, d: int = 1) -> int | list[int]:
    """'same' padding for kernel k and dilation d (yolov5's rule)."""
    if d > 1:
        k = d * (k - 1) + 1 if isinstance(k, int) else [d * (x - 1) + 1 for x in k]
    if p is None:
        p = k // 2 if isinstance(k, int) else [x // 2 for x in k]
    return p


class Conv(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> activation; attributes conv, bn, act as yolov5."""

    # One shared activation instance, as yolov5 (all Conv layers pickle the same SiLU object).
    default_act = nn.SiLU()

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None,
                 g: int = 1, d: int = 1, act: bool | nn.Module = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p, d), groups=g, dilation=d, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        if act is True:
            self.act = self.default_act
        elif isinstance(act, nn.Module):
            self.act = act
        else:
            self.act = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A fused checkpoint (yolov5 `model.fuse()`) has no `bn`: the conv carries it.
        if "bn" not in self._modules:
            return self.act(self.conv(x))
        return self.act(self.bn(self.conv(x)))

    def forward_fuse(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class DWConv(Conv):
    """Depth-wise Conv (groups = gcd(c1, c2))."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, d: int = 1,
                 act: bool | nn.Module = True) -> None:
        super().__init__(c1, c2, k, s, g=math.gcd(c1, c2), d=d, act=act)


class Bottleneck(nn.Module):
    """cv1 (1x1) -> cv2 (3x3), plus the input when `add` (shortcut and c1 == c2)."""

    def __init__(self, c1: int, c2: int, shortcut: bool = True, g: int = 1, e: float = 0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_, c2, 3, 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))


class BottleneckCSP(nn.Module):
    """CSP bottleneck of yolov5 <= v3 checkpoints (kept so old models still load)."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1,
                 e: float = 0.5) -> None:
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = nn.Conv2d(c1, c_, 1, 1, bias=False)
        self.cv3 = nn.Conv2d(c_, c_, 1, 1, bias=False)
        self.cv4 = Conv(2 * c_, c2, 1, 1)
        self.bn = nn.BatchNorm2d(2 * c_)
        self.act = nn.SiLU()
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, e=1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y1 = self.cv3(self.m(self.cv1(x)))
        y2 = self.cv2(x)
        return self.cv4(self.act(self.bn(torch.cat((y1, y2), 1))))


class CrossConv(nn.Module):
    """(1,k) then (k,1) convolutions, optional shortcut (used by C3x)."""

    def __init__(self, c1: int, c2: int, k: int = 3, s: int = 1, g: int = 1, e: float = 1.0,
                 shortcut: bool = False) -> None:
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, (1, k), (1, s))
        self.cv2 = Conv(c_, c2, (k, 1), (s, 1), g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))


class C3(nn.Module):
    """CSP bottleneck with 3 convolutions: cv3(cat(m(cv1(x)), cv2(x)))."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1,
                 e: float = 0.5) -> None:
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(2 * c_, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, e=1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class C3x(C3):
    """C3 with CrossConv bottlenecks."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1,
                 e: float = 0.5) -> None:
        super().__init__(c1, c2, n, shortcut, g, e)
        c_ = int(c2 * e)
        self.m = nn.Sequential(*(CrossConv(c_, c_, 3, 1, g, 1.0, shortcut) for _ in range(n)))


class SPP(nn.Module):
    """Spatial pyramid pooling with parallel max-pools (yolov5 < 6.0)."""

    def __init__(self, c1: int, c2: int, k: tuple[int, ...] = (5, 9, 13)) -> None:
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * (len(k) + 1), c2, 1, 1)
        self.m = nn.ModuleList([nn.MaxPool2d(kernel_size=x, stride=1, padding=x // 2) for x in k])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        return self.cv2(torch.cat([x] + [m(x) for m in self.m], 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained max-pools of the same kernel."""

    def __init__(self, c1: int, c2: int, k: int = 5) -> None:
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class Focus(nn.Module):
    """Space-to-depth then Conv (yolov5 < 6.0 stems)."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None,
                 g: int = 1, act: bool | nn.Module = True) -> None:
        super().__init__()
        self.conv = Conv(c1 * 4, c2, k, s, p, g, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat((x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2],
                                    x[..., 1::2, 1::2]), 1))


class Concat(nn.Module):
    """torch.cat of a list of inputs along `d`."""

    def __init__(self, dimension: int = 1) -> None:
        super().__init__()
        self.d = dimension

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(x, self.d)


# --------------------------------------------------------------------------------------------
# models.yolo
# --------------------------------------------------------------------------------------------


class Detect(nn.Module):
    """YOLOv5 detection head. Eval forward returns (decoded (N, rows, 5+nc), raw per level).

    Decoding as yolov5 7.0: y = sigmoid(raw); xy = (2*y_xy + grid) * stride with grid =
    cell index - 0.5; wh = (2*y_wh)**2 * anchor_grid with anchor_grid = anchors * stride
    (the `anchors` buffer is stored in stride units). Rows are ordered level, anchor, y, x.
    """

    stride = None
    dynamic = False  # always rebuild grids (set for export so they follow the input shape)
    export = False  # return only the decoded tensor

    def __init__(self, nc: int = 80, anchors: Any = (), ch: Any = (), inplace: bool = True):
        super().__init__()
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        self.grid = [torch.empty(0) for _ in range(self.nl)]
        self.anchor_grid = [torch.empty(0) for _ in range(self.nl)]
        self.register_buffer("anchors", torch.tensor(anchors).float().view(self.nl, -1, 2))
        self.m = nn.ModuleList(nn.Conv2d(x, self.no * self.na, 1) for x in ch)
        self.inplace = inplace

    def forward(self, x: list[torch.Tensor]) -> Any:
        x = list(x)
        z = []
        for i in range(self.nl):
            x[i] = self.m[i](x[i])
            bs, _, ny, nx = x[i].shape
            x[i] = x[i].view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            if not self.training:
                grid = self.grid[i] if isinstance(self.grid, list) and i < len(self.grid) else None
                if self.dynamic or grid is None or grid.shape[2:4] != x[i].shape[2:4]:
                    grid, anchor_grid = self._make_grid(nx, ny, i)
                    if not self.dynamic and not torch.jit.is_tracing():
                        self.grid[i], self.anchor_grid[i] = grid, anchor_grid
                else:
                    anchor_grid = self.anchor_grid[i]
                xy, wh, conf = x[i].sigmoid().split((2, 2, self.nc + 1), 4)
                xy = (xy * 2 + grid) * self.stride[i]
                wh = (wh * 2) ** 2 * anchor_grid
                y = torch.cat((xy, wh, conf), 4)
                z.append(y.view(bs, self.na * nx * ny, self.no))
        if self.training:
            return x
        return (torch.cat(z, 1),) if self.export else (torch.cat(z, 1), x)

    def _make_grid(self, nx: int = 20, ny: int = 20, i: int = 0
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.anchors[i].device
        t = self.anchors[i].dtype
        shape = 1, self.na, ny, nx, 2
        y, x = torch.arange(ny, device=d, dtype=t), torch.arange(nx, device=d, dtype=t)
        yv, xv = torch.meshgrid(y, x, indexing="ij")
        grid = torch.stack((xv, yv), 2).expand(shape) - 0.5
        anchor_grid = (self.anchors[i] * self.stride[i]).view((1, self.na, 1, 1, 2)).expand(shape)
        return grid, anchor_grid


class BaseModel(nn.Module):
    """Runs `self.model` (a Sequential of layers tagged with `f` (inputs) and `i` (index))."""

    def forward(self, x: torch.Tensor, profile: bool = False, visualize: bool = False) -> Any:
        return self._forward_once(x)

    def _forward_once(self, x: Any, profile: bool = False, visualize: bool = False) -> Any:
        y: list[Any] = []
        save = set(self.save)
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x)
            y.append(x if m.i in save else None)
        return x

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> BaseModel:
        # .float()/.half()/.to() must also convert Detect's plain-attribute tensors (as yolov5).
        self = super()._apply(fn, *args, **kwargs)
        m = self.model[-1]
        if isinstance(m, Detect):
            if isinstance(m.stride, torch.Tensor):
                m.stride = fn(m.stride)
            m.grid = list(map(fn, m.grid))
            if isinstance(m.anchor_grid, list):
                m.anchor_grid = list(map(fn, m.anchor_grid))
        return self


class DetectionModel(BaseModel):
    """YOLOv5 detection model built from a yaml-style dict (MegaDetector v5 = YOLOv5x6)."""

    def __init__(self, cfg: dict, ch: int = 3, nc: int | None = None) -> None:
        super().__init__()
        self.yaml = copy.deepcopy(cfg)
        ch = self.yaml["ch"] = self.yaml.get("ch", ch)
        if nc and nc != self.yaml["nc"]:
            self.yaml["nc"] = nc
        self.model, self.save = parse_model(copy.deepcopy(self.yaml), ch=[ch])
        self.names = [str(i) for i in range(self.yaml["nc"])]
        self.inplace = self.yaml.get("inplace", True)
        m = self.model[-1]
        if isinstance(m, Detect):
            s = 256  # 2x the largest stride of P6 models' smallest grid
            m.inplace = self.inplace
            with torch.no_grad():
                out = self.forward(torch.zeros(1, ch, s, s))
            m.stride = torch.tensor([s / x.shape[-2] for x in out])
            _check_anchor_order(m)
            m.anchors /= m.stride.view(-1, 1, 1)
            self.stride = m.stride
            self._initialize_biases()
        _initialize_weights(self)

    def forward(self, x: torch.Tensor, augment: bool = False, profile: bool = False,
                visualize: bool = False) -> Any:
        if augment:
            raise NotImplementedError("augmented inference is not used by MegaDetector/SpeciesNet")
        return self._forward_once(x)

    def _initialize_biases(self) -> None:
        # yolov5's prior: ~8 objects per 640 image, uniform class prior.
        m = self.model[-1]
        for mi, s in zip(m.m, m.stride, strict=True):
            b = mi.bias.view(m.na, -1)
            b.data[:, 4] += math.log(8 / (640 / s) ** 2)
            b.data[:, 5:5 + m.nc] += math.log(0.6 / (m.nc - 0.99999))
            mi.bias = torch.nn.Parameter(b.view(-1), requires_grad=True)


Model = DetectionModel  # yolov5 < 6.2 pickled the model as `models.yolo.Model`


def _check_anchor_order(m: Detect) -> None:
    a = m.anchors.prod(-1).mean(-1).view(-1)
    da = a[-1] - a[0]
    ds = m.stride[-1] - m.stride[0]
    if da and (da.sign() != ds.sign()):
        m.anchors[:] = m.anchors.flip(0)


def _initialize_weights(model: nn.Module) -> None:
    """yolov5's initialize_weights: BN eps 1e-3 / momentum 0.03, in-place activations."""
    for m in model.modules():
        t = type(m)
        if t is nn.BatchNorm2d:
            m.eps = 1e-3
            m.momentum = 0.03
        elif t in (nn.Hardswish, nn.LeakyReLU, nn.ReLU, nn.ReLU6, nn.SiLU):
            m.inplace = True


def make_divisible(x: float, divisor: int) -> int:
    return math.ceil(x / divisor) * divisor


_CHANNEL_MODULES = (Conv, Bottleneck, SPP, SPPF, DWConv, Focus, CrossConv, BottleneckCSP, C3, C3x)
_REPEAT_MODULES = (BottleneckCSP, C3, C3x)
_MODULE_NAMES: dict[str, Any] = {
    "Conv": Conv, "DWConv": DWConv, "Bottleneck": Bottleneck, "BottleneckCSP": BottleneckCSP,
    "CrossConv": CrossConv, "C3": C3, "C3x": C3x, "SPP": SPP, "SPPF": SPPF, "Focus": Focus,
    "Concat": Concat, "Detect": Detect, "nn.Upsample": nn.Upsample,
}
# The `type` tag yolov5 attaches to each layer (str(class)[8:-2]): it names yolov5's modules.
_TYPE_TAGS = {Detect: "models.yolo.Detect", nn.Upsample: "torch.nn.modules.upsampling.Upsample"}


def parse_model(d: dict, ch: list[int]) -> tuple[nn.Sequential, list[int]]:
    """Build the layer list from a yolov5 yaml dict (same scaling rules as yolov5's)."""
    anchors, nc, gd, gw = d["anchors"], d["nc"], d["depth_multiple"], d["width_multiple"]
    na = (len(anchors[0]) // 2) if isinstance(anchors, list) else anchors
    no = na * (nc + 5)
    layers, save, c2 = [], [], ch[-1]
    for i, (f, n, m_name, args) in enumerate(d["backbone"] + d["head"]):
        m = _MODULE_NAMES[m_name] if isinstance(m_name, str) else m_name
        args = [{"nc": nc, "anchors": anchors, "None": None}.get(a, a) if isinstance(a, str)
                else a for a in args]
        n = max(round(n * gd), 1) if n > 1 else n
        if m in _CHANNEL_MODULES:
            c1, c2 = ch[f], args[0]
            if c2 != no:
                c2 = make_divisible(c2 * gw, 8)
            args = [c1, c2, *args[1:]]
            if m in _REPEAT_MODULES:
                args.insert(2, n)
                n = 1
        elif m is Concat:
            c2 = sum(ch[x] for x in f)
        elif m is Detect:
            args.append([ch[x] for x in f])
            if isinstance(args[1], int):
                args[1] = [list(range(args[1] * 2))] * len(f)
        else:
            c2 = ch[f]
        m_ = nn.Sequential(*(m(*args) for _ in range(n))) if n > 1 else m(*args)
        t = _TYPE_TAGS.get(m, f"models.common.{m.__name__}")
        m_.i, m_.f, m_.type, m_.np = i, f, t, sum(x.numel() for x in m_.parameters())
        save.extend(x % i for x in ([f] if isinstance(f, int) else f) if x != -1)
        layers.append(m_)
        if i == 0:
            ch = []
        ch.append(c2)
    return nn.Sequential(*layers), sorted(save)


def yolov5_p6_cfg(depth_multiple: float = 1.33, width_multiple: float = 1.25, nc: int = 3
                  ) -> dict:
    """yolov5x6.yaml (P3-P6 heads, strides 8/16/32/64) with the given scaling and classes.

    MegaDetector v5a/v5b are YOLOv5x6 (depth 1.33, width 1.25) trained for 3 classes.
    """
    return {
        "nc": nc,
        "depth_multiple": depth_multiple,
        "width_multiple": width_multiple,
        "anchors": [
            [19, 27, 44, 40, 38, 94],
            [96, 68, 86, 152, 180, 137],
            [140, 301, 303, 264, 238, 542],
            [436, 615, 739, 380, 925, 792],
        ],
        "backbone": [
            [-1, 1, "Conv", [64, 6, 2, 2]],
            [-1, 1, "Conv", [128, 3, 2]],
            [-1, 3, "C3", [128]],
            [-1, 1, "Conv", [256, 3, 2]],
            [-1, 6, "C3", [256]],
            [-1, 1, "Conv", [512, 3, 2]],
            [-1, 9, "C3", [512]],
            [-1, 1, "Conv", [768, 3, 2]],
            [-1, 3, "C3", [768]],
            [-1, 1, "Conv", [1024, 3, 2]],
            [-1, 3, "C3", [1024]],
            [-1, 1, "SPPF", [1024, 5]],
        ],
        "head": [
            [-1, 1, "Conv", [768, 1, 1]],
            [-1, 1, "nn.Upsample", ["None", 2, "nearest"]],
            [[-1, 8], 1, "Concat", [1]],
            [-1, 3, "C3", [768, False]],
            [-1, 1, "Conv", [512, 1, 1]],
            [-1, 1, "nn.Upsample", ["None", 2, "nearest"]],
            [[-1, 6], 1, "Concat", [1]],
            [-1, 3, "C3", [512, False]],
            [-1, 1, "Conv", [256, 1, 1]],
            [-1, 1, "nn.Upsample", ["None", 2, "nearest"]],
            [[-1, 4], 1, "Concat", [1]],
            [-1, 3, "C3", [256, False]],
            [-1, 1, "Conv", [256, 3, 2]],
            [[-1, 20], 1, "Concat", [1]],
            [-1, 3, "C3", [512, False]],
            [-1, 1, "Conv", [512, 3, 2]],
            [[-1, 16], 1, "Concat", [1]],
            [-1, 3, "C3", [768, False]],
            [-1, 1, "Conv", [768, 3, 2]],
            [[-1, 12], 1, "Concat", [1]],
            [-1, 3, "C3", [1024, False]],
            [[23, 26, 29, 32], 1, "Detect", ["nc", "anchors"]],
        ],
    }


# --------------------------------------------------------------------------------------------
# pickling under yolov5's names
# --------------------------------------------------------------------------------------------

_COMMON_CLASSES = {c.__name__: c for c in (
    Conv, DWConv, Bottleneck, BottleneckCSP, CrossConv, C3, C3x, SPP, SPPF, Focus, Concat)}
_YOLO_CLASSES = {"Detect": Detect, "DetectionModel": DetectionModel, "Model": DetectionModel,
                 "BaseModel": BaseModel}
_PICKLE_NAMES: dict[type, tuple[str, str]] = {
    **{c: ("models.common", n) for n, c in _COMMON_CLASSES.items()},
    Detect: ("models.yolo", "Detect"),
    BaseModel: ("models.yolo", "BaseModel"),
}


class _PlaceholderObject:
    """Stands in for non-module helper objects of yolov5 (never needed for inference)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.__dict__.update(state)


def _resolve_yolov5_class(module: str, name: str) -> Any | None:
    """Map a pickled yolov5 class path onto ours, or None when it is not a yolov5 path."""
    mod = module.removeprefix("yolov5.")
    if mod == "models.common":
        if name in _COMMON_CLASSES:
            return _COMMON_CLASSES[name]
    elif mod == "models.yolo":
        if name in _YOLO_CLASSES:
            return _YOLO_CLASSES[name]
    elif mod.startswith("utils.") or mod == "utils":
        return _PlaceholderObject
    else:
        return None
    raise CheckpointError(
        f"the checkpoint uses the yolov5 layer {module}.{name}, which this converter does not "
        "implement (MegaDetector v5 needs only Conv, C3, Bottleneck, SPPF, Concat, Upsample, "
        "Detect)",
        fix="install the yolov5 package (pip install yolov5) and convert with it present",
    )


class _Unpickler(pickle.Unpickler):
    """Unpickler that serves yolov5's class names from this module."""

    def find_class(self, module: str, name: str) -> Any:
        cls = _resolve_yolov5_class(module, name)
        if cls is not None:
            return cls
        return super().find_class(module, name)


class _Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Pure-Python pickler that writes our classes under yolov5's module paths.

    The C pickler verifies that `module.qualname` imports back to the same object; our classes
    live in `converters.yolo_modules`, so we write the GLOBAL opcode ourselves instead.
    """

    model_class_name = "DetectionModel"

    def save_global(self, obj: Any, name: str | None = None) -> None:
        target = None
        if isinstance(obj, type) and obj is DetectionModel:
            target = ("models.yolo", self.model_class_name)
        elif isinstance(obj, type):
            target = _PICKLE_NAMES.get(obj)
        if target is None:
            return super().save_global(obj, name)
        module, qualname = target
        if self.proto >= 4:
            self.save(module)
            self.save(qualname)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + module.encode() + b"\n" + qualname.encode() + b"\n")
        self.memoize(obj)


def _pickle_module(model_class_name: str) -> types.ModuleType:
    pickler = type("_Pickler", (_Pickler,), {"model_class_name": model_class_name})
    mod = types.ModuleType("edgenet_yolov5_pickle")
    mod.Pickler = pickler
    mod.Unpickler = _Unpickler
    mod.load = pickle.load
    mod.dump = pickle.dump
    return mod


def save_checkpoint(ckpt: dict, dst: Path, *, model_class_name: str = "DetectionModel") -> None:
    """torch.save `ckpt` with our classes written as `models.yolo.*` / `models.common.*`.

    model_class_name "DetectionModel" (yolov5 >= 6.2) or "Model" (what MegaDetector v5's
    release files, trained with yolov5 6.1, pickle); yolov5 7.0 resolves both.
    """
    if model_class_name not in ("DetectionModel", "Model"):
        raise ValueError("model_class_name must be 'DetectionModel' or 'Model'")
    torch.save(ckpt, str(dst), pickle_module=_pickle_module(model_class_name))


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------


def _yolov5_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("yolov5") is not None


def _torch_load(path: Path, pickle_module: Any | None) -> Any:
    kwargs: dict[str, Any] = {"map_location": "cpu", "weights_only": False}
    if pickle_module is not None:
        kwargs["pickle_module"] = pickle_module
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(str(path), **kwargs)


def _fix_compat(model: nn.Module) -> list[str]:
    """Patch attributes older yolov5 / torch versions did not pickle. Returns notes."""
    notes: list[str] = []
    for m in model.modules():
        if isinstance(m, nn.Upsample) and not hasattr(m, "recompute_scale_factor"):
            m.recompute_scale_factor = None
            if "recompute_scale_factor" not in notes:
                notes.append("recompute_scale_factor")
        if type(m).__name__ == "Detect":
            # yolov5 < 6.0 kept anchor_grid as a registered buffer; 6.x keeps lists of tensors.
            if "anchor_grid" in getattr(m, "_buffers", {}):
                del m._buffers["anchor_grid"]
                m.anchor_grid = [torch.empty(0) for _ in range(m.nl)]
                notes.append("anchor_grid buffer replaced by list")
            if not hasattr(m, "grid") or not isinstance(m.grid, list):
                m.grid = [torch.empty(0) for _ in range(m.nl)]
            if not hasattr(m, "anchor_grid"):
                m.anchor_grid = [torch.empty(0) for _ in range(m.nl)]
            if not hasattr(m, "inplace"):
                m.inplace = True
    return notes


def _stale_grids(model: nn.Module) -> list[int]:
    """Detect levels whose pickled grid differs from the grid yolov5 7 would build.

    yolov5 7 reuses a pickled grid when its shape matches the input's; yolov5 <= 6.1 grids
    lacked the -0.5 offset. Such a reuse only happens for one input shape; we report it.
    """
    stale: list[int] = []
    det = model.model[-1] if hasattr(model, "model") else None
    if det is None or not isinstance(getattr(det, "grid", None), list):
        return stale
    for i, g in enumerate(det.grid):
        if isinstance(g, torch.Tensor) and g.numel() > 0 and g.dim() == 5:
            ny, nx = g.shape[2], g.shape[3]
            fresh, _ = Detect._make_grid(det, nx, ny, i)
            if fresh.shape != g.shape or not torch.equal(fresh.to(g.dtype), g):
                stale.append(i)
    return stale


def load_checkpoint(path: Path, *, use_yolov5: bool = False, info: dict | None = None
                    ) -> nn.Module:
    """Load a MegaDetector/YOLOv5 `.pt` as an fp32 eval-mode torch module.

    Without `use_yolov5` the pickled `models.yolo.*` / `models.common.*` (and `yolov5.models.*`)
    classes map onto this module's classes, so the yolov5 package is not needed. With
    `use_yolov5` the yolov5 package's own classes are used (as speciesnet does) and it must be
    importable. fp16 checkpoints (MegaDetector's release files are fp16) are converted with
    `.float()`, exactly as speciesnet does, so the fp32 model is the fidelity reference.
    `info`, when given, receives what was found (stored precision, checkpoint keys, fixes).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("detector checkpoint not found", path=path,
                              fix="pass the path of a MegaDetector v5 .pt file")
    if use_yolov5:
        if not _yolov5_available():
            raise CheckpointError("use_yolov5 was requested but the yolov5 package is missing",
                                  path=path, fix="pip install yolov5, or load without it")
        import yolov5  # noqa: F401  (puts yolov5's root on sys.path: `models.*` resolves)
        pickle_module = None
    else:
        pickle_module = _pickle_module("DetectionModel")
    try:
        ckpt = _torch_load(path, pickle_module)
    except EdgenetError:
        raise
    except Exception as err:  # corrupt zip, truncated download, not a torch file
        raise CheckpointError(f"cannot read the checkpoint ({type(err).__name__}: {err})",
                              path=path,
                              fix="download the file again (it may be truncated or corrupt)"
                              ) from err
    if isinstance(ckpt, dict):
        model = ckpt.get("model") or ckpt.get("ema")
        keys = sorted(str(k) for k in ckpt)
    else:
        model, keys = ckpt, []
    if not isinstance(model, nn.Module) or not hasattr(model, "model"):
        raise CheckpointError(
            "the checkpoint holds no YOLOv5 model (expected a dict with a 'model' module)",
            path=path, fix="pass a MegaDetector v5 checkpoint (md_v5a.0.0.pt / md_v5b.0.0.pt)")
    if not isinstance(model.model[-1], nn.Module) or type(model.model[-1]).__name__ != "Detect":
        raise CheckpointError("the model's last layer is not a YOLOv5 Detect head", path=path,
                              fix="pass a YOLOv5 detection checkpoint (MegaDetector v5)")
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()})
    notes = _fix_compat(model)
    model = model.float().eval()
    for p in model.parameters():
        p.requires_grad = False
    if info is not None:
        info.update({
            "stored_dtypes": dtypes,
            "checkpoint_keys": keys,
            "classes": "yolov5" if use_yolov5 else "edgenet",
            "compat_fixes": notes,
            "stale_grid_levels": _stale_grids(model),
            "model_class": f"{type(model).__module__}.{type(model).__name__}",
        })
    return model


def yolov5_names_in_pickle(path: Path) -> list[str]:
    """The `module.name` globals a checkpoint's data.pkl refers to (for tests and reports)."""
    import zipfile

    names: set[str] = set()
    with zipfile.ZipFile(path) as zf:
        pkl = next(n for n in zf.namelist() if n.endswith("data.pkl"))
        data = zf.read(pkl)
    import pickletools

    with contextlib.redirect_stdout(io.StringIO()):
        ops = list(pickletools.genops(data))
    strings: list[str] = []
    for op, arg, _ in ops:
        if op.name == "GLOBAL":
            names.add(str(arg).replace(" ", "."))
        elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(str(arg))
        elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
            names.add(f"{strings[-2]}.{strings[-1]}")
    return sorted(names)


__all__ = [
    "C3", "SPPF", "Bottleneck", "CheckpointError", "Concat", "Conv", "Detect", "DetectionModel",
    "Model", "load_checkpoint", "parse_model", "save_checkpoint", "yolov5_p6_cfg",
    "yolov5_names_in_pickle",
]

