"""uint8 pixels -> float16 in [0, 1] for fp16 packs, bit for bit what float32 then float16 gives.

Both models' inputs are `float32(pixels / 255)` (the reference's arithmetic; the detector's
NCHW in `detector.to_tensor`, the classifier's NHWC in `classifier.preprocess_input`). An
fp16 pack takes those values rounded to float16, which the runtime used to compute as float32
and then `astype(float16)`: numpy's float16 conversion is a slow per-element loop (62 ms for a
batch of eight 1280 x 960 detector images on the AMD EPYC VM, of which the float32 tensor is
18-19 ms; 9.2 ms for 8 classifier crops). Only 256 values exist, so a table of their float16 bit
patterns, indexed by the pixels (`np.take`, uint16 out), gives the same bits in one pass: 24 ms
and 5.4 ms (benchmarks/NOTES.md entry 26). On a GPU these run on the pipeline's stage threads,
which set its rate (entry 23).
"""

from __future__ import annotations

import numpy as np

# float16(float32(v / 255)) for v = 0..255, as bit patterns: the float64 division rounded to
# float32 first, as `to_tensor`/`preprocess_input` compute it, then to float16.
UNIT_FLOAT16_BITS: np.ndarray = (
    (np.arange(256, dtype=np.float64) / 255.0).astype(np.float32).astype(np.float16)
    .view(np.uint16)
)
UNIT_FLOAT16_BITS.setflags(write=False)


def unit_float16(pixels: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """float16 PIXELS / 255 (as float32 first) for uint8 PIXELS of any shape, written to OUT
    (float16, PIXELS' shape) when given. Returns the float16 array."""
    if pixels.dtype != np.uint8:
        raise ValueError(f"unit_float16 takes uint8 pixels, got {pixels.dtype}")
    if out is None:
        return np.take(UNIT_FLOAT16_BITS, pixels).view(np.float16)
    # mode="clip" changes nothing for uint8 indices into 256 entries, and spares the copy
    # through a buffer that numpy makes for an `out` under the default mode="raise"
    np.take(UNIT_FLOAT16_BITS, pixels, out=out.view(np.uint16), mode="clip")
    return out
