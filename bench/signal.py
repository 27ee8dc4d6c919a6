"""Signal control on one SUMO demand, three (four) ways, judged by SUMO.

    python -m bench.signal [--duration 900] [--seed 42] [--ways fixed,sumo_actuated,roadside_direct,roadside]
                           [--sumocfg PATH --camera-pose FILE [--tls ID]] [--workdir DIR]

Without ``--sumocfg`` it generates Roadside's ``intersection`` scenario
(:mod:`roadside.sim.sumo.scenarios`) at ``--seed`` for ``--duration``
seconds. Each way runs the same network, routes and seed
(:mod:`roadside.sim.signal_ways`): SUMO's fixed-time program, SUMO's
actuated program on its own loops, Roadside's controller on SUMO's stop-bar
E2 detectors (``roadside_direct``), and, where the loop is available, the
controller fed through camera → agent → sealed MQTT → hub → call stream
(``roadside``, :mod:`roadside.sim.signal_loop`). Figures come from SUMO's
tripinfo; the last line is one JSON object with at least ``time_loss_s``
per way, ``tmc_error_max``, ``presence_agreement``,
``call_latency_p95_ms`` and ``conflicting_greens``. Targets (issue 11):
roadside time loss ≥ 15 % below fixed and within 10 % of sumo_actuated;
TMC within 5 %; presence agreement ≥ 95 %; call latency p95 ≤ 300 ms.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal as os_signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from roadside.shared.errors import RoadsideError
from roadside.sim.signal_ways import WAYS, Network, compare
from roadside.sim.sumo.scenarios import build_scenario


def network_of(args: argparse.Namespace, workdir: Path) -> Network:
    if args.sumocfg is not None:
        return Network.of(args.sumocfg, args.tls, args.camera_pose, workdir)
    scenario = build_scenario("intersection", workdir / "scenario", seed=args.seed, duration_s=args.duration)
    return Network(
        scenario.sumocfg, scenario.net, scenario.junction, args.camera_pose or scenario.poses, workdir
    )


def loop_runner() -> Any:
    """The whole-loop way, if this checkout has it (it needs the hub, the agent and the SUMO camera)."""
    try:
        from roadside.sim.signal_loop import run_loop
    except ImportError as exc:
        print(f"the roadside way is not available here: {exc}", file=sys.stderr)
        return None
    return run_loop


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=900.0, help="simulated seconds per way")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--ways", default=",".join(WAYS))
    parser.add_argument("--sumocfg", type=Path)
    parser.add_argument("--camera-pose", type=Path)
    parser.add_argument("--tls", help="the traffic light (default: the network's only one)")
    parser.add_argument("--workdir", type=Path, help="keep SUMO's outputs here (default: a temp dir)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    # `kill` stops the run like Ctrl-C: the loop's agent, hub, broker and SUMO are stopped on the way out.
    os_signal.signal(os_signal.SIGTERM, lambda *_: sys.exit(143))
    ways = tuple(w for w in args.ways.split(",") if w)
    unknown = set(ways) - set(WAYS)
    if unknown:
        parser.error(f"unknown ways {sorted(unknown)}; choose from {', '.join(WAYS)}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="roadside-bench-signal-"))
    try:
        network = network_of(args, workdir)
        summary = compare(
            network, args.duration, args.seed, ways, loop_runner() if "roadside" in ways else None
        )
    except RoadsideError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    for way, figures in summary["ways"].items():
        print(
            f"{way:16s} time loss {figures['time_loss_s']:6.1f} s  waiting {figures['waiting_s']:6.1f} s  "
            f"stops {figures['stops']:.2f}  throughput {figures['throughput_vph']:.0f} veh/h  "
            f"conflicting greens {figures['conflicting_greens']}"
        )
    print(f"outputs in {workdir}", file=sys.stderr)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
