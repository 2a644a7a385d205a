"""edgenet.providers: --device mapping, availability errors, sessions, I/O binding fallback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from tinyonnx import affine_model

from edgenet import providers
from edgenet.errors import EdgenetError, PackError


def _tiny_model(path: Path) -> Path:
    """y = 2 * x + 1 on a (N, 4) float tensor."""
    return affine_model(path, np.float32(2.0), np.float32(1.0), op="Mul")


@pytest.fixture()
def tiny_model(tmp_path: Path) -> Path:
    return _tiny_model(tmp_path / "tiny.onnx")


@pytest.fixture()
def fake_providers(monkeypatch: pytest.MonkeyPatch):
    """Pretend onnxruntime offers the given providers (for mapping logic only)."""

    def apply(*names: str) -> None:
        listed = [*names, "CPUExecutionProvider"]
        monkeypatch.setattr(ort, "get_available_providers", lambda: listed)

    return apply


def test_available_devices_always_has_cpu() -> None:
    devs = providers.available_devices()
    assert set(devs) == {"cpu", "cuda", "tensorrt", "dml", "openvino", "coreml"}
    assert devs["cpu"] is True
    have = set(ort.get_available_providers())
    assert devs["cuda"] == ("CUDAExecutionProvider" in have)


def test_cpu_resolves_to_cpu_only() -> None:
    assert providers.resolve_providers("cpu") == [("CPUExecutionProvider", {})]
    assert providers.resolve_providers(" CPU ") == [("CPUExecutionProvider", {})]


def test_auto_always_ends_with_cpu() -> None:
    names = [n for n, _ in providers.resolve_providers("auto")]
    assert names[-1] == "CPUExecutionProvider"
    assert "TensorrtExecutionProvider" not in names


def test_unknown_device_and_precision_raise() -> None:
    with pytest.raises(EdgenetError, match="unknown device 'gpu0'"):
        providers.resolve_providers("gpu0")
    with pytest.raises(EdgenetError, match="unknown precision"):
        providers.resolve_providers("cpu", precision="fp8")


@pytest.mark.parametrize(
    ("device", "hint"),
    [("cuda", "edgenet[gpu]"), ("tensorrt", "tensorrt"), ("dml", "onnxruntime-directml"),
     ("openvino", "onnxruntime-openvino"), ("coreml", "macOS")],
)
def test_unavailable_device_names_the_package(fake_providers, device: str, hint: str) -> None:
    fake_providers()  # CPU only
    with pytest.raises(EdgenetError) as err:
        providers.resolve_providers(device)
    msg = str(err.value)
    assert providers.DEVICE_PROVIDERS[device] in msg and hint in msg and "fix:" in msg


def test_auto_prefers_cuda_then_dml_then_openvino(fake_providers) -> None:
    fake_providers("TensorrtExecutionProvider", "CUDAExecutionProvider", "DmlExecutionProvider")
    names = [n for n, _ in providers.resolve_providers("auto")]
    assert names == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    fake_providers("OpenVINOExecutionProvider", "DmlExecutionProvider")
    assert providers.resolve_providers("auto")[0][0] == "DmlExecutionProvider"
    fake_providers("CoreMLExecutionProvider", "OpenVINOExecutionProvider")
    assert providers.resolve_providers("auto")[0][0] == "OpenVINOExecutionProvider"
    fake_providers("CoreMLExecutionProvider")
    assert providers.resolve_providers("auto")[0][0] == "CoreMLExecutionProvider"


def test_cuda_uses_heuristic_conv_search(fake_providers) -> None:
    fake_providers("CUDAExecutionProvider")
    (name, opts), cpu = providers.resolve_providers("cuda")
    assert name == "CUDAExecutionProvider"
    assert opts["cudnn_conv_algo_search"] == "HEURISTIC"
    assert cpu == ("CPUExecutionProvider", {})


def test_cuda_options_from_the_environment(fake_providers, monkeypatch) -> None:
    """EDGENET_CUDA_OPTIONS adds or replaces CUDA options (also behind TensorRT), nothing else."""
    fake_providers("TensorrtExecutionProvider", "CUDAExecutionProvider")
    monkeypatch.setenv("EDGENET_CUDA_OPTIONS",
                       " prefer_nhwc=1, cudnn_conv_algo_search=EXHAUSTIVE ,")
    (_, opts), _ = providers.resolve_providers("cuda")
    assert opts == {"cudnn_conv_algo_search": "EXHAUSTIVE", "prefer_nhwc": "1"}
    (_, trt_opts), (_, cuda_opts), _ = providers.resolve_providers("tensorrt")
    assert "prefer_nhwc" not in trt_opts and cuda_opts["prefer_nhwc"] == "1"
    assert providers.resolve_providers("cpu") == [("CPUExecutionProvider", {})]
    monkeypatch.setenv("EDGENET_CUDA_OPTIONS", "prefer_nhwc")
    with pytest.raises(EdgenetError, match="not key=value"):
        providers.resolve_providers("cuda")


def test_tensorrt_cache_and_fp16(fake_providers, monkeypatch, tmp_path: Path) -> None:
    fake_providers("TensorrtExecutionProvider", "CUDAExecutionProvider")
    monkeypatch.setenv("EDGENET_HOME", str(tmp_path / "home"))
    resolved = providers.resolve_providers("tensorrt", precision="fp16")
    assert [n for n, _ in resolved] == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
    ]
    trt = resolved[0][1]
    assert trt["trt_engine_cache_enable"] is True
    assert Path(trt["trt_engine_cache_path"]).is_relative_to(tmp_path / "home")
    assert trt["trt_fp16_enable"] is True
    assert providers.resolve_providers("tensorrt")[0][1]["trt_fp16_enable"] is False


def test_bf16_is_openvino_computing_the_fp32_graphs_in_bfloat16(fake_providers,
                                                                  monkeypatch) -> None:
    """bf16: OpenVINO's CPU plugin with the bf16 inference-precision hint; fp32 on OpenVINO
    keeps its (fp32) defaults."""
    import json

    fake_providers("OpenVINOExecutionProvider")
    monkeypatch.setattr("edgenet.run_defaults.cpu_flags", lambda: ["avx512f", "avx512_bf16"])
    for device in ("auto", "openvino", " OpenVINO "):
        (name, opts), cpu = providers.resolve_providers(device, precision="bf16")
        assert name == "OpenVINOExecutionProvider" and cpu == ("CPUExecutionProvider", {})
        assert opts["device_type"] == "CPU"
        assert json.loads(opts["load_config"]) == {"CPU": {"INFERENCE_PRECISION_HINT": "bf16"}}
    assert providers.resolve_providers("openvino")[0] == ("OpenVINOExecutionProvider", {})
    monkeypatch.setattr("edgenet.run_defaults.cpu_flags", lambda: ["avx2", "amx_bf16"])
    assert providers.resolve_providers("auto", precision="bf16")[0][0] == (
        "OpenVINOExecutionProvider")
    # Flags unknown (no /proc/cpuinfo): OpenVINO decides, edgenet does not guess.
    monkeypatch.setattr("edgenet.run_defaults.cpu_flags", lambda: [])
    assert providers.resolve_providers("openvino", precision="bf16")[0][0] == (
        "OpenVINOExecutionProvider")


def test_bf16_errors_say_what_to_do(fake_providers, monkeypatch) -> None:
    monkeypatch.setattr("edgenet.run_defaults.cpu_flags", lambda: ["avx2", "avx512_bf16"])
    fake_providers("CUDAExecutionProvider", "OpenVINOExecutionProvider")
    for device in ("cpu", "cuda"):
        with pytest.raises(EdgenetError, match="runs through OpenVINO") as err:
            providers.resolve_providers(device, precision="bf16")
        assert "--device openvino" in str(err.value)
    fake_providers("CUDAExecutionProvider")  # no OpenVINO: auto must not pick CUDA for bf16
    with pytest.raises(EdgenetError, match="onnxruntime-openvino") as err:
        providers.resolve_providers("auto", precision="bf16")
    assert "--precision bf16 needs" in str(err.value) and "--device auto" not in str(err.value)
    fake_providers("OpenVINOExecutionProvider")
    monkeypatch.setattr("edgenet.run_defaults.cpu_flags", lambda: ["avx2", "fma", "avx512f"])
    with pytest.raises(EdgenetError, match="AVX512_BF16 or AMX"):
        providers.resolve_providers("auto", precision="bf16")


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_bf16_session_that_falls_back_to_the_cpu_raises(tiny_model: Path, monkeypatch) -> None:
    """Even with --device auto: a bf16 run that onnxruntime quietly put on its CPU provider
    would be an fp32 run under a bf16 label."""
    if "OpenVINOExecutionProvider" in ort.get_available_providers():
        pytest.skip("OpenVINO provider really present here")
    monkeypatch.setattr(
        providers, "available_devices",
        lambda: {d: d in ("cpu", "openvino") for d in providers.DEVICE_PROVIDERS},
    )
    monkeypatch.setattr("edgenet.run_defaults.cpu_flags", lambda: ["avx512_bf16"])
    with pytest.raises(EdgenetError, match="failed to initialise") as err:
        providers.make_session(tiny_model, device="auto", precision="bf16")
    assert "onnxruntime-openvino" in str(err.value) and "--precision fp32" in str(err.value)


def test_make_session_runs_on_cpu(tiny_model: Path) -> None:
    sess = providers.make_session(tiny_model, device="cpu", threads=1)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    (y,) = sess.run(None, {"x": x})
    np.testing.assert_array_equal(y, 2 * x + 1)
    assert sess.get_providers() == ["CPUExecutionProvider"]
    assert sess.get_session_options().intra_op_num_threads == 1
    desc = providers.describe_session(sess)
    assert "CPUExecutionProvider" in desc and "x:tensor(float)['N', 4]" in desc
    assert "threads 1" in desc


def test_make_session_auto_works(tiny_model: Path) -> None:
    sess = providers.make_session(tiny_model)
    assert sess.get_providers()[-1] == "CPUExecutionProvider"
    assert providers.session_device(sess) in providers.DEVICE_PROVIDERS


def test_run_with_iobinding_falls_back_to_run_on_cpu(tiny_model: Path) -> None:
    sess = providers.make_session(tiny_model, device="cpu")
    x = np.random.default_rng(0).random((3, 4), dtype=np.float32)
    (y,) = providers.run_with_iobinding(sess, {"x": x})
    np.testing.assert_array_equal(y, sess.run(["y"], {"x": x})[0])


def test_make_session_bad_files(tmp_path: Path) -> None:
    with pytest.raises(PackError, match="not found"):
        providers.make_session(tmp_path / "missing.onnx", device="cpu")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a protobuf")
    with pytest.raises(PackError, match="cannot load") as err:
        providers.make_session(junk, device="cpu")
    assert str(junk) in str(err.value)


def test_make_session_rejects_bad_threads(tiny_model: Path) -> None:
    with pytest.raises(EdgenetError, match="threads"):
        providers.make_session(tiny_model, device="cpu", threads=0)


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_requested_provider_that_fails_to_load_raises(tiny_model: Path, monkeypatch) -> None:
    """A GPU provider compiled in but unusable must not silently become a CPU run."""
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA provider really present here")
    monkeypatch.setattr(
        providers, "available_devices",
        lambda: {d: d in ("cpu", "cuda") for d in providers.DEVICE_PROVIDERS},
    )
    with pytest.raises(EdgenetError, match="failed to initialise"):
        providers.make_session(tiny_model, device="cuda")


class _FakeBinding:
    def __init__(self, log: list, name: str) -> None:
        self.log, self.name = log, name

    def bind_cpu_input(self, name, arr) -> None:
        assert arr.flags.c_contiguous
        self.log.append((self.name, "cpu_input", name, arr.copy()))

    def bind_ortvalue_input(self, name, value) -> None:
        self.log.append((self.name, "ortvalue_input", name, value))

    def bind_output(self, name, device, device_id) -> None:
        self.log.append((self.name, "output", name, device, device_id))

    def get_outputs(self) -> list:
        return [f"{self.name}-on-device"]

    def copy_outputs_to_cpu(self) -> list:
        return [np.full((2, 3), 7.0, np.float32)]


class _FakeCudaSession:
    """What run_with_iobinding / run_chain_rows use of a CUDA session (no GPU needed)."""

    def __init__(self, log: list, name: str) -> None:
        self.log, self.name = log, name

    def get_providers(self) -> list[str]:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    def get_provider_options(self) -> dict:
        return {"CUDAExecutionProvider": {"device_id": "1"}}

    def get_outputs(self) -> list:
        class _Out:
            name = "out"
        return [_Out()]

    def io_binding(self) -> _FakeBinding:
        return _FakeBinding(self.log, self.name)

    def run_with_iobinding(self, binding) -> None:
        self.log.append((self.name, "run"))
        self.log.append((self.name, "device lock held", providers._DEVICE_RUN_LOCK.locked()))


def test_cuda_runs_bind_host_inputs_and_device_outputs() -> None:
    """On CUDA the input is bound as a host array (copied to the device inside the run,
    without the GIL), the output on the session's device; a chain hands the first session's
    device output to the second."""
    log: list = []
    x = np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2]  # not contiguous
    out = providers.run_with_iobinding(_FakeCudaSession(log, "a"), {"x": x}, ["out"])
    assert out[0].shape == (2, 3)
    (who, kind, name, arr), output, run, locked = log
    assert (who, kind, name) == ("a", "cpu_input", "x") and np.array_equal(arr, x)
    assert output == ("a", "output", "out", "cuda", 1) and run == ("a", "run")
    assert locked == ("a", "device lock held", False)  # EDGENET_GPU_SERIAL unset
    log.clear()
    providers.run_chain_rows(_FakeCudaSession(log, "pre"), _FakeCudaSession(log, "det"),
                             "pixels", "tensor", "images", "out", x)
    kinds = [entry[:3] for entry in log if entry[1] != "device lock held"]
    assert kinds == [("pre", "cpu_input", "pixels"), ("pre", "output", "tensor"),
                     ("pre", "run"), ("det", "ortvalue_input", "images"),
                     ("det", "output", "out"), ("det", "run")]
    assert log[4][3] == "pre-on-device"  # after pre's run and its lock entry


def test_gpu_serial_runs_take_turns_on_the_device(monkeypatch) -> None:
    """EDGENET_GPU_SERIAL=1: each device run (and a chain's two) holds the process's device
    lock, so a second thread's run waits for it; the lock is free again afterwards."""
    monkeypatch.setenv("EDGENET_GPU_SERIAL", "1")
    log: list = []
    x = np.zeros((2, 3), np.float32)
    providers.run_with_iobinding(_FakeCudaSession(log, "a"), {"x": x}, ["out"])
    providers.run_chain_rows(_FakeCudaSession(log, "pre"), _FakeCudaSession(log, "det"),
                             "pixels", "tensor", "images", "out", x)
    held = [entry for entry in log if entry[1] == "device lock held"]
    assert [h[0] for h in held] == ["a", "pre", "det"] and all(h[2] for h in held)
    assert not providers._DEVICE_RUN_LOCK.locked()

    import threading

    started, order = threading.Event(), []

    class _SlowSession(_FakeCudaSession):
        def run_with_iobinding(self, binding) -> None:
            started.set()
            order.append(f"{self.name} start")
            threading.Event().wait(0.2)
            order.append(f"{self.name} end")

    first = threading.Thread(target=providers.run_with_iobinding,
                             args=(_SlowSession([], "det"), {"x": x}, ["out"]))
    first.start()
    started.wait(5)
    providers.run_with_iobinding(_SlowSession([], "cls"), {"x": x}, ["out"])
    first.join(5)
    assert order == ["det start", "det end", "cls start", "cls end"]
