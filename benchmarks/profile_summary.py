#!/usr/bin/env python
"""Summarize py-spy "raw" (folded stack) profiles: top functions by own and inclusive samples.

    streamlog bench produce ... --profile /tmp/prof      # writes /tmp/prof/server.txt, producer0.txt, ...
    .venv/bin/python benchmarks/profile_summary.py /tmp/prof/server.txt --top 25

Frames are aggregated by function and file (line numbers dropped).  "own" is
the share of samples where the function is the innermost frame; "incl" the
share where it is anywhere on the stack (counted once per sample).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter

_LINE = re.compile(r":\d+\)$")


def frame_name(frame: str) -> str:
    frame = _LINE.sub(")", frame.strip())
    # "func (/long/path/to/module.py)" -> "func (module.py)" for the package-relative tail
    m = re.match(r"^(.*) \((.*)\)$", frame)
    if not m:
        return frame
    func, path = m.groups()
    for marker in ("/site-packages/", "/streamlog/", "/lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker == "/streamlog/":
                path = "streamlog/" + path
            break
    return f"{func} ({path})"


def summarize(path: str, top: int) -> str:
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, _, count = line.rpartition(" ")
            try:
                n = int(count)
            except ValueError:
                continue
            frames = [frame_name(x) for x in stack.split(";")
                      if not x.startswith("process ") and not x.startswith("thread ")]
            if not frames:
                continue
            total += n
            own[frames[-1]] += n
            for name in set(frames):
                incl[name] += n
    out = [f"{path}: {total} samples"]
    out.append(f"{'own%':>6} {'incl%':>6}  function")
    for name, n in own.most_common(top):
        out.append(f"{100.0 * n / total:6.1f} {100.0 * incl[name] / total:6.1f}  {name}")
    out.append("")
    out.append("by inclusive share:")
    for name, n in incl.most_common(top):
        out.append(f"{100.0 * own[name] / total:6.1f} {100.0 * n / total:6.1f}  {name}")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("profiles", nargs="+")
    ap.add_argument("--top", type=int, default=20)
    args = ap.parse_args()
    for p in args.profiles:
        print(summarize(p, args.top))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
