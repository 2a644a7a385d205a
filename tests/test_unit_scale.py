"""uint8 -> float16 input scaling for fp16 packs: the table gives what float32-then-float16
gave, bit for bit, in the detector's NCHW batches and the classifier's NHWC crops."""

from __future__ import annotations

import numpy as np
import pytest

from edgenet.classifier import preprocess_input
from edgenet.detector import to_tensor
from edgenet.unit_scale import UNIT_FLOAT16_BITS, unit_float16


def _bits(a: np.ndarray) -> bytes:
    assert a.dtype == np.float16
    return a.view(np.uint16).tobytes()


def test_table_is_float32_division_rounded_to_float16_for_all_values() -> None:
    values = np.arange(256, dtype=np.uint8)
    want = np.divide(values, np.float32(255), dtype=np.float32).astype(np.float16)
    assert _bits(unit_float16(values)) == _bits(want)
    assert UNIT_FLOAT16_BITS[0] == 0 and UNIT_FLOAT16_BITS[255] == np.float16(1).view(np.uint16)
    with pytest.raises(ValueError, match="uint8"):
        unit_float16(values.astype(np.int16))
    with pytest.raises(ValueError):
        UNIT_FLOAT16_BITS[1] = 0  # read-only: one table for the process


@pytest.mark.parametrize("rows", [None, 4])
def test_detector_tensor_in_float16_is_the_float32_tensor_rounded(rows) -> None:
    rng = np.random.default_rng(7)
    imgs = [rng.integers(0, 256, (64, 96, 3), dtype=np.uint8) for _ in range(3)]
    imgs[0][:16, :16] = np.arange(256, dtype=np.uint8).reshape(16, 16, 1)  # every value
    got = to_tensor(imgs, rows, np.float16)
    want = to_tensor(imgs, rows).astype(np.float16)
    assert got.shape == want.shape == (rows or 3, 3, 64, 96)
    assert _bits(got) == _bits(want)
    with pytest.raises(ValueError, match="float32 or float16"):
        to_tensor(imgs, rows, np.float64)


def test_classifier_input_in_float16_is_the_float32_input_rounded() -> None:
    crops = np.random.default_rng(8).integers(0, 256, (2, 48, 40, 3), dtype=np.uint8)
    crops[0, :16, :16] = np.arange(256, dtype=np.uint8).reshape(16, 16, 1)
    got = preprocess_input(crops, np.float16)
    assert _bits(got) == _bits(preprocess_input(crops).astype(np.float16))
    scaled = preprocess_input(crops)  # already-scaled float input is only cast
    assert _bits(preprocess_input(scaled, np.float16)) == _bits(scaled.astype(np.float16))
    assert preprocess_input(crops).dtype == np.float32
