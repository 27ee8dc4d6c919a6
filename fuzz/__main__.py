"""``python -m fuzz TARGET --runs N``: fuzz one parser (or ``all``) and print a JSON line each.

Seeds come from :mod:`fuzz.targets` and ``fuzz/regressions/TARGET/``; a crash
is written to ``--artifacts`` (and the exit status is 1). ``--max-time`` bounds
each target in seconds whatever ``--runs`` says.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fuzz.targets import SCRATCH_ENV, TARGETS, scratch_root

REGRESSIONS = Path(__file__).parent / "regressions"
_STAT = re.compile(r"stat::(\w+):\s+(\d+)")


def seed_corpus(name: str, corpus: Path) -> None:
    corpus.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(TARGETS[name].seeds()):
        (corpus / f"seed-{i}").write_bytes(seed)
    for kept in sorted((REGRESSIONS / name).glob("*")):
        (corpus / f"regression-{kept.name}").write_bytes(kept.read_bytes())


def fuzz_one(name: str, runs: int, max_time_s: int, artifacts: Path) -> dict[str, object]:
    artifacts.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix=f"fuzz-{name}-") as scratch,
        tempfile.TemporaryDirectory(prefix=f"fuzz-{name}-", dir=scratch_root()) as files,
    ):
        corpus = Path(scratch) / "corpus"
        seed_corpus(name, corpus)
        args = [
            f"-runs={runs}",
            "-print_final_stats=1",
            f"-artifact_prefix={artifacts}/{name}-",
            "-rss_limit_mb=2048",
        ]
        if max_time_s:
            args.append(f"-max_total_time={max_time_s}")
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "fuzz.worker", name, *args, str(corpus)],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, SCRATCH_ENV: files},  # the targets' files, reused per input, in RAM
        )
    stats = {k: int(v) for k, v in _STAT.findall(result.stderr)}
    crashes = sorted(str(p) for p in artifacts.glob(f"{name}-*"))
    summary: dict[str, object] = {
        "target": name,
        "runs_asked": runs,
        "executions": stats.get("number_of_executed_units", 0),
        "seconds": round(time.monotonic() - started, 1),
        "exit": result.returncode,
        "crashes": crashes,
    }
    if result.returncode != 0:
        summary["tail"] = result.stderr[-2000:]
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__)
    parser.add_argument("target", choices=[*TARGETS, "all"])
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--max-time", type=int, default=0, help="seconds per target; 0: no limit")
    parser.add_argument("--artifacts", type=Path, default=Path("fuzz-artifacts"))
    args = parser.parse_args(argv)
    names = list(TARGETS) if args.target == "all" else [args.target]
    failed = False
    for name in names:
        summary = fuzz_one(name, args.runs, args.max_time, args.artifacts)
        failed |= summary["exit"] != 0
        print(json.dumps(summary), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
