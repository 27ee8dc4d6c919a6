"""``python -m bench.chaos --fault F --cycles N --seed S``: break Roadside on purpose, print the books.

The last line is one JSON object (fault, cycles, created, stored, lost,
duplicated, stuck, recover_s_max, ...). Exit status 1 when the books do not
balance or something got stuck.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

from bench.chaos.faults import FAULTS, FaultUnavailableError
from bench.chaos.run import run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    parser.add_argument(
        "--fault",
        required=True,
        help=f"one of {', '.join(FAULTS)}, or several joined by commas (run in turn)",
    )
    parser.add_argument("--cycles", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--agents", type=int, default=2)
    parser.add_argument("--stuck-after-s", type=float, default=90.0)
    parser.add_argument(
        "--hold-scale", type=float, default=1.0, help="scale how long each fault stays in place"
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keep the run's files here (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.fault.split(",") if name not in FAULTS]
    if unknown:
        parser.error(f"unknown fault {', '.join(unknown)}; choose from {', '.join(FAULTS)}")
    faults = [FAULTS[name] for name in args.fault.split(",")]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="chaos-") as scratch:
        root = args.workdir or Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        try:
            outcome = run(
                faults,
                args.cycles,
                args.seed,
                root,
                args.agents,
                args.stuck_after_s,
                hold_scale=args.hold_scale,
            )
        except FaultUnavailableError as exc:
            print(json.dumps({"fault": args.fault, "cycles": 0, "skipped": str(exc)}))
            return 0
    for line in outcome.books.lines():
        print(line)
    for i, action in enumerate(outcome.actions, 1):
        print(f"cycle {i}: {action}")
    summary = outcome.summary()
    print(json.dumps(summary))
    return 0 if summary["balanced"] else 1


if __name__ == "__main__":
    sys.exit(main())
