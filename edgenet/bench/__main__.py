"""`python -m edgenet.bench _cell SPEC OUT` (a matrix cell's child process) and
`python -m edgenet.bench peak [THREADS]` (the machine's peaks as JSON)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from edgenet.bench.cell import cell_main
from edgenet.bench.command import bench_app
from edgenet.bench.peak import measure_matmul_peak, measure_numpy_peak


def _main(argv: Sequence[str]) -> int:
    if len(argv) == 3 and argv[0] == "_cell":
        return cell_main(argv[1], argv[2])
    if argv and argv[0] == "peak":
        threads = int(argv[1]) if len(argv) > 1 else None
        res = {"onnxruntime_fp32": measure_matmul_peak(threads),
               "onnxruntime_int8": measure_matmul_peak(threads, kind="int8"),
               "onnxruntime_conv": measure_matmul_peak(threads, kind="conv"),
               "numpy_fp32": measure_numpy_peak()}
        print(json.dumps(res, indent=2))
        return 0
    bench_app()(args=list(argv), prog_name="edgenet bench")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
