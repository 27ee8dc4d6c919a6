"""Signal control on one SUMO demand, three (four) ways, judged by SUMO.

    python -m bench.signal [--duration 900] [--seed 42] [--ways fixed,sumo_actuated,roadside_direct,roadside]
                           [--sumocfg PATH --camera-pose FILE [--tls ID]] [--workdir DIR]
                           [--tmc-only | --no-tmc | --no-tmc-pass] [--tmc-duration S] [--junction-pose FILE]
                           [--model ONNX] [--junction-model ONNX] [--conf 0.35]

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

The loop's agent runs ``--model`` (``models/detector_sumo.onnx``, the detector
released for SUMO's cameras, where present) with tracks started at ``--conf``,
and the junction camera joins the loop (its movements read back from the hub:
``tmc_error_max_loop``, or ``tmc_error_max`` with ``--no-tmc-pass``).

Turning-movement counts (:mod:`roadside.sim.sumo.tmc`) need a camera that
sees an entrance and its exit: one high camera over the junction box (the
first camera of ``--junction-pose``; by default the scenario's, or
:func:`roadside.sim.sumo.poses.junction_camera` for another network). Its
frames run through the junction camera's detector (``--junction-model``:
``models/detector_sumo_junction.onnx``, fine-tuned on the mast's view, where
present; an explicit ``--model`` otherwise), the agent's tracker and movement
counter, and again with the frames'
ground-truth boxes as detections (the counting and geometry alone); each is
compared per movement with SUMO's route-based truth. ``tmc_error_max`` is
the detector's figure (largest relative error over movements with at least
20 true vehicles), ``tmc`` holds both breakdowns.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import signal as os_signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from roadside.edge.analytics.config import TrackerConfig
from roadside.shared.errors import RoadsideError
from roadside.sim.signal_ways import WAYS, Network, compare
from roadside.sim.sumo.poses import junction_camera, load_pose_file, write_pose_file
from roadside.sim.sumo.scenarios import build_scenario
from roadside.sim.sumo.tmc import count_movements, onnx_detector

_MODELS = Path(__file__).resolve().parents[1] / "models"
# The detector released for SUMO's cameras (docs/sumo.md) where the checkout has it, else the shipped one.
SUMO_MODEL = _MODELS / "detector_sumo.onnx"
DEFAULT_MODEL = SUMO_MODEL if SUMO_MODEL.is_file() else _MODELS / "detector.onnx"
# The same detector fine-tuned on the junction camera's view from its 15 m mast (docs/sumo.md): it
# counts turning movements better, but the approach cameras keep SUMO_MODEL (their presence is judged
# on it).
JUNCTION_MODEL = _MODELS / "detector_sumo_junction.onnx"
DEFAULT_CONF = 0.35


def network_of(args: argparse.Namespace, workdir: Path) -> Network:
    if args.sumocfg is not None:
        network = Network.of(args.sumocfg, args.tls, args.camera_pose, workdir)
        if args.junction_pose is None and not args.no_tmc:
            args.junction_pose = workdir / "junction.cameras.json"
            workdir.mkdir(parents=True, exist_ok=True)
            write_pose_file(args.junction_pose, [junction_camera(network.net, args.junction or network.tls)])
        return network
    scenario = build_scenario("intersection", workdir / "scenario", seed=args.seed, duration_s=args.duration)
    if args.junction_pose is None:
        args.junction_pose = scenario.junction_poses
    return Network(
        scenario.sumocfg, scenario.net, scenario.junction, args.camera_pose or scenario.poses, workdir
    )


_TMC_WARMUP_S = 60.0


def junction_model_of(args: argparse.Namespace) -> Path:
    """The junction camera's detector: ``--junction-model``, else an explicit ``--model``, else its own file."""
    if args.junction_model is not None:
        return Path(args.junction_model)
    if args.model is not None:
        return Path(args.model)
    return JUNCTION_MODEL if JUNCTION_MODEL.is_file() else DEFAULT_MODEL


def turning_movements(network: Network, args: argparse.Namespace) -> dict[str, Any]:
    """Turning-movement counts from the junction camera, by the detector and by truth boxes, against SUMO."""
    junction = args.junction or network.tls
    if args.junction_pose is not None:
        pose = load_pose_file(args.junction_pose).cameras[0]
    else:
        pose = junction_camera(network.net, junction)
    # The demand ends at --duration: count after the warm-up, up to then.
    duration = args.tmc_duration or max(args.duration - _TMC_WARMUP_S, 10.0)
    common: dict[str, Any] = {"duration_s": duration, "warmup_s": _TMC_WARMUP_S, "seed": args.seed}
    out: dict[str, Any] = {"camera": pose.model_dump(mode="json", exclude_none=True)}
    from roadside.sim.signal_loop import LOW_SCORE, tracker_settings

    model = junction_model_of(args)
    detector = count_movements(
        network.sumocfg,
        network.net,
        junction,
        pose,
        # As the loop's agent runs it: boxes down to LOW_SCORE, tracks started at --conf.
        detect=onnx_detector(model, conf=min(LOW_SCORE, args.conf)),
        tracker=TrackerConfig.model_validate(tracker_settings(args.conf)),
        detections=model.name,
        **common,
    )
    out["detector"] = detector.as_dict()
    out["truth_boxes"] = count_movements(network.sumocfg, network.net, junction, pose, **common).as_dict()
    return out


def loop_runner(args: argparse.Namespace) -> Any:
    """The whole-loop way, if this checkout has it (it needs the hub, the agent and the SUMO camera).

    Its agent runs ``--model`` at ``--conf``; the junction camera joins it unless ``--no-tmc``."""
    try:
        from roadside.sim.signal_loop import run_loop
    except ImportError as exc:
        print(f"the roadside way is not available here: {exc}", file=sys.stderr)
        return None
    return functools.partial(
        run_loop,
        model=args.model or DEFAULT_MODEL,
        conf_threshold=args.conf,
        junction_pose=None if args.no_tmc else args.junction_pose,
        frame_queue=args.frame_queue,
    )


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
    parser.add_argument("--tmc-only", action="store_true", help="only the turning-movement counts")
    parser.add_argument("--no-tmc", action="store_true", help="no turning-movement counts")
    parser.add_argument(
        "--no-tmc-pass",
        action="store_true",
        help="no separate turning-movement pass (the whole loop's junction camera still counts)",
    )
    parser.add_argument(
        "--tmc-duration",
        type=float,
        help="simulated seconds counted after a 60 s warm-up (default: --duration less 60)",
    )
    parser.add_argument(
        "--junction-pose", type=Path, help="pose file: its first camera sees the whole junction"
    )
    parser.add_argument("--junction", help="the junction counted (default: --tls)")
    parser.add_argument(
        "--model",
        type=Path,
        help="ONNX detector of the loop's agent, all its cameras (default: models/detector_sumo.onnx); "
        "given, the counts' too unless --junction-model",
    )
    parser.add_argument(
        "--junction-model",
        type=Path,
        help="ONNX detector of the turning-movement counts (default: --model if given, "
        "else models/detector_sumo_junction.onnx)",
    )
    parser.add_argument("--conf", type=float, default=DEFAULT_CONF, help="its confidence threshold")
    parser.add_argument(
        "--frame-queue",
        type=int,
        default=1,
        help="the loop's agent: frames waiting per camera (the oldest dropped past it; 1: the newest frame)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    # `kill` stops the run like Ctrl-C: the loop's agent, hub, broker and SUMO are stopped on the way out.
    os_signal.signal(os_signal.SIGTERM, lambda *_: sys.exit(143))
    ways = () if args.tmc_only else tuple(w for w in args.ways.split(",") if w)
    unknown = set(ways) - set(WAYS)
    if unknown:
        parser.error(f"unknown ways {sorted(unknown)}; choose from {', '.join(WAYS)}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="roadside-bench-signal-"))
    try:
        network = network_of(args, workdir)
        summary = compare(
            network, args.duration, args.seed, ways, loop_runner(args) if "roadside" in ways else None
        )
        if not args.no_tmc and not args.no_tmc_pass:
            tmc = turning_movements(network, args)
            if summary.get("tmc_error_max") is not None:  # the whole loop's own count, through the hub
                summary["tmc_error_max_loop"] = summary["tmc_error_max"]
            summary["tmc_error_max"] = tmc["detector"]["tmc_error_max"]
            summary["tmc_error_max_truth_boxes"] = tmc["truth_boxes"]["tmc_error_max"]
            summary["tmc"] = tmc
    except RoadsideError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    for way, figures in summary["ways"].items():
        print(
            f"{way:16s} time loss {figures['time_loss_s']:6.1f} s  waiting {figures['waiting_s']:6.1f} s  "
            f"stops {figures['stops']:.2f}  throughput {figures['throughput_vph']:.0f} veh/h  "
            f"conflicting greens {figures['conflicting_greens']}"
        )
    for source in ("detector", "truth_boxes"):
        for m in summary.get("tmc", {}).get(source, {}).get("movements", []):
            print(
                f"tmc {source:11s} {m['entry']:>6s} -> {m['exit']:6s} truth {m['truth']:4d}  counted {m['counted']:4d}"
            )
    print(f"outputs in {workdir}", file=sys.stderr)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
