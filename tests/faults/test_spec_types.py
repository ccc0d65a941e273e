"""Item 12 of the second fault run: what a spec and ``--set`` may say is checked at submit, with
the schema's types and ranges: duplicate keys (naming both lines), integers no runtime holds, a
task changed with ``--set``, a whole section set to a value."""
from __future__ import annotations

import pytest

from jobs.store import Store
from tests.faults.helpers import cli, custom_job


def _refused(result, *words: str) -> None:
    assert result.returncode == 2 and "Traceback" not in result.stderr, (result.stdout, result.stderr)
    for word in words:
        assert word in result.stderr, result.stderr


def test_duplicate_keys_are_refused_naming_both_lines(tmp_path):
    spec = custom_job(tmp_path / "proj", hyperparameters={"lr": 0.1, "epochs": 2})
    spec.write_text(spec.read_text() + "  lr: 0.5\n")
    lines = spec.read_text().splitlines()
    first, second = [n + 1 for n, line in enumerate(lines) if line.strip().startswith("lr:")]
    for extra in ((), ("--dry-run",)):
        _refused(cli("job", "submit", str(spec), *extra), f"{spec}:{second}", "duplicate key 'lr'", f"line {first}")
    assert not Store().list()


@pytest.mark.parametrize("override, words", [
    ("resources.instance_count=99999999999999999999", ("resources.instance_count", "at most")),
    ("resources.retries=99999999999999999999", ("resources.retries", "64-bit")),
    ("task=detection", ("task", "cannot be changed")),
    ("hyperparameters=5", ("hyperparameters is a section",)),
])
def test_set_values_are_checked_at_submit(tmp_path, override, words):
    spec = custom_job(tmp_path / "proj")
    _refused(cli("job", "submit", str(spec), "--dry-run", "--set", override), *words)
    _refused(cli("job", "submit", str(spec), "--set", override), *words)
    assert not Store().list()
