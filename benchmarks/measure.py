"""Wall time, CPU time and peak RSS of a command, each run in a fresh child process (shared by the benchmarks)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

# Runs a command in a child and reports its wall time, CPU time (user + system) and peak RSS (of the waited child).
MEASURE = r"""
import json, resource, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
wall = time.perf_counter() - start
if proc.returncode:
    sys.exit(proc.stderr[-2000:])
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024}))
"""


def measure_once(command: list[str], env: dict | None = None) -> dict:
    """``{"wall_s", "cpu_s", "peak_rss_mb"}`` of one run of ``command`` (``env``: its environment)."""
    proc = subprocess.run([sys.executable, "-c", MEASURE, *command], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"failed: {' '.join(command)}\n{proc.stderr}")
    return json.loads(proc.stdout)


def measure(command: list[str], repeats: int, warmup: int = 0) -> dict:
    """Median wall time and largest peak RSS over ``repeats`` runs, after ``warmup`` uncounted ones."""
    runs = [measure_once(command) for _ in range(warmup + repeats)][warmup:]
    return {"wall_s": statistics.median(r["wall_s"] for r in runs), "peak_rss_mb": max(r["peak_rss_mb"] for r in runs)}
