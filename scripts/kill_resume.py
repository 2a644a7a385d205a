#!/usr/bin/env python
"""Kill-and-resume proof for `edgenet run` (issue 5): >= 20 random SIGKILLs, then equal output.

Usage (from the repository root, with the dev venv):

    python scripts/kill_resume.py                      # 300 images, 20 kills, Ctrl-C check
    python scripts/kill_resume.py --images 40 --kills 5 --seed 1
    python scripts/kill_resume.py --model PACK -- --batch-size 4 --workers 0

Prints "N images, N unique predictions, equal to the uninterrupted run" and exits 0 when every
check holds; lists the problems and exits 1 otherwise. The logic lives in
`edgenet.testing.kill_resume` (also run by tests/test_kill_resume.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgenet.testing.kill_resume import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
