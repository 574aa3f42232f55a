#!/usr/bin/env python3
"""How the processes of one core shared it, from a `perf sched record` (docs/benchmarks.md).

For the busiest processes in each recording: how many times they were switched in, their
run slices (time on the core per switch-in) at p50/p90/p99/max, and their scheduling delay
(time runnable but waiting for the core) at p50/p90/p99/max.

    perf sched record -C 1 -o /tmp/sched-gatehouse.data -- sleep 2   # during a wrk run
    scripts/sched-slices.py /tmp/sched-gatehouse.data [more.data ...]
"""

import subprocess
import sys


def switch_ins(path):
    """(task[tid], run ms, scheduling delay ms) per line of `perf sched timehist`."""
    listing = subprocess.run(
        ["perf", "sched", "timehist", "-i", path],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for line in listing.splitlines()[3:]:
        fields = line.split()
        if len(fields) < 6:
            continue
        try:
            run, delay = float(fields[-1]), float(fields[-2])
        except ValueError:
            continue
        yield fields[2], run, delay


def percentiles(values):
    ordered = sorted(values)
    count = len(ordered)
    pick = lambda share: ordered[min(count - 1, int(share * count))] * 1000
    return "/".join(f"{pick(share):.0f}" for share in (0.5, 0.9, 0.99)) + f"/{ordered[-1] * 1000:.0f}"


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    for path in sys.argv[1:]:
        by_task = {}
        for task, run, delay in switch_ins(path):
            by_task.setdefault(task, []).append((run, delay))
        print(path)
        print(f"  {'task':24} {'switch-ins':>10} {'on core ms':>10}  run us p50/p90/p99/max   delay us p50/p90/p99/max")
        busiest = sorted(by_task.items(), key=lambda item: -sum(run for run, _ in item[1]))
        for task, slices in busiest[:3]:
            runs = [run for run, _ in slices]
            delays = [delay for _, delay in slices]
            print(
                f"  {task:24} {len(slices):>10} {sum(runs):>10.1f}  {percentiles(runs):>23}"
                f"   {percentiles(delays):>25}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
