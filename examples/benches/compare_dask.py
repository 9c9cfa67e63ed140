#!/usr/bin/env python3
"""Compare the orch engine's overhead per ticket with dask's threaded scheduler.

Usage (from the repository root):

    python3 examples/benches/compare_dask.py [N]

It runs `examples/engine_scale.rs` (release) on a random DAG of N tickets
(default 100,000, about 4 dependencies each, seed 42) with a no-op agent,
in memory and on SQLite, then writes the same DAG with
`crates/orch-graph/examples/dag_scale.rs`, installs dask with pip into a
temporary venv, and times `dask.threaded.get` on a graph of no-op tasks
with those dependencies. It prints microseconds per ticket/task and the
ratios.
"""

import os
import re
import subprocess
import sys
import tempfile
import venv

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

DASK_SCRIPT = r"""
import sys, time, json
from dask.threaded import get

path = sys.argv[1]
with open(path) as f:
    n, m = map(int, f.readline().split())
    for _ in range(n):
        f.readline()
    deps = [set() for _ in range(n)]
    for _ in range(m):
        t, d = map(int, f.readline().split())
        deps[t].add(d)

def noop(*args):
    return None

dsk = {f"t{i}": (noop, *[f"t{d}" for d in sorted(deps[i])]) for i in range(n)}
start = time.perf_counter()
get(dsk, list(dsk))
elapsed = time.perf_counter() - start
print(json.dumps({"seconds": elapsed, "tasks": n}))
"""


def cargo(*args):
    return subprocess.run(["cargo", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    out = cargo("run", "--quiet", "--release", "-p", "orch-examples", "--example", "engine_scale", "--", str(n))
    print(out, end="")
    orch = {k: float(v) for k, v in re.findall(r"^(in-memory|sqlite): .* ([0-9.]+) us per ticket", out, re.M)}

    with tempfile.TemporaryDirectory() as tmp:
        graph = os.path.join(tmp, "dag.txt")
        cargo("run", "--quiet", "--release", "-p", "orch-graph", "--example", "dag_scale", "--", str(n), "4", "42", graph)
        env_dir = os.path.join(tmp, "venv")
        venv.create(env_dir, with_pip=True)
        py = os.path.join(env_dir, "bin", "python")
        subprocess.run([py, "-m", "pip", "install", "--quiet", "dask"], check=True)
        script = os.path.join(tmp, "dask_bench.py")
        with open(script, "w") as f:
            f.write(DASK_SCRIPT)
        res = subprocess.run([py, script, graph], check=True, capture_output=True, text=True).stdout
        secs = float(re.search(r'"seconds": ([0-9.]+)', res).group(1))
        per = secs * 1e6 / n
        print(f"dask threaded get: {n} tasks in {secs:.2f} s = {per:.1f} us per task")
        for k, v in orch.items():
            print(f"dask / orch {k}: {per / v:.1f}x")


if __name__ == "__main__":
    main()
