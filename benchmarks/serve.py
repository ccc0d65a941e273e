"""Throughput and latency of `faceops serve` under 16 concurrent clients against the competent
baseline server (benchmarks/serve_baseline.py: FaceAnalysis.get per request, same models, same
gallery, uvicorn with one worker process per core), interleaved rounds.

Photos: the identify benchmark's set (benchmarks/identify.py: the packages' real sample photos,
20 LFW photos and composed canvases of 2-12 MP, none upscaled), posted as the JPEG body. Each
client posts photo after photo (each client starting at its own place in the list) for
``--seconds``; both servers run as real processes on loopback, loaded and warmed up before the
clock, and take turns, ``--rounds`` times. Throughput = answered requests per second; latency
percentiles over every request of a side. Ratio = our throughput / the baseline's (median of the
rounds). Goal: >= 1.5x at no worse p99. Also measured: each server's CPU seconds per answered
request (its processes' user + system time, from /proc), which a loaded, shared machine does not
skew: there the scheduler gives the baseline's many busy threads a larger share of the cores than
our one loop per core.
Run: .venv/bin/python benchmarks/serve.py [--rounds N] [--seconds S] [--clients C]
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from common import ROOT, parse_args, report
from identify import model_folder, photo_set
from tests.harness import LFW10
from tests.harness.net import free_port
from tests.harness.process import running
from tests.harness.serve import running_serve

HERE = Path(__file__).resolve().parent
REQUEST_SECONDS = 300  # bound on one request on a loaded machine


def load(url: str, photos: list[bytes], clients: int, seconds: float) -> tuple[list[float], int, int]:
    """``clients`` threads posting ``photos`` to ``url`` for ``seconds``: (latencies of the
    requests answered 200, faces in their answers, failed requests)."""
    import requests

    latencies: list[float] = []
    counts = {"faces": 0, "failed": 0}
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(k: int) -> None:
        session, i = requests.Session(), k * len(photos) // clients
        while time.monotonic() < stop:
            start = time.perf_counter()
            answer = session.post(url, data=photos[i % len(photos)], headers={"Content-Type": "image/jpeg"},
                                  timeout=REQUEST_SECONDS)
            took = time.perf_counter() - start
            with lock:
                if answer.status_code == 200:
                    latencies.append(took)
                    counts["faces"] += len(answer.json()["faces"])
                else:
                    counts["failed"] += 1
            i += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, counts["faces"], counts["failed"]


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by process ``pid`` and its children (uvicorn's
    workers), from /proc: what a server costs whatever share of a loaded machine it got."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # a process that ended meanwhile
            continue
        if stat.parent.name == str(pid) or fields[1] == str(pid):
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> None:
    args = parse_args(__doc__, {
        "--rounds": {"type": int, "default": 3},
        "--seconds": {"type": float, "default": 30.0},
        "--clients": {"type": int, "default": 16},
    })
    from inference.gallery import build_gallery
    from inference.models import resolve

    cores = os.cpu_count() or 1
    det, rec = resolve()
    with tempfile.TemporaryDirectory(prefix="faceops-bench-serve-") as tmp:
        work = Path(tmp)
        paths = photo_set(work / "photos")
        photos = [p.read_bytes() for p in paths]
        gallery_src = work / "gallery-photos"
        for person in sorted(p for p in LFW10.iterdir() if p.is_dir()):
            (gallery_src / person.name).mkdir(parents=True)
            for photo in sorted(person.glob("*.jpg"))[:5]:
                (gallery_src / person.name / photo.name).symlink_to(photo)
        build_gallery(gallery_src, work / "db")
        port = free_port()
        baseline_url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "BASELINE_MODELS": str(model_folder(det, rec, work)), "BASELINE_GALLERY": str(work / "db"),
               "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)])}

        def baseline_ready() -> bool:
            with urllib.request.urlopen(f"{baseline_url}/healthz", timeout=5) as response:
                return response.status == 200

        command = [sys.executable, "-m", "uvicorn", "serve_baseline:app", "--port", str(port), "--workers", str(cores),
                   "--log-level", "warning", "--no-access-log"]
        with running(command, work / "baseline.log", baseline_ready, timeout=300, grace=15, env=env, cwd=HERE) as base, \
                running_serve(work / "db", work / "serve.log", timeout=300) as ours:
            urls = {"baseline": f"{baseline_url}/identify", "ours": f"{ours.url}/identify"}
            pids = {"baseline": base.pid, "ours": ours.pid}
            for url in urls.values():  # warm-up: every photo once through each server
                for photo in photos:
                    urllib.request.urlopen(urllib.request.Request(url, data=photo, headers={"Content-Type": "image/jpeg"}),
                                           timeout=REQUEST_SECONDS).read()
            rounds: dict[str, list[tuple[list[float], int, int]]] = {"baseline": [], "ours": []}
            cpu: dict[str, list[float]] = {"baseline": [], "ours": []}  # CPU seconds per answered request
            for r in range(args.rounds):
                for side, url in urls.items():
                    used = cpu_seconds(pids[side])
                    rounds[side].append(load(url, photos, args.clients, args.seconds))
                    latencies, faces, failed = rounds[side][-1]
                    cpu[side].append((cpu_seconds(pids[side]) - used) / max(1, len(latencies)))
                    print(f"round {r + 1} {side:<8}: {len(latencies) / args.seconds:6.2f} req/s, {faces / args.seconds:6.1f} "
                          f"faces/s, p50 {percentile(latencies, 50):.3f} s, p99 {percentile(latencies, 99):.3f} s"
                          f", {cpu[side][-1]:.3f} CPU s/req{f', {failed} failed' if failed else ''}", flush=True)
    figures = {}
    for side, runs in rounds.items():
        every = [t for latencies, _, _ in runs for t in latencies]
        figures[side] = {"req_per_s": round(statistics.median(len(l) / args.seconds for l, _, _ in runs), 3),
                         "faces_per_s": round(statistics.median(f / args.seconds for _, f, _ in runs), 2),
                         "p50_s": round(percentile(every, 50), 4), "p99_s": round(percentile(every, 99), 4),
                         "requests": len(every), "failed": sum(f for _, _, f in runs),
                         "cpu_s_per_request": round(statistics.median(cpu[side]), 4)}
    ratios = [len(o[0]) / max(1, len(b[0])) for o, b in zip(rounds["ours"], rounds["baseline"])]
    ratio = round(statistics.median(ratios), 3)
    cpu_ratio = round(figures["baseline"]["cpu_s_per_request"] / figures["ours"]["cpu_s_per_request"], 3)
    p99_ok = figures["ours"]["p99_s"] <= figures["baseline"]["p99_s"]
    load_avg = os.getloadavg()[0]
    print(f"{len(paths)} photos, {args.clients} clients, {args.rounds} rounds x {args.seconds:.0f} s per side; "
          f"{cores} cores; load average {load_avg:.1f}")
    for side in ("baseline", "ours"):
        f = figures[side]
        print(f"{side:<8}: {f['req_per_s']} req/s, {f['faces_per_s']} faces/s, p50 {f['p50_s']} s, p99 {f['p99_s']} s, "
              f"{f['cpu_s_per_request']} CPU s/request")
    print(f"throughput ratio {ratio}x (rounds: {', '.join(f'{x:.2f}' for x in ratios)}; goal 1.5x), "
          f"p99 {'no worse' if p99_ok else 'WORSE'}: goal {'met' if ratio >= 1.5 and p99_ok else 'NOT met'}; "
          f"CPU per request: baseline / ours = {cpu_ratio}x")
    report("serve", ratio, 1.5, spread=[min(ratios), max(ratios)], p99_no_worse=p99_ok, cpu_ratio=cpu_ratio, goals_met=ratio >= 1.5 and p99_ok, clients=args.clients,
           seconds=args.seconds, rounds=args.rounds, cores=cores, load_average=round(load_avg, 1),
           baseline=figures["baseline"], ours=figures["ours"])


if __name__ == "__main__":
    main()
