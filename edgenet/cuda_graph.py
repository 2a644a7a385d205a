"""The classifier's runs replayed as one CUDA graph (`EDGENET_CUDA_GRAPH=1`, off by default).

Why: the classifier is ~1,150 ONNX nodes (EfficientNetV2-M: 245 convolutions, each followed by
elementwise nodes), so every run of onnxruntime's CUDA provider launches several hundred
kernels, most of them tiny in the later stages (15 x 15 and 30 x 30 activations), one at a
time from the calling thread. On the H100 an 8-crop batch took 14.9 ms with its input and
output on the device (benchmarks/NOTES.md entry 9), ~22 TFLOP/s, a few percent of the GPU's
rate, and ~50 ms inside the pipeline while the detector shared the GPU (entry 23). onnxruntime
can capture a session's run once and replay it as a CUDA graph (provider option
`enable_cuda_graph`), one launch per run. Not yet measured on a GPU: a measurement switch, as
`EDGENET_DEVICE_PIXELS` was (entry 25 holds the prediction).

What a graph needs, and why only the classifier: a replay reads and writes the device
addresses of the run it captured, so input and output must stay at fixed addresses: one input
and one output buffer per session, allocated once at the batch shape and bound once
(`FixedBindingRunner`); each run copies the batch into the input (`OrtValue.update_inplace`),
replays, and copies the output back (`update_inplace` holds the GIL while it copies, as
`bind_cpu_input` does). So every run must have one shape: the classifier's do on a GPU
(`fixed_batch`, 8 crops padded); the detector's follow the letterbox shape (four in the test
set), which would need a graph and a pair of buffers each (onnxruntime's `gpu_graph_id` run
option keeps several graphs per session; not built until the classifier's is measured). A
session built with the option
must never be run through any other binding: a run with other buffers after the capture
replays the captured ones (the reason `EDGENET_CUDA_OPTIONS` refuses `enable_cuda_graph`).
Hence no background warm-up run in this mode (`components`), and when a graph run fails the
model is given a plain session (`give_up`) and the run goes on as without the switch.

On other providers the same fixed binding runs without a graph (a CPU run with
`EDGENET_CUDA_GRAPH=1 EDGENET_FIXED_BATCH=1` takes this path: how the tests check it).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import onnxruntime as ort

from edgenet.errors import warn

CUDA_PROVIDER = "CUDAExecutionProvider"


def wanted() -> bool:
    """`EDGENET_CUDA_GRAPH=1`: the classifier runs through a fixed binding (a CUDA graph on
    CUDA)."""
    return os.environ.get("EDGENET_CUDA_GRAPH", "0").strip() == "1"


def graph_options(providers: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """PROVIDERS with CUDA's graph capture on, when CUDA runs first (TensorRT, which would
    come before it, has its own graph option; other providers have none)."""
    if not providers or providers[0][0] != CUDA_PROVIDER:
        return providers
    name, opts = providers[0]
    return [(name, {**opts, "enable_cuda_graph": "1"}), *providers[1:]]


def captures(sess: Any) -> bool:
    """True when SESS was built with CUDA graph capture on."""
    try:
        opts = sess.get_provider_options().get(CUDA_PROVIDER, {})
    except AttributeError:
        return False
    return str(opts.get("enable_cuda_graph", "0")) == "1"


_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
                "tensor(uint8)": np.uint8}


class FixedBindingRunner:
    """Runs SESS on ROWS x (input's other dims) at one fixed pair of buffers.

    The buffers live where the session's first provider computes (the GPU for CUDA, else host
    memory) and are bound once; `run` copies a batch in, runs (a graph replay after the
    capture, on CUDA with the option) and returns a host copy of the output."""

    def __init__(self, sess: Any, input_name: str, output_name: str, rows: int,
                 sample_shape: tuple[int, ...], output_width: int) -> None:
        self.sess = sess
        self.shape = (rows, *sample_shape)
        inputs = {i.name: i for i in sess.get_inputs()}
        outputs = {o.name: o for o in sess.get_outputs()}
        self.input_dtype = _NUMPY_TYPES[inputs[input_name].type]
        output_dtype = _NUMPY_TYPES[outputs[output_name].type]
        from edgenet.providers import _device_id

        on_cuda = sess.get_providers()[0] == CUDA_PROVIDER
        device = "cuda" if on_cuda else "cpu"
        device_id = _device_id(sess) if on_cuda else 0
        new = ort.OrtValue.ortvalue_from_shape_and_type
        self.input = new(list(self.shape), self.input_dtype, device, device_id)
        self.output = new([rows, output_width], output_dtype, device, device_id)
        self.binding = sess.io_binding()
        self.binding.bind_ortvalue_input(input_name, self.input)
        self.binding.bind_ortvalue_output(output_name, self.output)
        self.runs = 0

    def run(self, batch: np.ndarray) -> np.ndarray:
        """The session's output for BATCH, which must have exactly the runner's shape."""
        if batch.shape != self.shape or batch.dtype != self.input_dtype:
            raise ValueError(f"a fixed binding of {self.shape} {np.dtype(self.input_dtype)} "
                             f"got {batch.shape} {batch.dtype}")
        self.input.update_inplace(np.ascontiguousarray(batch))
        self.sess.run_with_iobinding(self.binding)
        self.runs += 1
        return np.array(self.output.numpy())  # a copy: the buffer is rewritten next run


def runner_for(model: Any, x: np.ndarray) -> FixedBindingRunner | None:
    """MODEL's fixed-binding runner for rows like X's, built on first use; None when MODEL does
    not run that way (the switch off, batches not fixed, input not in the model's type). A
    session that captures graphs is never left to a plain run: where its runner cannot take X,
    the mode ends for MODEL (`give_up`) and it gets a plain session first."""
    if not getattr(model, "fixed_binding", False):
        return None
    why_not = None
    if not model.fixed_batch:
        why_not = "its batches are not of one size (one crop a batch, or EDGENET_FIXED_BATCH=0)"
    elif x.dtype != model.input_dtype or x.ndim < 2:
        why_not = f"its input came as {x.dtype}, not {np.dtype(model.input_dtype)}"
    runner = model._fixed_runner
    if why_not is None and runner is not None and runner.shape == (model.fixed_batch,
                                                                   *x.shape[1:]):
        return runner
    if captures(model.session) and (why_not is not None or runner is not None):
        # A captured graph keeps its buffers: a new shape (the batch halved after an
        # out-of-memory error) or another binding needs a session of its own.
        give_up(model, why_not or "the batch shape changed after the capture")
        return None
    if why_not is not None:
        return None
    model._fixed_runner = FixedBindingRunner(
        model.session, model.input_name, model.output_name, model.fixed_batch,
        tuple(x.shape[1:]), len(model.labels))
    return model._fixed_runner


def give_up(model: Any, reason: object) -> None:
    """Stop MODEL's fixed-binding runs for the rest of the process: warn, and where its
    session captures CUDA graphs, replace it with a plain one (`model.plain_session()`), since
    that session must not be run any other way."""
    warn(f"EDGENET_CUDA_GRAPH: the classifier's fixed-binding runs stopped ({reason}); "
         "running it as without the switch")
    model.fixed_binding = False
    model._fixed_runner = None
    if captures(model.session):
        rebuild: Callable[[], Any] | None = getattr(model, "plain_session", None)
        if rebuild is None:
            raise RuntimeError("a CUDA-graph session without a plain session to fall back on")
        model.session = rebuild()
