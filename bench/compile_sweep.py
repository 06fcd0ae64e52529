"""Compile a 1,000,000-instance sweep and materialise every instance (id, env, deps, outputs).

Run as its own process so its peak RSS is the compile's alone: prints one JSON line.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path

SPEC = """\
parameters:
  ALPHA: {type: float, default: 0.5}
  LABEL: {type: string, default: bench}
scripts:
  SIM: |
    echo $X $Y $ALPHA > $OUT
tasks:
  sim:
    script: SIM
    task_inputs: {X: 1..1000, Y: 1..500}
    task_outputs: {OUT: out.txt}
  post:
    command: cat $IN
    foreach: [sim]
    task_inputs: {IN: "${sim.OUT}"}
"""


def main() -> None:
    from airavata_prefect.domain.compile import compile_graph
    from airavata_prefect.domain.spec import load_spec

    path = Path(tempfile.mkdtemp()) / "sweep.yml"
    path.write_text(SPEC)
    start = time.perf_counter()
    graph = compile_graph(load_spec(path), root="/scratch/exp")
    compiled = time.perf_counter()
    n = 0
    for _ in graph.iter_instances():
        n += 1
    end = time.perf_counter()
    json.dump({"instances": n, "compile_s": compiled - start, "total_s": end - start,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024},
              sys.stdout)


if __name__ == "__main__":
    main()
