#!/usr/bin/env python
"""Where each thread of a run spends its time, from a py-spy raw profile.

    py-spy record --threads --idle -f raw -o run.txt -- edgenet run ...   # every thread, wall
    py-spy record --gil -f raw -o gil.txt -- edgenet run ...              # the GIL holder only
    python benchmarks/stack_summary.py run.txt [--top 12]

Why: on the H100 (NOTES.md entry 9) the detector and classifier calls took ~2x longer inside
the pipeline than alone; per-stage timers say which stage, not what inside it waits. A raw
profile line is `thread (TID): NAME;frame;...;frame COUNT` (`thread (TID);frame;...` for a
thread not yet named; without `--threads`: `frame;...;frame COUNT`), frames as
`function (file:line)`.
For each thread this prints its samples and, for the most frequent places, the innermost
edgenet frame and the innermost frame of all (e.g. `run_batch` in `run_with_iobinding`),
as a share of that thread's samples. With `--gil` data the shares say who holds the GIL: if
the main process holds it for most of the wall time, Python work serialises the pipeline.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
# `thread (TID): NAME;frames`, or `thread (TID);frames` for a thread not yet named
_THREAD = re.compile(r"^thread \((?P<tid>[^)]*)\)(?:: (?P<name>[^;]*))?;?(?P<rest>.*)$")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?):(?P<line>\d+)\)$")


def _base(file: str) -> str:
    """A frame's file name without its folders (py-spy writes the OS's own separators)."""
    return re.split(r"[\\/]", file)[-1]


def _frame_label(frame: str) -> tuple[str, str]:
    """(function, file) of one frame; a bare name (no file) as (name, "")."""
    m = _FRAME.match(frame)
    return (m["func"], m["file"]) if m else (frame, "")


def summarize(text: str) -> dict[str, dict]:
    """{thread name: {"samples": n, "places": Counter((edgenet frame, leaf frame))}}."""
    threads: dict[str, dict] = defaultdict(lambda: {"samples": 0, "places": Counter()})
    for raw in text.splitlines():
        m = _LINE.match(raw.strip())
        if not m:
            continue
        count = int(m["count"])
        t = _THREAD.match(m["stack"])
        if t is None:  # recorded without --threads: one bucket for every thread
            name, rest = "(all threads)", m["stack"]
        else:
            name, rest = t["name"] or f"thread {t['tid']} (unnamed)", t["rest"]
        frames = [f for f in rest.split(";") if f]
        entry = threads[name]
        entry["samples"] += count
        labels = [_frame_label(f) for f in frames]
        ours = next((f"{fn} ({_base(fl)})" for fn, fl in reversed(labels)
                     if "edgenet/" in fl.replace("\\", "/")), "-")
        leaf = f"{labels[-1][0]} ({_base(labels[-1][1])})" if labels else "(no Python frame)"
        entry["places"][(ours, leaf)] += count
    return dict(threads)


def render(summary: dict[str, dict], top: int) -> str:
    total = sum(t["samples"] for t in summary.values()) or 1
    lines = []
    for name, entry in sorted(summary.items(), key=lambda kv: -kv[1]["samples"]):
        n = entry["samples"]
        lines.append(f"{name}: {n} samples ({100 * n / total:.0f}% of all)")
        for (ours, leaf), c in entry["places"].most_common(top):
            lines.append(f"  {100 * c / n:5.1f}%  {ours}  ->  {leaf}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("raw", type=Path)
    p.add_argument("--top", type=int, default=12)
    a = p.parse_args(argv)
    summary = summarize(a.raw.read_text(encoding="utf-8", errors="replace"))
    if not summary:
        print(f"{a.raw}: no py-spy raw lines", file=sys.stderr)
        return 1
    print(render(summary, a.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
