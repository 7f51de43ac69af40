"""`python -m bench [--quick] [--only ours,bare,runtime,dramatiq,faststream] [--replicas N]
[--profile PROCESS] [--wait-quiet S]`, `python -m bench --scale [--quick]`;
see docs/benchmarks.md and docs/scaling.md."""

import argparse
import asyncio
import os
import sys

from apptctl.portal_keys import tool_keyring
from bench.run import PROFILE_TARGETS, SYSTEMS, main_async
from workers.runtime.settings import Settings


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="50 and 200/s for 7 s each and a 5 s max phase (under two minutes)",
    )
    parser.add_argument(
        "--only",
        default="ours,bare,runtime,dramatiq,faststream",
        help="comma-separated systems to run (the summary line needs all five)",
    )
    parser.add_argument(
        "--profile",
        choices=sorted(PROFILE_TARGETS),
        metavar="PROCESS",
        help="run only the system of PROCESS (a worker, rt_stageN or bareN) at max load for 15 s with "
        "py-spy sampling that process; print where its CPU goes",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0,
        metavar="SECONDS",
        help="first wait up to this long for the machine to be under 20%% busy (shared machines)",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        choices=range(1, 5),
        metavar="N",
        help="run N processes per stage for OURS and RUNTIME (BARE stays at one)",
    )
    parser.add_argument(
        "--scale",
        action="store_true",
        help="instead: max throughput with 1 and 2 replicas per stage (OURS, RUNTIME), and the gate's "
        "decision time with 1k and 1M appointments (seeded with INSERT ... SELECT)",
    )
    args = parser.parse_args()
    # Our pipeline takes only signed portal messages: the load generator signs them and the workers it
    # starts verify them, with the configured keyring or else the development one.
    os.environ.update(tool_keyring(Settings())[1])
    if args.scale:
        from bench.scale import main_async as scale_main

        return asyncio.run(scale_main(args.quick, args.wait_quiet))
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown system(s): {', '.join(sorted(unknown))}")
    return asyncio.run(main_async(args.quick, only, args.profile, args.wait_quiet, args.replicas))


if __name__ == "__main__":
    sys.exit(main())
