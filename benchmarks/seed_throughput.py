"""Throughput of the seed command: router vs straight to Orthanc, measured in one run.

    .venv/bin/python benchmarks/seed_throughput.py [--instances 200] [--rounds 3]

Each round starts fresh Orthancs (storage 1, storage 2, probe) on free loopback ports and a
fresh router process, then times DCMTK's storescu sending the same generated CT series
(512×512, 16-bit, about 0.5 MB per instance) over one association:

* direct      storescu → Orthanc 1 (the "no router" limit)
* router ack  storescu → router, until storescu exits (what the sender waits)
* router e2e  until every instance is in its storage and in the probe

Prints a table (medians, min–max, ratios against direct) and the same as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.datagen import write_series  # noqa: E402
from tests.support.orthanc import RunningOrthanc, free_port, start_orthanc  # noqa: E402
from tests.support.router import RouterProcess, router_settings, write_router_home  # noqa: E402

STORESCU = "/usr/bin/storescu"


def storescu(files: list[Path], port: int, called: str) -> float:
    started = time.perf_counter()
    subprocess.run([STORESCU, "-aet", "TEST_SCU", "-aec", called, "127.0.0.1", str(port),
                    *map(str, files)], check=True, env={**os.environ, "TCP_NODELAY": "1"},
                   capture_output=True)
    return time.perf_counter() - started


def wait_counts(targets: list[tuple[RunningOrthanc, int]], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(o.count() >= n for o, n in targets):
            return
        time.sleep(0.02)
    raise RuntimeError("instances did not arrive in time")


def one_round(work: Path, files: list[Path]) -> dict[str, float]:
    n = len(files)
    result: dict[str, float] = {}
    direct = start_orthanc(work / "direct", "ORTHANC1")
    try:
        result["direct"] = storescu(files, direct.dicom_port, "ORTHANC1")
        wait_counts([(direct, n)])
    finally:
        direct.kill()

    storage1 = start_orthanc(work / "o1", "ORTHANC1")
    storage2 = start_orthanc(work / "o2", "ORTHANC2")
    probe = start_orthanc(work / "probe", "ORTHANC-PROBE")
    port = free_port()
    home = work / "router-home"
    write_router_home(home, router_settings([storage1, storage2], probe, port=port))
    router = RouterProcess(home, port, work / "router.log")
    router.start()
    try:
        started = time.perf_counter()
        result["router_ack"] = storescu(files, port, "DYNAMIC_DICOM_MW")
        wait_counts([(probe, n)])
        deadline = time.monotonic() + 600
        while storage1.count() + storage2.count() < n and time.monotonic() < deadline:
            time.sleep(0.02)
        result["router_e2e"] = time.perf_counter() - started
    finally:
        router.terminate()
        for orthanc in (storage1, storage2, probe):
            orthanc.kill()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=512, help="rows = columns")
    parser.add_argument("--json", type=Path, help="also write the JSON here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="dde-bench-") as tmp:
        work = Path(tmp)
        files = write_series(work / "data", args.instances, rows=args.size, columns=args.size)
        megabytes = sum(f.stat().st_size for f in files) / 1e6
        rounds = []
        for index in range(args.rounds):
            rounds.append(one_round(work / f"round{index}", files))
            print(f"round {index + 1}: " + ", ".join(f"{k} {v:.2f} s"
                                                     for k, v in rounds[-1].items()),
                  file=sys.stderr)

    summary: dict[str, dict[str, float]] = {}
    for key in ("direct", "router_ack", "router_e2e"):
        times = [r[key] for r in rounds]
        median = statistics.median(times)
        summary[key] = {"median_s": median, "min_s": min(times), "max_s": max(times),
                        "mb_per_s": megabytes / median,
                        "instances_per_s": args.instances / median}
    direct = summary["direct"]["median_s"]
    for key in summary:
        summary[key]["speed_vs_direct"] = direct / summary[key]["median_s"]

    print(f"\n{args.instances} instances, {megabytes:.1f} MB, {args.rounds} rounds, "
          f"{os.cpu_count()} cores, {platform.python_version()}")
    print(f"{'path':<12} {'median s':>9} {'min–max s':>13} {'MB/s':>7} {'inst/s':>7} "
          f"{'× direct':>9}")
    for key, row in summary.items():
        print(f"{key:<12} {row['median_s']:>9.2f} {row['min_s']:>6.2f}–{row['max_s']:<6.2f} "
              f"{row['mb_per_s']:>7.1f} {row['instances_per_s']:>7.1f} "
              f"{row['speed_vs_direct']:>9.2f}")
    document = {"instances": args.instances, "megabytes": megabytes, "rounds": rounds,
                "summary": summary}
    print(json.dumps(document, indent=2))
    if args.json:
        args.json.write_text(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
