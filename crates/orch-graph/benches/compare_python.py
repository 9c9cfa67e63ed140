#!/usr/bin/env python3
"""Compare orch-graph with Python's graphlib and networkx on the same DAG.

Usage (from the repository root):

    python3 crates/orch-graph/benches/compare_python.py [N] [DEPS]

It builds the Rust example in release mode, has it time build + validate +
analysis (waves, earliest start, slack, critical path) and write the graph
to a temporary file, then times on that same graph:

* graphlib.TopologicalSorter(...).static_order() (standard library), and
* networkx: building the DiGraph, topological_sort and dag_longest_path by
  effort (networkx is installed with pip into a temporary venv).

It prints each time and the ratio to Rust. Defaults: 1,000,000 tickets,
about 4 dependencies each.
"""

import os
import re
import subprocess
import sys
import tempfile
import time
import venv

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


def read_graph(path):
    with open(path) as f:
        n, m = map(int, f.readline().split())
        effort = [int(f.readline()) for _ in range(n)]
        edges = [tuple(map(int, f.readline().split())) for _ in range(m)]
    return n, effort, edges


def time_graphlib(n, edges):
    import graphlib

    deps = {t: [] for t in range(n)}
    for t, d in edges:
        deps[t].append(d)
    start = time.perf_counter()
    order = list(graphlib.TopologicalSorter(deps).static_order())
    elapsed = time.perf_counter() - start
    assert len(order) == n
    return elapsed


NX_SCRIPT = r"""
import sys, time, json
import networkx as nx
path = sys.argv[1]
with open(path) as f:
    n, m = map(int, f.readline().split())
    effort = [int(f.readline()) for _ in range(n)]
    edges = [tuple(map(int, f.readline().split())) for _ in range(m)]
start = time.perf_counter()
g = nx.DiGraph()
g.add_nodes_from(range(n))
# Edge dependency -> ticket, weighted by the dependency's effort.
g.add_edges_from((d, t, {"w": effort[d]}) for t, d in edges)
order = list(nx.topological_sort(g))
path_nodes = nx.dag_longest_path(g, weight="w")
elapsed = time.perf_counter() - start
print(json.dumps({"seconds": elapsed, "order": len(order), "path": len(path_nodes)}))
"""


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    deps = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    with tempfile.TemporaryDirectory() as tmp:
        graph = os.path.join(tmp, "dag.txt")
        out = subprocess.run(
            ["cargo", "run", "--quiet", "--release", "-p", "orch-graph", "--example", "dag_scale",
             "--", str(n), str(deps), "42", graph],
            cwd=ROOT, check=True, capture_output=True, text=True,
        ).stdout
        print(out, end="")
        rust = float(re.search(r"best of 5 ([0-9.]+) s", out).group(1))

        nodes, effort, edges = read_graph(graph)
        gl = time_graphlib(nodes, edges)
        print(f"python graphlib static_order: {gl:.2f} s  ({gl / rust:.0f}x the Rust build+analysis)")

        env_dir = os.path.join(tmp, "venv")
        venv.create(env_dir, with_pip=True)
        py = os.path.join(env_dir, "bin", "python")
        subprocess.run([py, "-m", "pip", "install", "--quiet", "networkx"], check=True)
        script = os.path.join(tmp, "nx_bench.py")
        with open(script, "w") as f:
            f.write(NX_SCRIPT)
        res = subprocess.run([py, script, graph], check=True, capture_output=True, text=True).stdout
        nx_secs = float(re.search(r'"seconds": ([0-9.]+)', res).group(1))
        print(f"python networkx build+topological_sort+dag_longest_path: {nx_secs:.2f} s  ({nx_secs / rust:.0f}x)")


if __name__ == "__main__":
    main()
