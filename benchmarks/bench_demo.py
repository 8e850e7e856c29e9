"""Wall time of `personae demo`, its sections in line against the drawing style in a worker beside them.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_demo.py --json benchmarks/results/demo.json

Each demo runs in a process of its own (the given thread settings), one after the other, into folders of their
own; then their index.md files are compared with the folder names taken out: the demo's every number must be the
same whichever way it ran. Run it alone: another process on the same cores changes the times several-fold.
"""

from __future__ import annotations

import argparse
import difflib
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, write_json  # noqa: E402

RUN = ("import sys; from personae.quiet import quiet_libraries; quiet_libraries(); "
       "from personae.demo.flow import run_demo; run_demo(sys.argv[1], overlap=sys.argv[2] == 'beside')")


def run(out: Path, how: str) -> dict:
    start, before = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", RUN, str(out), how], check=True, env=os.environ.copy())
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"how": how, "wall_s": round(time.monotonic() - start, 1), "cpu_s": round(cpu, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--order", nargs="+", default=["inline", "beside"], choices=["inline", "beside"])
    parser.add_argument("--json")
    args = parser.parse_args()
    rows, indexes = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for how in args.order:
            out = Path(tmp) / f"demo-{how}"
            rows.append(run(out, how))
            indexes[how] = (out / "index.md").read_text().replace(str(out), "DEMO")
            print(f"{how:7s} {rows[-1]['wall_s']:8.1f} s wall {rows[-1]['cpu_s']:8.1f} s CPU", flush=True)
    same = len(set(indexes.values())) == 1
    walls = {r["how"]: r["wall_s"] for r in rows}
    ratio = walls["beside"] / walls["inline"] if {"beside", "inline"} <= walls.keys() else None
    print(f"index.md the same both ways: {same}" + (f"; beside / inline wall time: {ratio:.2f}" if ratio else ""))
    if args.json:
        write_json(args.json, {"machine": machine(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                               "runs": rows, "index_same": same, "wall_ratio": ratio})
    if not same:
        first, second = indexes.values()
        sys.exit("".join(difflib.unified_diff(first.splitlines(True), second.splitlines(True), *indexes)))


if __name__ == "__main__":
    main()
