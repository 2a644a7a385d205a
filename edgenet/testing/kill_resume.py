"""Kill-and-resume proof for `edgenet run` (issue 5 item 1), used by scripts/kill_resume.py.

What it does, in order:

1. writes `images` small distinct JPEGs (plus a zero-byte and a text ".jpg", whose failures
   are retried on every resume and must stay failures) into a work folder;
2. runs the command once without interruption -> `uninterrupted.json`;
3. runs the *same* command (other output file) again and again, each time sending SIGKILL to
   the edgenet process at a random moment, until `kills` kills have landed on a running
   process; then lets it finish. Checkpoints are frequent (every few images and a fraction
   of a second) so kills land before, during and after checkpoint writes;
4. meanwhile a reader thread re-reads the output file continuously: every read must parse as
   complete JSON (atomic replace means no reader ever sees a partial file), and after every
   kill the file on disk must parse too;
5. checks the final file: every image exactly once, and equal (as parsed JSON) to the
   uninterrupted run's;
6. the Ctrl-C check: SIGINT to the process group (what a terminal sends) after the first
   checkpoint; edgenet must save what is done, say so on stderr, exit non-zero; the file must
   hold at least the predictions it says it saved; a rerun then completes it, equal again.

A kill of the main process also leaves its decode workers without a parent: they must exit
by themselves (checked per kill; lingering ones are reported and then cleaned up).

`run_kill_resume(...)` returns a report dict; `main()` is the script entry point and prints
"N images, N unique predictions, equal to the uninterrupted run" on success (exit 0), or the
problems found (exit 1).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
# How long decode workers may outlive a SIGKILLed parent before they count as orphans.
ORPHAN_WAIT_S = 5.0


@dataclass
class Report:
    """What happened; `problems` empty means the proof holds."""

    images: int = 0
    unique_predictions: int = 0
    kills: int = 0
    runs: int = 0
    equal: bool = False
    reads: int = 0
    bad_reads: int = 0
    checkpoints_seen: int = 0
    leftover_temp_files: int = 0
    orphan_workers: int = 0
    sigint: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        return (
            f"{self.images} images, {self.unique_predictions} unique predictions, "
            + ("equal to the uninterrupted run" if self.equal else
               "NOT equal to the uninterrupted run")
        )


def find_pack(model: Path | None, workdir: Path) -> Path:
    """The pack to use: `model`, else the committed demo pack, else a tiny one built here."""
    if model is not None:
        return model
    demo = REPO_ROOT / "edgenet" / "data" / "demo_pack"
    if (demo / "info.json").is_file():
        return demo
    tests_dir = REPO_ROOT / "tests"
    if (tests_dir / "tinypack.py").is_file():
        sys.path.insert(0, str(tests_dir))
        try:
            from tinypack import build_tiny_pack  # needs onnx (dev dependency)
        finally:
            sys.path.remove(str(tests_dir))
        return build_tiny_pack(workdir / "tiny_pack")
    raise SystemExit("no model pack: pass --model PACK (e.g. from `edgenet demo`)")


class _Reader(threading.Thread):
    """Re-reads a file as fast as it can; counts reads that are not complete JSON."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.stop = threading.Event()
        self.reads = 0
        self.bad: list[str] = []
        self._last_mtime = 0
        self.versions = 0

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with open(self.path, "rb") as fh:
                    data = fh.read()
                    mtime = os.fstat(fh.fileno()).st_mtime_ns
            except FileNotFoundError:
                time.sleep(0.005)
                continue
            except OSError as err:
                self.bad.append(f"read error {err}")
                continue
            try:
                json.loads(data)
                self.reads += 1
                if mtime != self._last_mtime:
                    self.versions += 1
                    self._last_mtime = mtime
            except ValueError as err:
                self.bad.append(f"partial JSON ({len(data)} bytes): {err}")
            time.sleep(0.002)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_group_gone(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _group_alive(pgid):
            return True
        time.sleep(0.05)
    return not _group_alive(pgid)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _check_file(path: Path, filepaths: set[str]) -> str | None:
    """None when `path` is absent or a complete predictions file over these images."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        return f"{path.name} is not complete JSON after a kill: {err}"
    got = [p.get("filepath") for p in data.get("predictions", [])]
    if len(got) != len(set(got)):
        return f"{path.name} holds an image twice after a kill"
    if set(got) != filepaths:
        return f"{path.name} holds other images than the instances after a kill"
    return None


def _done_count(path: Path) -> int:
    """Images the file shows as processed (decoded and detected), 0 when absent.

    Pending images appear as failure placeholders with a "DETECTOR" failure; a processed
    image may still carry a "CLASSIFIER" failure (e.g. a degenerate crop), so "processed"
    means: no "DETECTOR" failure.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return 0
    return sum(1 for p in data["predictions"] if "DETECTOR" not in (p.get("failures") or []))


def run_kill_resume(
    *,
    images: int = 300,
    kills: int = 20,
    model: Path | None = None,
    workdir: Path | None = None,
    seed: int = 0,
    checkpoint_every_images: int = 3,
    checkpoint_every_seconds: float = 0.25,
    extra_args: list[str] | None = None,
    sigint_check: bool = True,
    timeout_s: float = 600.0,
    log: Any = print,
) -> Report:
    """Run the whole proof; see the module docstring. Never raises for a failed check."""
    from edgenet.testing.bad_inputs import make_image_set

    start = time.monotonic()
    report = Report()
    rng = random.Random(seed)
    own_workdir = workdir is None
    work = Path(tempfile.mkdtemp(prefix="edgenet-kill-")) if workdir is None else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    try:
        pack = find_pack(model, work)
        folder = work / "images"
        if folder.exists():
            shutil.rmtree(folder)
        make_image_set(folder, images, seed=seed)
        (folder / "zero_bytes.jpg").write_bytes(b"")
        (folder / "not_an_image.jpg").write_text("text\n", encoding="utf-8")

        def command(out: Path) -> list[str]:
            return [
                sys.executable, "-m", "edgenet", "run", "--model", str(pack),
                "--folders", str(folder), "--predictions-json", str(out),
                "--checkpoint-every-images", str(checkpoint_every_images),
                "--checkpoint-every-seconds", str(checkpoint_every_seconds),
                "--quiet", *(extra_args or []),
            ]

        def launch(out: Path, stderr_path: Path) -> subprocess.Popen:
            with open(stderr_path, "wb") as err:
                return subprocess.Popen(command(out), stdout=subprocess.DEVNULL, stderr=err,
                                        start_new_session=True)

        # 1. uninterrupted run, timed.
        ref = work / "uninterrupted.json"
        t0 = time.monotonic()
        full = subprocess.run(command(ref), capture_output=True, text=True, timeout=timeout_s)
        t_full = time.monotonic() - t0
        if full.returncode != 0:
            report.problems.append(f"uninterrupted run failed ({full.returncode}): "
                                   f"{full.stderr[-2000:]}")
            return report
        ref_data = json.loads(ref.read_text(encoding="utf-8"))
        filepaths = {p["filepath"] for p in ref_data["predictions"]}
        report.images = len(filepaths)
        # Startup + shutdown with nothing to do: the same command over a finished file.
        t0 = time.monotonic()
        subprocess.run(command(ref), capture_output=True, timeout=timeout_s)
        t_idle = time.monotonic() - t0
        if json.loads(ref.read_text(encoding="utf-8")) != ref_data:
            report.problems.append("a rerun over a finished file changed it")
        work_s = max(0.5, t_full - t_idle)
        log(f"uninterrupted: {report.images} images in {t_full:.1f} s "
            f"(startup ~{t_idle:.1f} s); seed {seed}")

        # 2. kill loop.
        out = work / "killed.json"
        reader = _Reader(out)
        reader.start()
        stderr_path = work / "run.stderr"
        try:
            while True:
                report.runs += 1
                killing = report.kills < kills
                proc = launch(out, stderr_path)
                if killing:
                    # Random moment: sometimes during startup, mostly while images flow; the
                    # window is sized so that each run does ~1/kills of the work.
                    delay = rng.uniform(0.3 * t_idle, t_idle + 1.6 * work_s / kills)
                    try:
                        proc.wait(timeout=delay)
                    except subprocess.TimeoutExpired:
                        proc.send_signal(signal.SIGKILL)
                        proc.wait()
                        report.kills += 1
                        if not _wait_group_gone(proc.pid, ORPHAN_WAIT_S):
                            report.orphan_workers += 1
                            _kill_group(proc.pid)
                            _wait_group_gone(proc.pid, 5.0)
                        problem = _check_file(out, filepaths)
                        if problem:
                            report.problems.append(problem)
                        continue
                else:
                    try:
                        proc.wait(timeout=timeout_s)
                    except subprocess.TimeoutExpired:
                        _kill_group(proc.pid)
                        report.problems.append(f"a run did not finish in {timeout_s} s (hang)")
                        break
                code = proc.returncode
                if code != 0:
                    tail = stderr_path.read_text(encoding="utf-8", errors="replace")[-2000:]
                    report.problems.append(f"a resumed run exited {code}: {tail}")
                    break
                if report.kills >= kills:
                    break
                # Finished before enough kills: start a fresh round over a new file (the
                # proof is per round; every round must end equal to the uninterrupted run).
                _compare(out, ref_data, filepaths, report, final=False)
                log(f"round finished after {report.kills} kill(s); starting another round")
                out.unlink()
        finally:
            reader.stop.set()
            reader.join(5)
        report.reads = reader.reads
        report.bad_reads = len(reader.bad)
        report.checkpoints_seen = reader.versions
        if reader.bad:
            report.problems.append(f"{len(reader.bad)} read(s) saw a partial file: "
                                   f"{reader.bad[:3]}")
        _compare(out, ref_data, filepaths, report, final=True)
        report.leftover_temp_files = sum(1 for p in work.iterdir() if ".tmp." in p.name)
        if report.orphan_workers:
            report.problems.append(f"{report.orphan_workers} kill(s) left decode workers "
                                   f"running for {ORPHAN_WAIT_S:g} s after their parent died (they "
                                   "never exit by themselves)")
        log(f"{report.kills} SIGKILLs over {report.runs} runs; {report.reads} concurrent reads "
            f"({report.checkpoints_seen} file versions), {report.bad_reads} partial; "
            f"{report.leftover_temp_files} leftover temp file(s)")

        # 3. Ctrl-C.
        if sigint_check:
            report.sigint = _sigint_check(command, launch, work, ref_data, filepaths,
                                          timeout_s, report)
            log(f"Ctrl-C: {report.sigint}")
    finally:
        report.seconds = time.monotonic() - start
        if own_workdir and not report.problems:
            shutil.rmtree(work, ignore_errors=True)
        elif report.problems:
            log(f"work folder kept for inspection: {work}")
    return report


def _compare(out: Path, ref_data: dict, filepaths: set[str], report: Report,
             final: bool) -> None:
    data = json.loads(out.read_text(encoding="utf-8"))
    got = [p["filepath"] for p in data["predictions"]]
    unique = set(got)
    if final:
        report.unique_predictions = len(unique)
    if len(got) != len(unique):
        report.problems.append(f"{len(got) - len(unique)} image(s) appear more than once")
    if unique != filepaths:
        report.problems.append(f"images missing: {sorted(filepaths - unique)[:5]}, "
                               f"extra: {sorted(unique - filepaths)[:5]}")
    equal = data == ref_data
    if final:
        report.equal = equal
    if not equal:
        by_fp = {p["filepath"]: p for p in data["predictions"]}
        diff = [p["filepath"] for p in ref_data["predictions"] if by_fp.get(p["filepath"]) != p]
        if not diff:
            report.problems.append("same predictions as the uninterrupted run, other order")
        else:
            report.problems.append(f"{len(diff)} prediction(s) differ from the uninterrupted "
                                   f"run, e.g. {diff[:3]}")


def _sigint_check(command: Any, launch: Any, work: Path, ref_data: dict, filepaths: set[str],
                  timeout_s: float, report: Report) -> dict:
    """Ctrl-C after the first checkpoint: saved, said so, non-zero exit; resumable."""
    out = work / "sigint.json"
    stderr_path = work / "sigint.stderr"
    proc = launch(out, stderr_path)
    deadline = time.monotonic() + timeout_s
    # Interrupt once a few images are saved, so "writes what is done" has something to write.
    target = max(1, min(5, len(filepaths) // 4))
    while _done_count(out) < target and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    result: dict[str, Any] = {}
    if proc.poll() is not None:
        report.problems.append("Ctrl-C check: the run finished before it could be interrupted "
                               "(use more images)")
        return {"finished_early": True}
    os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C goes to the whole group
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        report.problems.append("Ctrl-C check: edgenet did not stop within 60 s of SIGINT")
        return {"hung": True}
    _wait_group_gone(proc.pid, ORPHAN_WAIT_S)
    stderr = stderr_path.read_text(encoding="utf-8", errors="replace")
    done = _done_count(out)
    match = re.search(r"saved (\d+) new prediction", stderr)
    result = {"exit_code": code, "done_in_file": done,
              "said_saved": int(match.group(1)) if match else None}
    if code == 0:
        report.problems.append("Ctrl-C check: exit code 0 after an interruption")
    if "Traceback" in stderr:
        report.problems.append(f"Ctrl-C check: traceback on stderr: {stderr[-1500:]}")
    if match is None or "interrupt" not in stderr.lower():
        report.problems.append(f"Ctrl-C check: stderr does not say what was saved: "
                               f"{stderr[-500:]!r}")
    elif done < int(match.group(1)) - 2:  # two images may be genuine failures (bad files)
        report.problems.append(f"Ctrl-C check: said {match.group(1)} saved, file holds {done}")
    problem = _check_file(out, filepaths)
    if problem:
        report.problems.append("Ctrl-C check: " + problem)
    # Resume to completion: equal again.
    rerun = subprocess.run(command(out), capture_output=True, text=True, timeout=timeout_s)
    if rerun.returncode != 0:
        report.problems.append(f"Ctrl-C check: resume exited {rerun.returncode}: "
                               f"{rerun.stderr[-1000:]}")
    else:
        data = json.loads(out.read_text(encoding="utf-8"))
        result["resumed_equal"] = data == ref_data
        if data != ref_data:
            report.problems.append("Ctrl-C check: resumed file differs from the uninterrupted "
                                   "run")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="SIGKILL `edgenet run` at random moments, resume, and prove nothing is "
        "lost or duplicated (issue 5).")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--model", type=Path, default=None,
                        help="model pack (default: edgenet/data/demo_pack or a tiny one)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep files here (default: a temp folder, removed on success)")
    parser.add_argument("--seed", type=int, default=None,
                        help="random seed for images and kill moments (default: random)")
    parser.add_argument("--checkpoint-every-images", type=int, default=3)
    parser.add_argument("--checkpoint-every-seconds", type=float, default=0.25)
    parser.add_argument("--no-sigint-check", action="store_true")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds any single run may take (a hang fails the check)")
    parser.add_argument("extra", nargs="*",
                        help="extra `edgenet run` flags after --, e.g. -- --batch-size 4")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 30)
    report = run_kill_resume(
        images=args.images, kills=args.kills, model=args.model, workdir=args.workdir,
        seed=seed, checkpoint_every_images=args.checkpoint_every_images,
        checkpoint_every_seconds=args.checkpoint_every_seconds, extra_args=args.extra,
        sigint_check=not args.no_sigint_check, timeout_s=args.timeout,
    )
    if report.problems:
        print(f"FAILED after {report.kills} kill(s) (seed {seed}):")
        for problem in report.problems:
            print(f"  - {problem}")
        print(report.summary())
        return 1
    print(report.summary())
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
