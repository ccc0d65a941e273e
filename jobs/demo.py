"""`faceops demo`: the whole local workflow on embedded defaults, offline, one step per command a
user would type. Each step prints the equivalent command so the demo doubles as a tutorial."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from jobs.bundle import faceops_root


def examples() -> Path:
    """The examples folder of the source checkout the demo runs from."""
    path = faceops_root() / "examples"
    if not path.is_dir():
        from jobs.errors import NotFoundError

        raise NotFoundError(f"examples not found at {path}; run the demo from a faceops source checkout")
    return path


def run(echo: Callable[[str], None]) -> None:
    """Run every demo step in order; a step that fails raises and stops the demo."""
    from jobs import report, submit
    from jobs.errors import JobFailed
    from jobs.spec import load_spec

    def step(title: str, command: str) -> None:
        echo(f"\n== {title}\n$ {command}")

    def finish(record: dict) -> dict:
        record = submit.wait(record)
        echo(f"{record['name']}:{record['version']} {record['status']}  [{report.metrics_summary(record)}]")
        if record["status"] != "done":
            raise JobFailed(f"demo job {record['name']}:{record['version']} {record['status']}: {record['failure_reason']}")
        return record

    spec_file = examples() / "line-fit" / "job.yaml"
    step("Train version 1 of a job", f"faceops job submit {spec_file.relative_to(faceops_root())}")
    first = finish(submit.submit(load_spec(spec_file)))
    step("Rerun it with one parameter changed", f"faceops job rerun line-fit:{first['version']} --set lr=0.1")
    second = finish(submit.rerun(f"line-fit:{first['version']}", ["lr=0.1"]))
    step("What changed between the versions", f"faceops job diff line-fit:{first['version']} line-fit:{second['version']}")
    echo(report.diff_text(first, second))
    step("All versions of the job", "faceops job versions line-fit")
    from jobs.store import Store

    echo(report.versions_table(Store().versions("line-fit")))
