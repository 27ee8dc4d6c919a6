"""Agent memory: the real ``roadside agent run`` process, a baseline tree against this one, RSS sampled.

    python -m bench.agent_memory [--model shipped|yolo-class|PATH] [--streams 2] [--fps 10]
        [--seconds 30] [--warmup 10] [--rounds 2] [--baseline REV] [--after REV]

The baseline is a ``git worktree`` of ``--baseline`` (default ``HEAD``);
"after" is this checkout, or a worktree of ``--after`` (immune to edits made
while it runs). Each round starts both agents one after the other
(alternating, so drift in the shared box's load hits both), each as the
product runs it: ``roadside agent run --bundle B --config C`` in a fresh
interpreter whose ``PYTHONPATH`` is that tree, with synthetic cameras paced
at ``--fps`` (live video, not a flood), the detector under ``--model``,
its outbox on disk and its uplink to a real Mosquitto over mTLS (enrolled by
the hub's own code). The parent reads ``/proc/<pid>/status`` every 0.25 s:

- ``peak``: ``VmHWM`` at the end (start-up included: model load, warm-up);
- ``steady``: the median ``VmRSS`` over the measured window, after
  ``--warmup`` seconds of running;
- fps and inference latency from the agent's own ``/metrics`` (frames
  processed over the window; the inference ms p50/p95 gauges at its end).

The breakdown: ``/proc/<pid>/smaps`` at the end of the window splits RSS into
file-backed libraries (onnxruntime, OpenCV, numpy/BLAS, Python, other) and
anonymous memory (Python objects, numpy arrays, the onnxruntime arena,
SQLite's cache); a separate run per tree under ``tracemalloc`` (not timed)
says how much of the anonymous part Python allocated, by package; and a
short ``ort`` phase per tree opens the detector alone, as that tree's engine
opens it, and reports what the session and its arena hold after running the
agent's batch. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.edge_pipeline import BrokerLoop, model_path

log = logging.getLogger("bench.agent_memory")

REPO = Path(__file__).resolve().parent.parent
SAMPLE_S = 0.25
WIDTH, HEIGHT = 640, 480

# What the child runs: the console script's own entry point, nothing of the bench imported.
_AGENT = "import sys; sys.argv[0] = 'roadside'; from roadside.cli import main; main()"
# The same under tracemalloc: SIGUSR1 writes what Python holds, by package, to argv[1].
_TRACED = """
import json, os, signal, sys, tracemalloc
tracemalloc.start(1)
out = sys.argv.pop(1)
root = sys.argv.pop()

def dump(*_):
    snapshot = tracemalloc.take_snapshot()
    groups = {}
    for stat in snapshot.statistics("filename"):
        name = stat.traceback[0].filename
        if "site-packages/" in name:
            key = name.split("site-packages/", 1)[1].split("/", 1)[0]
        elif name.startswith(root):
            parts = name[len(root):].strip("/").split("/")
            parts = parts[1:] if parts[0] == "roadside" and len(parts) > 1 else parts  # the symlinks
            key = "roadside." + parts[0].removesuffix(".py")
        elif "/lib/python" in name:
            key = "stdlib"
        else:
            key = name
        groups[key] = groups.get(key, 0) + stat.size
    traced, peak = tracemalloc.get_traced_memory()
    with open(out + ".part", "w") as f:
        json.dump({"traced": traced, "peak": peak, "by_package": groups}, f)
    os.replace(out + ".part", out)  # whole or absent: the parent polls for it

signal.signal(signal.SIGUSR1, dump)
sys.argv[0] = "roadside"
from roadside.cli import main
main()
"""


# -- one agent process ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _status(pid: int) -> dict[str, float]:
    fields: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = float(value.split()[0]) / 1024.0
    return fields


def smaps_breakdown(pid: int) -> dict[str, float]:
    """Resident MB by mapping: onnxruntime, OpenCV, numpy/BLAS, Python, other libraries, anonymous."""
    groups: dict[str, float] = defaultdict(float)
    current = "anon"
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
            head = line.split(None, 5)
            if len(head) >= 5 and "-" in head[0] and ":" in head[3]:  # a mapping's header line
                current = _group(head[5].strip() if len(head) > 5 else "")
            elif line.startswith("Rss:"):
                groups[current] += float(line.split()[1]) / 1024.0
    return {k: round(v, 1) for k, v in sorted(groups.items())}


def _group(path: str) -> str:
    if not path or path.startswith("[heap]") or path.startswith("[anon") or path == "[stack]":
        return "anon"
    if path.startswith("["):
        return "other_libs"
    low = path.lower()
    for key, marks in (
        ("onnxruntime", ("onnxruntime",)),
        ("opencv", ("cv2", "opencv")),
        ("numpy_blas", ("numpy", "openblas", "gfortran", "scipy_openblas")),
        ("python", ("libpython", "/bin/python", "lib-dynload")),
    ):
        if any(mark in low for mark in marks):
            return key
    return "other_libs"


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of the process so far, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _scrape(port: int) -> dict[str, float]:
    """The agent's /metrics: frames processed (all streams) and the inference ms quantiles."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    out: dict[str, float] = defaultdict(float)
    for line in text.splitlines():
        if line.startswith("roadside_agent_stream_frames_processed_total"):
            out["processed"] += float(line.rsplit(" ", 1)[1])
        elif line.startswith("roadside_agent_stream_dropped_frames_total"):
            out["dropped"] += float(line.rsplit(" ", 1)[1])
        elif line.startswith("roadside_agent_inference_ms{"):
            quantile = line.split('quantile="', 1)[1].split('"', 1)[0]
            out[f"inference_ms_q{quantile}"] = float(line.rsplit(" ", 1)[1])
    return dict(out)


def _config(spec: dict[str, Any], run_dir: Path) -> Path:
    config = {
        "sources": [
            {
                "type": "synthetic",
                "name": f"cam{i}",
                "seed": i,
                "fps": spec["fps"],
                "realtime": True,
                "width": WIDTH,
                "height": HEIGHT,
            }
            for i in range(spec["streams"])
        ],
        "model": {"path": spec["model"], "providers": ["CPUExecutionProvider"], "intra_op_threads": 1},
        "outbox": {"path": str(run_dir / "outbox.db")},
        "keys_path": str(run_dir / "keys.json"),
        "metrics_port": spec["port"],
        "interval_s": 10,
        "heartbeat_s": 5.0,
    }
    path = run_dir / "agent.json"
    path.write_text(json.dumps(config))
    return path


@contextlib.contextmanager
def _agent(
    tree: Path, spec: dict[str, Any], run_dir: Path, traced: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    config = _config(spec, run_dir)
    argv = ["agent", "run", "--bundle", spec["bundle"], "--config", str(config), "--log-level", "WARNING"]
    if traced is None:
        command = [sys.executable, "-c", _AGENT, *argv]
    else:
        command = [sys.executable, "-c", _TRACED, str(traced), *argv, str(tree)]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    with (run_dir / "agent.log").open("wb") as logfile:
        proc = subprocess.Popen(command, cwd=run_dir, env=env, stdout=logfile, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _wait_ready(proc: subprocess.Popen[bytes], port: int, run_dir: Path, timeout: float = 120.0) -> float:
    """Seconds until the agent's /metrics shows a processed frame (model loaded, pipeline running)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            raise RuntimeError(
                f"agent exited {proc.returncode}:\n{(run_dir / 'agent.log').read_text()[-3000:]}"
            )
        with contextlib.suppress(OSError):
            if _scrape(port).get("processed", 0) > 0:
                return time.monotonic() - started
        time.sleep(SAMPLE_S)
    raise RuntimeError(f"agent not processing after {timeout:.0f} s")


def run_agent(tree: Path, spec: dict[str, Any], workdir: Path, label: str) -> dict[str, Any]:
    """One agent process: ready time, RSS peak and steady, fps, latency, the smaps breakdown."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=workdir))
    spec = {**spec, "port": _free_port()}
    with _agent(tree, spec, run_dir) as proc:
        ready_s = _wait_ready(proc, spec["port"], run_dir)
        time.sleep(spec["warmup"])
        first, started, samples, cpu0 = _scrape(spec["port"]), time.monotonic(), [], _cpu_s(proc.pid)
        while time.monotonic() - started < spec["seconds"]:
            samples.append(_status(proc.pid).get("VmRSS", 0.0))
            time.sleep(SAMPLE_S)
        last, elapsed, cpu = _scrape(spec["port"]), time.monotonic() - started, _cpu_s(proc.pid) - cpu0
        status, breakdown = _status(proc.pid), smaps_breakdown(proc.pid)
        if proc.poll() is not None:
            raise RuntimeError(
                f"{label} agent died during the run:\n{(run_dir / 'agent.log').read_text()[-3000:]}"
            )
    frames = last.get("processed", 0.0) - first.get("processed", 0.0)
    return {
        "ready_s": round(ready_s, 2),
        "rss_peak_mb": round(status.get("VmHWM", max(samples)), 1),
        "rss_steady_mb": round(statistics.median(samples), 1),
        "rss_window_max_mb": round(max(samples), 1),
        "fps": round(frames / elapsed, 2),
        # CPU per frame barely moves with other load on the box, unlike fps and latency.
        "cpu_ms_per_frame": round(1000.0 * cpu / frames, 1) if frames else None,
        "dropped": int(last.get("dropped", 0.0) - first.get("dropped", 0.0)),
        "inference_ms_p50": last.get("inference_ms_q0.5"),
        "inference_ms_p95": last.get("inference_ms_q0.95"),
        "smaps_mb": breakdown,
        "exit_code": proc.returncode,
    }


def traced_agent(tree: Path, spec: dict[str, Any], workdir: Path, label: str) -> dict[str, Any]:
    """The same agent under tracemalloc (slower, not timed): what Python allocated, by package."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"{label}-traced-", dir=workdir))
    spec = {**spec, "port": _free_port()}
    out = run_dir / "tracemalloc.json"
    with _agent(tree, spec, run_dir, traced=out) as proc:
        _wait_ready(proc, spec["port"], run_dir)
        time.sleep(spec["warmup"])
        proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 300  # a snapshot of every block takes a while on a busy box
        while not out.is_file() and time.monotonic() < deadline:
            time.sleep(SAMPLE_S)
        data = json.loads(out.read_text())
    by_package = sorted(data["by_package"].items(), key=lambda kv: -kv[1])
    return {
        "python_traced_mb": round(data["traced"] / 2**20, 1),
        "python_top_mb": {k: round(v / 2**20, 1) for k, v in by_package[:8]},
    }


# -- the detector alone, as each tree's engine opens it ----------------------------------------


# Run by each tree's own code (PYTHONPATH = that tree): the baseline has no copy of this bench.
_ORT = """
import json, sys
from pathlib import Path
import numpy as np
from roadside.edge.inference.batching import BatchPolicy
from roadside.edge.inference.engine import OnnxDetector
from roadside.edge.settings import ModelConfig

def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return float(line.split()[1]) / 1024.0

spec = json.loads(sys.argv[1])
config = ModelConfig(path=Path(spec["model"]), trt_cache_path=None)
before = rss()
detector = OnnxDetector.from_config(config, spec["streams"])
loaded = rss()
batch = BatchPolicy.for_streams(spec["streams"], None, config.max_wait_ms, detector.info.active_provider).max_batch
images = [np.zeros((480, 640, 3), np.uint8) for _ in range(batch)]
for _ in range(5):
    detector.detect(images)
print(json.dumps({"session_load_mb": round(loaded - before, 1), "session_after_runs_mb": round(rss() - before, 1), "batch": batch}))
"""


def _ort_phase(tree: Path, spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """RSS the detector's session adds, opened by ``tree``'s engine and run at the agent's batch."""
    done = subprocess.run(
        [sys.executable, "-c", _ORT, json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=workdir,
        env={**os.environ, "PYTHONPATH": str(tree)},
    )
    if done.returncode != 0:
        raise RuntimeError(f"ort phase failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _which_tree(tree: Path) -> str:
    """Where the child's ``roadside.edge`` comes from: proves the baseline runs the baseline."""
    done = subprocess.run(
        [sys.executable, "-c", "import roadside.edge.agent as a; print(a.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tempfile.gettempdir(),
        env={**os.environ, "PYTHONPATH": str(tree)},
    )
    return done.stdout.strip()


# -- orchestration ----------------------------------------------------------------------------


@contextlib.contextmanager
def _worktree(rev: str) -> Iterator[tuple[Path, str]]:
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", rev], capture_output=True, text=True, check=True
    ).stdout.strip()
    path = Path(tempfile.mkdtemp(prefix=f"agent-memory-{commit[:8]}-"))
    path.rmdir()
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), commit],
        capture_output=True,
        check=True,
    )
    try:
        yield path, commit
    finally:
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)],
            capture_output=True,
            check=False,
        )


def run(args: argparse.Namespace) -> dict[str, Any]:
    model = model_path(None if args.model == "shipped" else args.model)
    workdir = Path(tempfile.mkdtemp(prefix="bench-agent-memory-"))
    spec: dict[str, Any] = {
        "model": str(model),
        "streams": args.streams,
        "fps": args.fps,
        "seconds": args.seconds,
        "warmup": args.warmup,
    }
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    try:
        with (
            _worktree(args.baseline) as (before_tree, commit),
            _worktree(args.after) if args.after else contextlib.nullcontext((REPO, "working tree")) as (
                after_tree,
                after_commit,
            ),
            BrokerLoop(workdir) as loop,
        ):
            if loop.broker is None:
                raise SystemExit(
                    "bench.agent_memory needs Mosquitto: the agent's uplink is part of what it holds"
                )
            spec["bundle"] = loop.bundles["bench-agent"]
            trees = {"before": before_tree, "after": after_tree}
            where = {label: _which_tree(tree) for label, tree in trees.items()}
            for r in range(args.rounds):
                order = ("before", "after") if r % 2 == 0 else ("after", "before")
                for label in order:
                    result = run_agent(trees[label], spec, workdir, label)
                    log.info("round %d %s: %s", r + 1, label, result)
                    runs[label].append(result)
            traced = {label: traced_agent(tree, spec, workdir, label) for label, tree in trees.items()}
            ort = {label: _ort_phase(tree, spec, workdir) for label, tree in trees.items()}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return summarise(args, model, {"before": commit, "after": after_commit}, where, runs, traced, ort)


def summarise(
    args: argparse.Namespace,
    model: Path,
    commits: dict[str, str],
    where: dict[str, str],
    runs: dict[str, list[dict[str, Any]]],
    traced: dict[str, dict[str, Any]],
    ort: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """The JSON line: medians over rounds for each tree, the breakdown of the median-steady round."""

    def median(label: str, key: str) -> float | None:
        values = [r[key] for r in runs[label] if r[key] is not None]
        return round(statistics.median(values), 2) if values else None

    def typical(label: str) -> dict[str, Any]:
        ordered = sorted(runs[label], key=lambda r: float(r["rss_steady_mb"]))
        return ordered[len(ordered) // 2]

    return {
        "model": model.name,
        "streams": args.streams,
        "fps_per_stream": args.fps,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "commits": commits,
        "trees": where,
        "rss_mb_before": {
            "peak": median("before", "rss_peak_mb"),
            "steady": median("before", "rss_steady_mb"),
        },
        "rss_mb_after": {"peak": median("after", "rss_peak_mb"), "steady": median("after", "rss_steady_mb")},
        "fps_before": median("before", "fps"),
        "fps_after": median("after", "fps"),
        "inference_ms_p50_before": median("before", "inference_ms_p50"),
        "inference_ms_p50_after": median("after", "inference_ms_p50"),
        "inference_ms_p95_before": median("before", "inference_ms_p95"),
        "inference_ms_p95_after": median("after", "inference_ms_p95"),
        "cpu_ms_per_frame_before": median("before", "cpu_ms_per_frame"),
        "cpu_ms_per_frame_after": median("after", "cpu_ms_per_frame"),
        "ready_s_before": median("before", "ready_s"),
        "ready_s_after": median("after", "ready_s"),
        "breakdown_before": {
            "smaps_mb": typical("before")["smaps_mb"],
            **traced["before"],
            "ort": ort["before"],
        },
        "breakdown_after": {"smaps_mb": typical("after")["smaps_mb"], **traced["after"], "ort": ort["after"]},
        "runs": {label: runs[label] for label in ("before", "after")},
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", default="shipped", help="shipped, yolo-class, or an ONNX path")
    parser.add_argument("--streams", type=int, default=2)
    parser.add_argument("--fps", type=float, default=10.0, help="frames per second per synthetic camera")
    parser.add_argument("--seconds", type=float, default=30.0, help="the measured window")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds of running before the window")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--baseline", default="HEAD", help="git revision to compare against")
    parser.add_argument("--after", help="git revision to measure (default: this working tree)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
