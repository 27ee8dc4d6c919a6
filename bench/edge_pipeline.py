"""Edge pipeline throughput: the agent against bare onnxruntime and a naive loop, same model, same box.

    python -m bench.edge_pipeline --streams 4 [--model PATH | --model yolo-class] [--seconds 10]
        [--threads N] [--rounds N] [--queue block|drop_oldest]

Three phases, each in its own Python process (fresh interpreter, its own
GIL and memory, so RSS is the phase's own), one after another:

- agent: the real ``roadside.edge.agent.Agent`` (``start()`` / ``stop()``): one reader
  thread per synthetic 640x480 stream at full speed (``realtime = false``)
  → the bounded frame queue → the pipeline thread (dynamic batching,
  letterbox, inference, decode + NMS, tracking, line counting, events) →
  the SQLite outbox → the uplink to a real Mosquitto over mTLS. Stage
  times come from thin perf_counter wrappers set on the agent's objects
  after warm-up (about a microsecond a call).
- bare: the same model in an onnxruntime session opened by the agent's own
  code (same threads, same graph optimisation), ``session.run`` in a loop on
  a pre-made input of the agent's batch size. The ceiling.
- naive: one loop, batch 1: read a frame, letterbox, ``session.run``,
  decode, ``json.dumps``, publish (QoS 1) to the same Mosquitto over mTLS
  with paho, the way a first script would. Same thread setting.

``--queue block`` (the default) makes the bench's frame queue push back on
the readers. The agent's queue drops the oldest frame when full, which is
right for live cameras; unpaced synthetic streams would then spend a core
rendering frames only to drop them, and the figure would measure that.

``--model yolo-class`` builds ``roadside.models.yolo_class`` (YOLOv8n-sized, 8.7
GFLOPs at 640, random weights; needs the ``train`` extra) into
``~/.cache/roadside`` first. ``stage_ms`` is milliseconds per frame spent
in each stage (stages on different threads overlap, so they do not add up
to 1000 / agent_fps). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("bench.edge_pipeline")

SITE = "bench"
WIDTH, HEIGHT = 640, 480
CONF, IOU = 0.4, 0.5
# On a GPU box every phase shares one TensorRT engine cache, so only the first run builds engines.
TRT_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "roadside" / "trt-cache"


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident set size of this process in MB."""
    fields: dict[str, float] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = float(value.split()[0]) / 1024.0
    except OSError:
        pass
    if len(fields) < 2:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        return fields.get("VmRSS", peak), peak
    return fields["VmRSS"], fields["VmHWM"]


def thread_cpu_s() -> dict[str, float]:
    """CPU seconds (user + system) of each live Python thread, by thread name, and the whole process."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = defaultdict(float)
    for thread in threading.enumerate():
        try:
            stat = Path(f"/proc/self/task/{thread.native_id}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        # Several readers share a name pattern: group them ("source-cam0" → "source").
        out[thread.name.split("-")[0]] += (int(fields[11]) + int(fields[12])) / tick
    times = os.times()
    out["process"] = times.user + times.system
    return out


def cpu_ms_per_frame(before: dict[str, float], after: dict[str, float], frames: int) -> dict[str, float]:
    """Where the CPU went, per processed frame; ``other`` is threads not named here (onnxruntime's, paho's)."""
    named = {k: 1000.0 * (after.get(k, 0.0) - before.get(k, 0.0)) / max(1, frames) for k in after}
    total = named.pop("process")
    named["other"] = max(0.0, total - sum(named.values()))
    return {"total": round(total, 3), **{k: round(v, 3) for k, v in sorted(named.items()) if v > 0.0}}


class StageClock:
    """perf_counter totals per stage, from wrappers set on live objects; off until :meth:`start`."""

    def __init__(self) -> None:
        self.total: dict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()
        self.items: Counter[str] = Counter()
        self.enabled = False
        self._lock = threading.Lock()

    def wrap(self, owner: object, attr: str, stage: str, size: Callable[..., int] | None = None) -> None:
        inner = getattr(owner, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            if not self.enabled:
                return inner(*args, **kwargs)
            started = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - started
                with self._lock:
                    self.total[stage] += elapsed
                    self.calls[stage] += 1
                    if size is not None:
                        self.items[stage] += size(*args, **kwargs)

        setattr(owner, attr, timed)


# -- phases (each runs in its own process) ----------------------------------------------------


def _scene_images(streams: int, count: int) -> list[Any]:
    from roadside.sim.synthetic import RoadScene, SceneConfig

    scenes = [RoadScene(SceneConfig(width=WIDTH, height=HEIGHT, seed=i)) for i in range(streams)]
    for scene in scenes:
        scene.advance(60)  # into traffic, not an empty street
    return [scenes[i % streams].step().image for i in range(count)]


def _provider_settings(spec: dict[str, Any], max_batch: int) -> Any:
    from roadside.edge.inference.providers import ProviderSettings

    return ProviderSettings(trt_cache_path=TRT_CACHE, max_batch=max_batch)


def phase_bare(spec: dict[str, Any]) -> dict[str, Any]:
    from roadside.edge.inference.engine import OnnxSession
    from roadside.vision.yolo import letterbox_batch

    session = OnnxSession(
        Path(spec["model"]), spec["providers"], spec["threads"], _provider_settings(spec, spec["batch"])
    )
    h, w = spec["input"]
    batch, _ = letterbox_batch(_scene_images(spec["streams"], spec["batch"]), (h, w))
    feed = {session.input_name: batch.astype(session.input_dtype)}
    raw = session.session
    for _ in range(3):
        raw.run(None, feed)
    runs, started, cpu0 = 0, time.perf_counter(), thread_cpu_s()
    while (elapsed := time.perf_counter() - started) < spec["seconds"] or runs < 5:
        raw.run(None, feed)
        runs += 1
    cpu = cpu_ms_per_frame(cpu0, thread_cpu_s(), runs * spec["batch"])
    return {"bare_ort_fps": runs * spec["batch"] / elapsed, "bare_runs": runs, "bare_cpu_ms": cpu["total"]}


def phase_naive(spec: dict[str, Any]) -> dict[str, Any]:
    import onnxruntime as ort

    from roadside.sim.synthetic import RoadScene, SceneConfig
    from roadside.vision.yolo import decode_yolo, letterbox

    options = ort.SessionOptions()
    options.intra_op_num_threads = spec["threads"]
    session = ort.InferenceSession(spec["model"], options, providers=spec["providers"])
    name = session.get_inputs()[0].name
    scenes = [RoadScene(SceneConfig(width=WIDTH, height=HEIGHT, seed=i)) for i in range(spec["streams"])]
    publish, close, sink = _naive_sink(spec)
    size = (int(spec["input"][0]), int(spec["input"][1]))

    def one(i: int) -> None:
        scene = scenes[i % len(scenes)]
        frame = scene.step()
        blob, info = letterbox(frame.image, size)
        out = session.run(None, {name: blob[None]})[0]
        found = decode_yolo(out[0], CONF, IOU, info, num_classes=spec["classes"])
        payload = json.dumps(
            {
                "stream": f"cam{i % len(scenes)}",
                "frame": frame.index,
                "ts": time.time(),
                "detections": [
                    {"box": [round(float(v), 1) for v in box], "score": round(float(s), 3), "cls": int(c)}
                    for box, s, c in zip(found.boxes, found.scores, found.class_ids, strict=True)
                ],
            }
        )
        publish(payload.encode())

    for i in range(2 * len(scenes)):  # warm-up
        one(i)
    frames, started, cpu0 = 0, time.perf_counter(), thread_cpu_s()
    while (elapsed := time.perf_counter() - started) < spec["seconds"] or frames < 5:
        one(frames)
        frames += 1
    cpu = cpu_ms_per_frame(cpu0, thread_cpu_s(), frames)
    current, _peak = rss_mb()
    close()
    return {
        "naive_fps": frames / elapsed,
        "naive_rss_mb": current,
        "naive_sink": sink,
        "naive_cpu_ms": cpu["total"],
    }


def _naive_sink(spec: dict[str, Any]) -> tuple[Callable[[bytes], None], Callable[[], None], str]:
    bundle_path = spec.get("naive_bundle")
    if not bundle_path:
        sent: list[int] = []
        return (lambda payload: sent.append(len(payload))), (lambda: None), "memory"
    from bench.fleet import SimulatedDevice
    from roadside.shared import topics
    from roadside.shared.bundle import read_bundle

    bundle = read_bundle(Path(bundle_path))
    device = SimulatedDevice(bundle, max_inflight=1000)
    device.connect("127.0.0.1", bundle.broker.port)
    topic = topics.uplink(bundle.site, bundle.device_id, "events")

    def publish(payload: bytes) -> None:
        device.client.publish(topic, payload, qos=1)

    return publish, device.close, "mosquitto-mtls-qos1"


def phase_agent(spec: dict[str, Any]) -> dict[str, Any]:
    from roadside.edge.assembly import build_agent
    from roadside.edge.settings import load_agent_settings
    from roadside.shared.bundle import read_bundle
    from roadside.shared.queues import Overflow

    work = Path(spec["workdir"])
    settings = load_agent_settings(
        None,
        bundle=Path(spec["agent_bundle"]),
        keys_path=work / "agent.keys.json",
        sources=[
            {
                "type": "synthetic",
                "name": f"cam{i}",
                "seed": i,
                "realtime": False,
                "width": WIDTH,
                "height": HEIGHT,
            }
            for i in range(spec["streams"])
        ],
        model={
            "providers": spec["providers"],
            "trt_cache_path": str(TRT_CACHE),
            "max_batch": spec["max_batch"],
            "path": spec["model"],
            "intra_op_threads": spec["threads"],
            "conf_threshold": CONF,
            "iou_threshold": IOU,
        },
        outbox={"path": str(work / "agent-outbox.db")},
        interval_s=10,
    )
    # --queue block: full-speed synthetic streams wait for the pipeline instead of being dropped.
    overflow = Overflow.BLOCK if spec["queue"] == "block" else Overflow.DROP_OLDEST
    agent = build_agent(settings, read_bundle(Path(spec["agent_bundle"])), frame_overflow=overflow)
    clock = StageClock()
    _instrument(agent, clock)
    agent.start()
    try:
        time.sleep(spec["warmup"])
        _instrument_trackers(agent, clock)
        dropped0, frames0, cpu0 = agent.frames.dropped, _processed(agent), thread_cpu_s()
        clock.enabled, started = True, time.perf_counter()
        time.sleep(spec["seconds"])
        clock.enabled, elapsed = False, time.perf_counter() - started
        frames, dropped = _processed(agent) - frames0, agent.frames.dropped - dropped0
        cpu = cpu_ms_per_frame(cpu0, thread_cpu_s(), frames)
        current, peak = rss_mb()
    finally:
        agent.stop(drain_s=2.0)
    return {
        "agent_fps": frames / elapsed,
        "agent_rss_mb": current,
        "agent_rss_peak_mb": peak,
        "stage_ms": _stage_ms(clock, frames),
        "cpu_ms": cpu,
        "pipeline_busy_pct": 100.0 * clock.total["pipeline"] / elapsed,
        "mean_batch": clock.items["inference"] / max(1, clock.calls["inference"]),
        "dropped_frames": dropped,
        "agent_frames": frames,
        "events": agent.events_emitted,
    }


def _instrument(agent: Any, clock: StageClock) -> None:
    detector = agent.detector
    clock.wrap(detector, "prepare", "letterbox")
    clock.wrap(detector, "infer", "inference", size=lambda tensor, *a, **k: len(tensor))
    clock.wrap(detector, "postprocess", "postprocess")
    clock.wrap(detector, "detect", "detect")
    clock.wrap(agent.pipeline, "_process", "pipeline")  # the pipeline thread's work per batch, all of it
    clock.wrap(agent.frames, "get_batch", "wait_frames")
    clock.wrap(agent.outbox, "put", "outbox")
    for source in agent.sources:
        scene = getattr(source, "scene", None)
        if scene is not None:
            clock.wrap(scene, "step", "generate")


def _instrument_trackers(agent: Any, clock: StageClock) -> None:
    # Per-stream analytics are made on a stream's first frame, so after warm-up.
    for state in list(agent.streams.values()):
        analytics = getattr(state, "analytics", state)
        if hasattr(analytics, "update"):
            clock.wrap(analytics, "update", "analytics")
        tracker = getattr(analytics, "tracker", None)
        if tracker is not None:
            clock.wrap(tracker, "update", "tracking")


def _processed(agent: Any) -> int:
    return sum(state.frames for state in list(agent.streams.values()))


def _stage_ms(clock: StageClock, frames: int) -> dict[str, float]:
    per = {k: 1000.0 * v / max(1, frames) for k, v in clock.total.items()}
    tracking = per.get("tracking", 0.0)
    return {
        "generate": round(per.get("generate", 0.0), 3),
        "letterbox": round(per.get("letterbox", 0.0), 3),
        "inference": round(per.get("inference", 0.0), 3),
        "postprocess": round(per.get("postprocess", 0.0), 3),
        "tracking": round(tracking, 3),
        "counting_events": round(max(0.0, per.get("analytics", 0.0) - tracking), 3),
        "outbox": round(per.get("outbox", 0.0), 3),
        "pipeline_other": round(
            max(0.0, per.get("pipeline", 0.0) - per.get("detect", 0.0) - per.get("analytics", 0.0)), 3
        ),
        "wait_frames": round(per.get("wait_frames", 0.0), 3),
    }


PHASES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "agent": phase_agent,
    "bare": phase_bare,
    "naive": phase_naive,
}


# -- orchestration --------------------------------------------------------------------------


def _run_phase(phase: str, spec: dict[str, Any]) -> dict[str, Any]:
    spec_file = Path(spec["workdir"]) / f"{phase}.json"
    spec_file.write_text(json.dumps(spec))
    command = [sys.executable, "-m", "bench.edge_pipeline", "--phase", phase, "--spec", str(spec_file)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{phase} phase failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def model_path(arg: str | None) -> Path:
    if arg is None:
        from roadside.edge.inference.engine import DEFAULT_MODEL

        return DEFAULT_MODEL
    if arg == "yolo-class":
        # Built in a child process: torch stays out of this one and of the phases.
        done = subprocess.run(
            [sys.executable, "-m", "roadside.models.yolo_class"],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"building the YOLO-class model failed (needs the train extra):\n{done.stderr[-2000:]}"
            )
        return Path(json.loads(done.stdout.strip().splitlines()[-1])["path"])
    path = Path(arg)
    if not path.is_file():
        raise SystemExit(f"--model {arg}: no such file")
    return path


def _describe(
    path: Path, providers: list[str], threads: int, streams: int, max_batch: int | None
) -> dict[str, Any]:
    from roadside.edge.inference.batching import BatchPolicy
    from roadside.edge.inference.engine import OnnxDetector
    from roadside.edge.settings import ModelConfig

    detector = OnnxDetector(path, providers, CONF, IOU, intra_op_threads=threads)
    provider = detector.info.active_provider
    policy = BatchPolicy.for_streams(streams, max_batch, ModelConfig().max_wait_ms, provider)
    return {
        "input": list(detector.info.input_size),
        "classes": detector.num_classes,
        "batch": policy.max_batch,  # what the agent's batcher will form, so bare runs the same
        "max_batch": max_batch,
        "model_version": detector.info.version,
        "provider": provider,
    }


class BrokerLoop:
    """The broker and enrolled identities the phases publish to; Mosquitto missing: in-memory sink."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.broker: Any = None
        self.bundles: dict[str, str] = {}

    def __enter__(self) -> BrokerLoop:
        from roadside.cloud.broker.mosquitto import MosquittoBroker
        from roadside.cloud.home import acl_devices, enroll_device, init_home
        from roadside.cloud.registry import Registry
        from roadside.shared.bundle import BrokerAddress

        home = init_home(self.workdir / "hub", ["localhost"], ["127.0.0.1"])
        try:
            self.broker = MosquittoBroker(
                home.broker_dir, ca_cert_pem=home.ca_file.read_bytes(), server=home.broker_server_cert()
            )
            self.broker.start()
        except Exception as exc:  # no mosquitto here: the naive loop publishes to memory, the agent nowhere
            log.warning("no Mosquitto (%s); naive loop publishes to an in-memory sink", exc)
            self.broker = None
        port = self.broker.port if self.broker is not None else 1
        registry = Registry(home.registry_url)
        try:
            for device in ("bench-agent", "bench-naive"):
                _, path = enroll_device(
                    home,
                    registry,
                    device,
                    SITE,
                    BrokerAddress(host="127.0.0.1", port=port),
                    out=self.workdir / f"{device}.json",
                )
                self.bundles[device] = str(path)
            if self.broker is not None:
                self.broker.reload_acl(acl_devices(registry))
        finally:
            registry.close()
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.broker is not None:
            self.broker.stop()


def run(args: argparse.Namespace) -> dict[str, Any]:
    model = model_path(args.model)
    workdir = Path(tempfile.mkdtemp(prefix="bench-edge-"))
    spec: dict[str, Any] = {
        "model": str(model),
        "streams": args.streams,
        "threads": args.threads,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "queue": args.queue,
        "workdir": str(workdir),
        "providers": args.providers.split(","),
        **_describe(model, args.providers.split(","), args.threads, args.streams, args.max_batch),
    }
    rounds: dict[str, list[dict[str, Any]]] = defaultdict(list)
    try:
        with BrokerLoop(workdir) as loop:
            spec["agent_bundle"] = loop.bundles["bench-agent"]
            spec["naive_bundle"] = loop.bundles["bench-naive"] if loop.broker is not None else None
            for r in range(args.rounds):
                # Interleaved, so slow drift in other load on the box hits every phase alike.
                for phase in ("bare", "agent", "naive"):
                    result = _run_phase(phase, spec)
                    log.info(
                        "round %d %s: %s", r + 1, phase, {k: v for k, v in result.items() if k != "stage_ms"}
                    )
                    rounds[phase].append(result)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return summarise(args, spec, model, rounds)


def summarise(
    args: argparse.Namespace, spec: dict[str, Any], model: Path, rounds: dict[str, list[dict[str, Any]]]
) -> dict[str, Any]:
    """The JSON line: medians over rounds, ratios as medians of per-round ratios."""
    agent = _median_round(rounds["agent"], "agent_fps")
    bare = statistics.median(r["bare_ort_fps"] for r in rounds["bare"])
    naive = _median_round(rounds["naive"], "naive_fps")
    # Other work on a shared box moves every figure; a ratio within one round (phases seconds
    # apart) drifts less than a ratio of medians taken minutes apart.
    pairs = zip(rounds["agent"], rounds["bare"], rounds["naive"], strict=True)
    vs_bare, vs_naive = zip(
        *((a["agent_fps"] / b["bare_ort_fps"], a["agent_fps"] / n["naive_fps"]) for a, b, n in pairs),
        strict=True,
    )
    bare_cpu = statistics.median(r["bare_cpu_ms"] for r in rounds["bare"])
    agent_cpu = statistics.median(r["cpu_ms"]["total"] for r in rounds["agent"])
    naive_cpu = statistics.median(r["naive_cpu_ms"] for r in rounds["naive"])
    return {
        "streams": args.streams,
        "model": "yolo-class" if args.model == "yolo-class" else model.name,
        "model_path": str(model),
        "input": spec["input"],
        "classes": spec["classes"],
        "providers": spec["providers"],
        "active_provider": spec["provider"],
        "threads": args.threads,
        "batch": spec["batch"],
        "queue": args.queue,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "agent_fps": round(agent["agent_fps"], 1),
        "bare_ort_fps": round(bare, 1),
        "naive_fps": round(naive["naive_fps"], 1),
        "agent_vs_bare": round(statistics.median(vs_bare), 3),
        "agent_vs_naive": round(statistics.median(vs_naive), 3),
        "agent_vs_bare_rounds": [round(r, 3) for r in vs_bare],
        "agent_vs_naive_rounds": [round(r, 3) for r in vs_naive],
        "agent_rss_mb": round(agent["agent_rss_mb"], 1),
        "agent_rss_peak_mb": round(agent["agent_rss_peak_mb"], 1),
        "naive_rss_mb": round(naive["naive_rss_mb"], 1),
        "stage_ms": agent["stage_ms"],
        # CPU time per frame barely moves with other load: the ratios the box's cores allow.
        "cpu_ms_per_frame": {"agent": agent["cpu_ms"], "bare_ort": bare_cpu, "naive": naive_cpu},
        "agent_vs_bare_cpu": round(bare_cpu / agent_cpu, 3),
        "agent_vs_naive_cpu": round(naive_cpu / agent_cpu, 3),
        "bare_ort_ms_per_frame": round(1000.0 / bare, 3),
        "pipeline_busy_pct": round(agent["pipeline_busy_pct"], 1),
        "mean_batch": round(agent["mean_batch"], 2),
        "dropped_frames": agent["dropped_frames"],
        "naive_sink": naive["naive_sink"],
        "cpus": os.cpu_count(),
    }


def _median_round(results: list[dict[str, Any]], key: str) -> dict[str, Any]:
    ordered = sorted(results, key=lambda r: float(r[key]))
    return ordered[len(ordered) // 2]


def main(argv: Iterator[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--model", default=None, help="an ONNX detector in YOLO layout, or 'yolo-class'")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per phase and round")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument(
        "--providers",
        default="CPUExecutionProvider",
        help="comma-separated execution providers, best first, for every phase",
    )
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads, all phases")
    parser.add_argument(
        "--max-batch", type=int, default=None, help="the agent's model.max_batch (default: its own policy)"
    )
    parser.add_argument("--rounds", type=int, default=1, help="repeat bare/agent/naive; medians reported")
    parser.add_argument("--queue", choices=["block", "drop_oldest"], default="block")
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("cloud", "edge", "models"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.phase:
        print(json.dumps(PHASES[args.phase](json.loads(args.spec.read_text()))))
        return
    print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
