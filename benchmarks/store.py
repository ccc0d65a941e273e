"""How fast `job list`, `job versions NAME` and `job diff` answer with 100,000 versions in a team
PostgreSQL store, against the same commands on the default SQLite store.

Both stores get the same 100,000 finished versions (1,000 jobs x 100 versions, records of about
1 kB as submits write them), bulk-loaded off the clock. Each command then runs through the CLI
in-process (click's runner, as a user types it), rounds interleaved so machine load hits both
alike: `job list` (the newest 50), `job versions` of one job (100 versions, parameters changed
and metrics per version), `job diff` of two versions. A PostgreSQL round opens a new connection,
and checks the schema, as every CLI process does; the one-off import of SQLAlchemy and psycopg (per process) is measured
apart and reported, not in the p95.

Goal: each command under 100 ms at the 95th percentile on PostgreSQL, and PostgreSQL within 2x
of SQLite. Ratio = SQLite p95 / PostgreSQL p95 of the slowest command (higher is better); goal
0.5 (within 2x), the 100 ms bound is reported as goal_met alongside.
Run: .venv/bin/python benchmarks/store.py [--rounds 40] [--jobs 1000] [--per-job 100]
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

COMMANDS = {"list": ["job", "list"], "versions": ["job", "versions", "job-0010"],
            "diff": ["job", "diff", "job-0010:10", "job-0010:90"]}
P95_GOAL_MS = 100.0


def records(jobs: int, per_job: int):
    """Finished version records as a submit and its supervisor write them."""
    base = 1.7e9
    for j in range(jobs):
        name = f"job-{j:04d}"
        for v in range(1, per_job + 1):
            created = base + (j * per_job + v) * 60.0
            spec = {"name": name, "task": "custom", "backend": "local", "runtime": "process",
                    "entrypoint": ["python", "train.py"], "code": "proj", "image": None, "inputs": {},
                    "outputs": {}, "hyperparameters": {"lr": round(0.001 * v, 4), "batch_size": 64, "epochs": 10},
                    "resources": {"instance_count": 1, "retries": 0, "max_runtime": None, "spot": False}}
            yield {"name": name, "version": v, "parent": v - 1 or None, "task": "custom", "backend": "local",
                   "spec": spec, "image": {"ref": None, "digest": None},
                   "code": {"hash": f"{v:064x}", "size": 2048, "files": 3, "source": "/proj"},
                   "inputs": {}, "outputs": {}, "status": "done",
                   "status_history": [{"status": s, "at": created + i} for i, s in
                                      enumerate(("queued", "staging", "running", "uploading", "done"))],
                   "timings": {"queued": 1.0, "staging": 1.0, "running": 1.0, "uploading": 1.0},
                   "metrics": {"loss": round(1.0 / v, 4), "acc": round(1 - 1.0 / v, 4), "step": 1000},
                   "failure_reason": None, "backend_info": {"supervisor_pid": 1}, "created": created,
                   "user": f"user{j % 7}", "host": f"host{j % 3}", "faceops_version": "0.1.0",
                   "home_id": "0" * 16}


def load(store, rows) -> None:
    """Bulk-insert ``rows`` into ``store`` in large transactions."""
    batch = []
    for record in rows:
        batch.append(record)
        if len(batch) == 5000:
            _insert(store, batch)
            batch = []
    if batch:
        _insert(store, batch)


def _insert(store, batch) -> None:
    with store._transaction() as db:
        store._insert(db, *batch)


def p95(values: list[float]) -> float:
    return sorted(values)[max(0, int(round(0.95 * len(values))) - 1)]


def main() -> None:
    args = common.parse_args(__doc__, {"--rounds": {"type": int, "default": 40},
                                       "--jobs": {"type": int, "default": 1000},
                                       "--per-job": {"type": int, "default": 100}})
    from click.testing import CliRunner

    import cli
    from jobs import store as store_module
    from tests.harness.postgres import running_postgres

    work = Path(tempfile.mkdtemp(prefix="faceops-bench-store-"))
    os.environ["FACEOPS_HOME"] = str(work / "home")
    total = args.jobs * args.per_job
    with running_postgres() as server:
        url = server.database()
        os.environ.pop("FACEOPS_STORE_URL", None)
        sqlite, started = store_module.Store(), time.perf_counter()
        sqlite.upgrade()  # reads create nothing; a store is made by its first submit or an upgrade
        load(sqlite, records(args.jobs, args.per_job))
        print(f"loaded {total} versions into SQLite in {time.perf_counter() - started:.1f} s", flush=True)
        postgres, started = store_module.PostgresStore(url), time.perf_counter()
        postgres.upgrade()
        load(postgres, records(args.jobs, args.per_job))
        with postgres._connect() as db:
            postgres._rows(db, "ANALYZE versions")
        print(f"loaded {total} versions into PostgreSQL in {time.perf_counter() - started:.1f} s", flush=True)
        runner = CliRunner()
        times: dict[tuple[str, str], list[float]] = {(kind, c): [] for kind in ("sqlite", "postgres") for c in COMMANDS}
        for _ in range(args.rounds):
            for kind in ("sqlite", "postgres"):
                for command, argv in COMMANDS.items():
                    if kind == "postgres":
                        os.environ["FACEOPS_STORE_URL"] = url
                        store_module._ENGINES.clear()  # a new connection and schema check, as each CLI process makes
                        store_module._READY.clear()
                    else:
                        os.environ.pop("FACEOPS_STORE_URL", None)
                    started = time.perf_counter()
                    result = runner.invoke(cli.main, argv, catch_exceptions=False)
                    times[(kind, command)].append((time.perf_counter() - started) * 1000)
                    if result.exit_code != 0:
                        raise SystemExit(f"{kind} {' '.join(argv)} failed: {result.output}")
    imports = _import_ms()
    figures: dict[str, float] = {}
    for (kind, command), values in times.items():
        figures[f"{kind}_{command}_p95_ms"] = round(p95(values), 1)
        print(f"{kind:<9} job {command:<9}: p95 {p95(values):7.1f} ms, median {statistics.median(values):7.1f} ms "
              f"({len(values)} runs)")
    print(f"once per PostgreSQL CLI process: importing SQLAlchemy + psycopg {imports:.0f} ms")
    worst = max(COMMANDS, key=lambda c: figures[f"postgres_{c}_p95_ms"] / figures[f"sqlite_{c}_p95_ms"])
    ratio = round(figures[f"sqlite_{worst}_p95_ms"] / figures[f"postgres_{worst}_p95_ms"], 3)
    under = all(figures[f"{kind}_{c}_p95_ms"] < P95_GOAL_MS for kind in ("sqlite", "postgres") for c in COMMANDS)
    met = ratio >= 0.5 and under
    print(f"goal: every p95 under {P95_GOAL_MS:.0f} ms and PostgreSQL within 2x of SQLite: "
          f"{'met' if met else 'NOT met'} (slowest relative: job {worst}, {1 / ratio:.2f}x SQLite)")
    common.report("store", ratio, 0.5, goal_met=met, versions=total, rounds=args.rounds, worst=worst,
                  import_ms=round(imports), load_average=round(os.getloadavg()[0], 2), **figures)


def _import_ms() -> float:
    """What a fresh process spends importing SQLAlchemy and psycopg (median of 3)."""
    code = "import time; t = time.perf_counter(); import sqlalchemy, psycopg; print((time.perf_counter() - t) * 1000)"
    return statistics.median(float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                                  check=True, timeout=120).stdout) for _ in range(3))


if __name__ == "__main__":
    main()
