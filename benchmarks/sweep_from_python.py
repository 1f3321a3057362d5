"""dlexp.sweep (the dlexp command in a child process) against the same jobs as dlexp.run calls in this one.

    python benchmarks/sweep_from_python.py [--repeats 2] [--folder /tmp/dlexp-bench-sweep]

Two quick spiral jobs (4 epochs, 2 folds) each way, after one warm-up run (imports done, store created).
Prints wall time and CPU time: this process's own for the in-process runs (its picture process is not
counted), the child's (with its picture process) for the sweep.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import dlexp


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/dlexp-bench-sweep"))
    args = parser.parse_args()
    folder = args.folder.resolve()
    quick = ["+experiment=spiral", "trainer.max_epochs=4", "trainer.folds=2", "plots.grid_resolution=20",
             f"tracking.uri=sqlite:///{folder / 'mlflow.db'}", f"tracking.artifact_location={folder / 'art'}"]
    dlexp.run(quick, output_dir=folder / "warm", log_level=None)
    for rep in range(args.repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        for lr in ("0.003", "0.03"):
            dlexp.run([*quick, f"optimizer.lr={lr}"], output_dir=folder / f"run{rep}-{lr}", log_level=None)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        sweep_wall, child_cpu = time.perf_counter(), children_cpu()
        dlexp.sweep([*quick, "optimizer.lr=0.003,0.03", "tracking.resume=false"], sweep_dir=folder / f"sweep{rep}",
                    echo=False)
        sweep_wall, child_cpu = time.perf_counter() - sweep_wall, children_cpu() - child_cpu
        print(f"repeat {rep}: 2 dlexp.run calls {wall:.1f} s wall ({cpu:.1f} s CPU here); "
              f"dlexp.sweep of the same 2 jobs {sweep_wall:.1f} s wall ({child_cpu:.1f} s CPU in the child)",
              flush=True)


if __name__ == "__main__":
    main()
