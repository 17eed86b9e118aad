"""`python -m tests.bench [SCENARIO]`: run one scenario, or all of them (`make bench`)."""

from __future__ import annotations

import argparse
import os
import platform
import signal
import time

from tests.bench import __doc__ as bench_doc
from tests.bench.common import print_table
from tests.bench.concurrency import scenario_concurrency
from tests.bench.dashboard import scenario_dashboard
from tests.bench.fairness import scenario_fairness, scenario_weights
from tests.bench.floor import scenario_floor
from tests.bench.groups import scenario_groups
from tests.bench.isolation import scenario_isolation
from tests.bench.overhead import scenario_overhead
from tests.bench.pool import scenario_pool
from tests.bench.ratelimit import scenario_ratelimit, scenario_strict
from tests.bench.scaleout import scenario_scaleout
from tests.bench.spend import scenario_budget, scenario_cost
from tests.bench.stream import scenario_stream
from tests.bench.throughput import scenario_throughput
from tests.bench.tiers import scenario_tiers
from tests.bench.waiting import scenario_waiting


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    # A SIGTERM (CI time-out, kill) must still run the finally blocks that stop what we started.
    signal.signal(signal.SIGTERM, _interrupt)
    parser = argparse.ArgumentParser(
        description=bench_doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "scenario",
        nargs="?",
        default="all",
        choices=[
            "all",
            "pool",
            "ratelimit",
            "strict",
            "groups",
            "fairness",
            "stream",
            "waiting",
            "overhead",
            "throughput",
            "concurrency",
            "scaleout",
            "floor",
            "isolation",
            "dashboard",
            "budget",
            "cost",
            "tiers",
        ],
    )
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument("--webs", type=int, default=1, help="throughput: web processes")
    parser.add_argument("--workers", type=int, default=2, help="throughput: worker processes")
    parser.add_argument("--latency", type=float, default=1.0)
    args = parser.parse_args()
    print(
        f"# {time.strftime('%Y-%m-%d')} on {platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    if args.scenario in ("all", "ratelimit"):
        print("\n## ratelimit")
        print_table(scenario_ratelimit(args.requests or 400))
    if args.scenario in ("all", "strict"):
        print("\n## strict")
        print_table(scenario_strict(args.requests or 400))
    if args.scenario in ("all", "groups"):
        print("\n## groups")
        print_table(scenario_groups(args.requests or 600))
    if args.scenario in ("all", "fairness"):
        print("\n## fairness")
        print_table(scenario_fairness(args.requests or 5000))
        print()
        print_table(scenario_weights())
    if args.scenario in ("all", "stream"):
        print("\n## stream")
        print_table(scenario_stream(args.requests or 20))
    if args.scenario in ("all", "waiting"):
        print("\n## waiting")
        print_table(scenario_waiting(args.requests or 2000))
    if args.scenario in ("all", "overhead"):
        print("\n## overhead")
        print_table(scenario_overhead())
    if args.scenario in ("all", "throughput"):
        print("\n## throughput")
        rows, cost = scenario_throughput(webs=args.webs, workers=args.workers)
        print_table(rows)
        print("\n## cost per request")
        print_table(cost)
    if args.scenario in ("all", "concurrency"):
        print("\n## concurrency")
        print_table(scenario_concurrency())
    if args.scenario in ("all", "scaleout"):
        print("\n## scaleout")
        print_table(scenario_scaleout())
    if args.scenario in ("all", "floor"):
        print("\n## floor")
        print_table(scenario_floor())
    if args.scenario in ("all", "isolation"):
        print("\n## isolation")
        print_table(scenario_isolation())
    if args.scenario in ("all", "dashboard"):
        print("\n## dashboard")
        print_table(scenario_dashboard(args.requests or 50))
    if args.scenario in ("all", "budget"):
        print("\n## budget")
        print_table(scenario_budget())
    if args.scenario in ("all", "cost"):
        print("\n## cost")
        print_table(scenario_cost())
    if args.scenario in ("all", "tiers"):
        print("\n## tiers")
        print_table(scenario_tiers(args.requests or 1000))
    if args.scenario in ("all", "pool"):
        print("\n## pool")
        print_table(scenario_pool(args.requests or 500, args.latency))


if __name__ == "__main__":
    main()
