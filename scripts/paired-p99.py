#!/usr/bin/env python3
"""Paired p99 latency ratios from the peer benchmark's raw CSVs (docs/benchmarks.md).

compare.sh runs every target once per round, in rotating order, so the fair comparison of
two targets is round by round. This prints, for each round of each CSV, the p99 of TARGET
over the p99 of PEER and the hypervisor steal each run saw, then the median ratio and how
many rounds were at or under 1.0: over all rounds, and over the rounds where no run of
the two lost more than --max-steal percent of its time to steal (a neighbour's work that
lands on one run and not the other, which neither proxy caused). Where steal is common, it
also fits log(ratio) = a + b * (steal of TARGET - steal of PEER) over every round and
prints exp(a), the ratio at equal steal, with a 95 % bootstrap interval.

    scripts/paired-p99.py --target gatehouse --peer nginx /tmp/bench-results/compare-*.csv
"""

import argparse
import csv
import math
import random
import statistics
import sys


def rounds_of(path, target, peer):
    by_round = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            if row["target"] in (target, peer):
                # A run retried for noise appears once per attempt; the last one counts.
                by_round.setdefault(row["round"], {})[row["target"]] = row
    for number, runs in sorted(by_round.items(), key=lambda item: int(item[0])):
        if target in runs and peer in runs:
            yield number, runs[target], runs[peer]


def summary(label, ratios):
    if not ratios:
        return f"{label}: no rounds"
    at_or_under = sum(1 for ratio in ratios if ratio <= 1.0)
    return (
        f"{label}: {len(ratios)} rounds, median {statistics.median(ratios):.3f}, "
        f"{at_or_under} of {len(ratios)} at or under 1.0"
    )


def ratio_at_equal_steal(points):
    """exp(intercept) of the least-squares line through (steal difference, log ratio)."""
    steal_mean = statistics.fmean(x for x, _ in points)
    log_mean = statistics.fmean(y for _, y in points)
    spread = sum((x - steal_mean) ** 2 for x, _ in points)
    if spread == 0:
        return math.exp(log_mean)
    slope = sum((x - steal_mean) * (y - log_mean) for x, y in points) / spread
    return math.exp(log_mean - slope * steal_mean)


def steal_adjusted(label, points):
    if len(points) < 4:
        return f"{label}: too few rounds"
    estimate = ratio_at_equal_steal(points)
    draw = random.Random(1)
    resampled = sorted(
        ratio_at_equal_steal([draw.choice(points) for _ in points]) for _ in range(2000)
    )
    # The 2.5th and 97.5th percentiles of 2,000 resamples.
    return (
        f"{label}: {estimate:.3f} (95 % bootstrap interval {resampled[50]:.3f}"
        f" to {resampled[1949]:.3f}, {len(points)} rounds)"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="target name in the CSV (the gateway)")
    parser.add_argument("--peer", default="nginx", help="target to divide by [nginx]")
    parser.add_argument("--max-steal", type=float, default=2.0, help="steal %% limit [2.0]")
    parser.add_argument("csv", nargs="+", help="compare-*.csv files")
    args = parser.parse_args()

    all_ratios, calm_ratios, steal_points = [], [], []
    for path in args.csv:
        print(path)
        for number, mine, theirs in rounds_of(path, args.target, args.peer):
            ratio = float(mine["p99_us"]) / float(theirs["p99_us"])
            my_steal, their_steal = float(mine["steal_pct"]), float(theirs["steal_pct"])
            calm = max(my_steal, their_steal) <= args.max_steal
            all_ratios.append(ratio)
            steal_points.append((my_steal - their_steal, math.log(ratio)))
            if calm:
                calm_ratios.append(ratio)
            print(
                f"  round {number:>2}: p99 {mine['p99_us']:>6} / {theirs['p99_us']:>6} us"
                f" = {ratio:.3f}  steal {mine['steal_pct']:>5} / {theirs['steal_pct']:>5} %"
                f"{'' if calm else '  (noisy)'}"
            )
    print(summary(f"{args.target} / {args.peer} p99, all", all_ratios))
    print(summary(f"{args.target} / {args.peer} p99, steal <= {args.max_steal} %", calm_ratios))
    print(steal_adjusted(f"{args.target} / {args.peer} p99 at equal steal", steal_points))
    return 0 if all_ratios else 1


if __name__ == "__main__":
    sys.exit(main())
