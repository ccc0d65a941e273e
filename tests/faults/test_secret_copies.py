"""Item 5 of the second fault run: secrets written in YAML flow style, at any depth, are blanked
in every copy of the spec faceops makes (the code bundle's, the version's extracted code folder),
and an error about a refused secret never echoes its value."""
from __future__ import annotations

import json
import tarfile

from jobs.core.contract import Contract
from jobs.store import Store, workdir
from tests.faults.helpers import cli

TOKEN, PASSWORD, LISTED = "tok-4f9a1c77e2", "pw-91be33d0aa", "key-55aa90ffe1"


def test_flow_style_secrets_are_blanked_in_every_copy(tmp_path):
    folder = tmp_path / "proj"
    folder.mkdir()
    (folder / "main.py").write_text("print('ok')\n")
    spec = folder / "job.yaml"
    spec.write_text("name: fault-job\ntask: custom\nentrypoint: [python, main.py]\n"
                    f"hyperparameters: {{api_token: {TOKEN}, nested: {{password: \"{PASSWORD}\"}}}}\n")
    (folder / "settings.yml").write_text(f"clients:\n  - {{name: a, api_key: {LISTED}}}\n")
    result = cli("job", "submit", str(spec), "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    copies = []
    with tarfile.open(tmp_path / "faceops-home" / "bundles" / f"{record['code']['hash']}.tar.gz") as tar:
        for name in ("job.yaml", "settings.yml"):
            copies.append(tar.extractfile(name).read().decode())
    code = Contract(workdir(Store().get("fault-job", 1))).code_dir
    copies += [(code / "job.yaml").read_text(), (code / "settings.yml").read_text()]
    for text in copies:
        for secret in (TOKEN, PASSWORD, LISTED):
            assert secret not in text, text
    assert "api_token" in copies[0] and "***" in copies[0] and "main.py" in copies[0]


def test_a_refused_secret_is_not_echoed(tmp_path):
    spec = tmp_path / "recog.yaml"
    spec.write_text("name: recog\ntask: recognition\ninputs:\n  train: s3://b/train/\n")
    result = cli("job", "submit", str(spec), "--dry-run", "--set", f"api_token={TOKEN}")
    assert result.returncode == 2 and "api_token=***" in result.stderr, result.stderr
    assert TOKEN not in result.stderr + result.stdout
