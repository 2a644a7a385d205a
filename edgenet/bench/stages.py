"""Stage names, labels and colours shared by the bench cells, report and chart."""

from __future__ import annotations

STAGES: tuple[str, ...] = ("decode_letterbox", "detector", "nms", "crop", "classifier", "ensemble")
STAGE_LABELS: dict[str, str] = {
    "decode_letterbox": "decode+letterbox",
    "detector": "detector",
    "nms": "NMS",
    "crop": "crop",
    "classifier": "classifier",
    "ensemble": "ensemble",
}
STAGE_COLOURS: dict[str, tuple[int, int, int]] = {
    "decode_letterbox": (0x02, 0x9E, 0x73),
    "detector": (0xDE, 0x8F, 0x05),
    "nms": (0xCC, 0x78, 0xBC),
    "crop": (0xCA, 0x91, 0x61),
    "classifier": (0x01, 0x73, 0xB2),
    "ensemble": (0x94, 0x94, 0x94),
}
REPORT_FORMAT = "edgenet-bench/1"
