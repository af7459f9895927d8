#!/usr/bin/env python3
"""Write tests/durations.txt from a pytest report run with ``--durations=0`` (or ``--durations=N``).

Usage: ``scripts/test.sh --durations=0 | tee run.log; scripts/update_durations.py run.log``. Setup, call and
teardown times of a test are added up; tests under 5 s are left out (their order does not matter). tests/conftest.py
starts the listed tests first, longest first, so that the two CI workers finish together.
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from pathlib import Path

ROW = re.compile(r"^\s*([\d.]+)s (?:setup|call|teardown)\s+(\S+)")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: scripts/update_durations.py PYTEST_LOG", file=sys.stderr)
        return 2
    seconds: dict[str, float] = defaultdict(float)
    for line in Path(argv[1]).read_text(errors="replace").splitlines():
        m = ROW.match(line)
        if m:
            seconds[m.group(2)] += float(m.group(1))
    slow = sorted(((s, n) for n, s in seconds.items() if s >= 5.0), reverse=True)
    if not slow:
        print(f"{argv[1]}: no --durations rows of 5 s or more", file=sys.stderr)
        return 2
    out = Path(__file__).resolve().parents[1] / "tests" / "durations.txt"
    head = "# seconds nodeid: measured by scripts/update_durations.py; tests/conftest.py runs these first, longest first\n"
    out.write_text(head + "".join(f"{s:.1f} {n}\n" for s, n in slow))
    print(f"wrote {out}: {len(slow)} tests, {sum(s for s, _ in slow):.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
