"""`edgenet bench`: throughput of a pack over devices x precisions x batch sizes, per stage.

Modules: `stages` (names, labels, colours), `peak` (the machine's arithmetic limit), `machine`
(what it ran on), `frames` (generated or listed images), `variants` (a pack's precisions, their
fidelity and FLOPs), `cell` (one cell in its own process, and its memory), `matrix` (all cells),
`report` (JSON, Markdown, PNG, `--compare`), `command` (the CLI and its library form).

Why it is built this way:

* every matrix cell runs in its own fresh Python process (`python -m edgenet.bench _cell`), so
  the peak RSS and the start-up cost of one cell are not polluted by the cells before it, and a
  provider that crashes (a GPU driver, an unsupported fp16 op) costs one cell, not the report;
* the parent polls the child's whole process tree (decode workers included) for RSS with psutil
  when it is installed, and the child reports its own `getrusage` peak as well;
* stage times come from the same pipeline `edgenet run` uses (`edgenet.pipeline`); the
  numbers are the work each stage did (seconds summed over the run), next to the wall time
  of the whole run, so overlap between stages shows as stage sum > wall;
* the machine's arithmetic limit is measured with a large fp32 MatMul through onnxruntime
  itself (same thread count), so "detector at N% of peak" compares like with like. The
  MatMul model is written with a ten-line protobuf encoder: `onnx` is not a runtime
  dependency, and `edgenet bench` must work from a plain install;
* outputs: JSON (everything, for `--compare`), a Markdown table, and a PNG of stage times
  (matplotlib when installed, else a small PIL renderer: pillow is a runtime dependency).
"""

from edgenet.bench.cell import CellSpec, run_cell, stage_seconds
from edgenet.bench.command import bench, bench_app, bench_command, default_bench_pack
from edgenet.bench.frames import generate_images, list_images
from edgenet.bench.machine import machine_info
from edgenet.bench.matrix import BenchConfig, run_matrix
from edgenet.bench.peak import (
    conv_model_bytes,
    matmul_model_bytes,
    measure_matmul_peak,
    measure_numpy_peak,
)
from edgenet.bench.report import (
    compare_reports,
    load_report,
    render_chart,
    render_chart_pil,
    render_markdown,
    write_outputs,
)
from edgenet.bench.stages import REPORT_FORMAT, STAGE_COLOURS, STAGE_LABELS, STAGES
from edgenet.bench.variants import fidelity_summary, floor_estimate, pack_costs, pack_variants

__all__ = [
    "REPORT_FORMAT", "STAGES", "STAGE_COLOURS", "STAGE_LABELS", "BenchConfig", "CellSpec",
    "bench", "bench_app", "bench_command", "compare_reports", "conv_model_bytes",
    "default_bench_pack", "fidelity_summary", "floor_estimate", "generate_images",
    "list_images", "load_report", "machine_info", "matmul_model_bytes", "measure_matmul_peak",
    "measure_numpy_peak", "pack_costs", "pack_variants", "render_chart", "render_chart_pil",
    "render_markdown", "run_cell", "run_matrix", "stage_seconds", "write_outputs",
]
