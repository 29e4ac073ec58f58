"""The exactness table of issue 17 from the JSON lines tests/engine/test_exactness.py writes.

    ZFPROBE_EXACTNESS_LOG=/tmp/exact.jsonl python -m pytest -q --runslow tests/engine/test_exactness.py
    python scripts/exactness_table.py /tmp/exact.jsonl [--by backend]

One row per net x rule x seed kind (over every layer, input set, LRN mode and backend logged):
the number of seeds; zfprobe's worst relative error against the float64 oracle on seeds that
needed no flip; float32 torch's worst error on the same seeds; the worst ratio of the two
(each seed against max(its float32 error, float32 eps), the test's bound is 10); how many seeds
differed through proven flips, their largest raw error, and their largest error once the
float64 oracle takes zfprobe's side of the flipped decisions.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict

EPS32 = 1.1920929e-07


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.1e}"


def table(rows: list[dict], by: list[str]) -> str:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[tuple(r[k] for k in by)].append(r)
    head = by + ["seeds", "zfprobe err", "float32 err", "worst ratio", "flipped seeds",
                 "flipped: raw err", "flipped: err after"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in sorted(groups):
        g = groups[key]
        clean = [r for r in g if not r["flips"]]
        flipped = [r for r in g if r["flips"]]
        ratio = max((r["err_zfprobe"] / max(r["err_float32"], EPS32) for r in clean), default=None)
        after = max((r["err_after_flips"] for r in flipped), default=None)
        lines.append("| " + " | ".join(list(map(str, key)) + [
            str(len(g)),
            _fmt(max((r["err_zfprobe"] for r in clean), default=None)),
            _fmt(max(r["err_float32"] for r in g)),
            "-" if ratio is None else f"{ratio:.1f}",
            str(len(flipped)),
            _fmt(max((r["err_zfprobe"] for r in flipped), default=None)),
            _fmt(after)]) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("logs", nargs="+")
    ap.add_argument("--by", default="net,rule,seed", help="comma-separated grouping keys")
    args = ap.parse_args()
    rows = [json.loads(line) for path in args.logs for line in open(path) if line.strip()]
    print(table(rows, args.by.split(",")))
    n_flip = sum(1 for r in rows if r["flips"])
    print(f"\n{len(rows)} seeds; {n_flip} differed through proven flips; backends "
          f"{sorted({r['backend'] for r in rows})}; inputs {sorted({r['inputs'] for r in rows})}")


if __name__ == "__main__":
    main()
