"""Item 2 of the fault run: secret hyperparameters must not show anywhere a person or a log
can read them - dry runs on every backend, show/list/versions/diff, the code bundle, temp files."""
from __future__ import annotations

import tarfile

from jobs.core.secrets import is_secret
from jobs.store import TERMINAL, Store
from tests.faults.helpers import cli, custom_job
from tests.harness.process import wait_for

SECRETS = {"api_token": "tok-SEKRET-0001", "api_key": "key-SEKRET-0002", "db_password": "pw-SEKRET-0003"}
CHECK_ENV = """\
import os
from jobs.core.contract import from_env
hp = from_env().hyperparameters
print("env reference resolved" if hp["remote_token"] == os.environ["FAULT_REMOTE_TOKEN"] else "not resolved")
"""


def _leaks(text: str) -> list[str]:
    return [value for value in (*SECRETS.values(), "remote-SEKRET-0004") if value in text]


def test_secret_names_follow_one_policy():
    assert all(is_secret(k) for k in ("api_token", "api_key", "db_password", "AWS_SECRET", "privateKey", "credentials"))
    assert not any(is_secret(k) for k in ("lr", "keypoints", "use_keypoints", "max_tokens", "network", "epochs"))


def test_secrets_are_masked_in_every_view_and_kept_out_of_bundles(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    spec = custom_job(tmp_path / "proj", script=CHECK_ENV,
                      hyperparameters={**SECRETS, "lr": 0.1, "remote_token": "${env:FAULT_REMOTE_TOKEN}"})
    env = {"TMPDIR": str(tmp), "FAULT_REMOTE_TOKEN": "remote-SEKRET-0004"}
    outputs = [cli("job", "submit", str(spec), "--dry-run", "--json", env=env),
               cli("job", "submit", str(spec), "--dry-run", env=env)]
    assert not list(tmp.iterdir()), "dry runs leave nothing in the temp folder"
    outputs.append(cli("job", "submit", str(spec), "--json", env=env))
    assert outputs[-1].returncode == 0, outputs[-1].stderr
    outputs.append(cli("job", "submit", str(spec), "--set", "lr=0.2", "--json", env=env))
    for args in (("show", "fault-job:1"), ("show", "fault-job:1", "--json"), ("list", "--json"), ("list",),
                 ("versions", "fault-job", "--json"), ("versions", "fault-job"), ("diff", "fault-job:1", "fault-job:2", "--all"),
                 ("diff", "fault-job:1", "fault-job:2", "--all", "--json"), ("logs", "fault-job:1")):
        outputs.append(cli("job", *args, env=env))
    for result in outputs:
        assert result.returncode == 0, (result.args, result.stderr)
        assert not _leaks(result.stdout + result.stderr), (result.args, _leaks(result.stdout + result.stderr))
    assert "***" in outputs[4].stdout and "${env:FAULT_REMOTE_TOKEN}" in outputs[4].stdout
    assert "env reference resolved" in cli("job", "logs", "fault-job:1").stdout
    record = Store().get("fault-job", 1)
    assert record["spec"]["hyperparameters"]["remote_token"] == "${env:FAULT_REMOTE_TOKEN}"
    with tarfile.open(tmp_path / "faceops-home" / "bundles" / f"{record['code']['hash']}.tar.gz") as tar:
        bundled = tar.extractfile("job.yaml").read().decode()
    assert not _leaks(bundled) and "api_token: \"***\"" in bundled and "${env:FAULT_REMOTE_TOKEN}" in bundled
    wait_for(lambda: all(r["status"] in TERMINAL for r in Store().versions("fault-job")))


def test_cloud_backends_refuse_literal_secrets_and_take_references(tmp_path, s3_bucket):
    """A cloud service shows every hyperparameter to whoever may describe the job, so a literal
    secret is refused (naming the keys, never the values) and an ``${env:NAME}`` reference passes."""
    def dry_runs(spec):
        sagemaker = cli("job", "submit", str(spec), "--backend", "sagemaker", "--dry-run", "--json",
                        "--set", "image=123456789012.dkr.ecr.us-east-1.amazonaws.com/faceops/train:gpu",
                        env={"FACEOPS_SAGEMAKER_ROLE_ARN": "arn:aws:iam::123456789012:role/r", "AWS_DEFAULT_REGION": "us-east-1"})
        modelarts = cli("job", "submit", str(spec), "--backend", "modelarts", "--dry-run", "--json",
                        "--set", "image=swr.cn-north-4.myhuaweicloud.com/faceops/train:gpu",
                        env={"HUAWEICLOUD_SDK_AK": "AKFAULTS", "HUAWEICLOUD_SDK_SK": "sk-SEKRET-0005",
                             "HUAWEICLOUD_SDK_PROJECT_ID": "p" * 32, "HUAWEICLOUD_SDK_REGION": "cn-north-4"})
        return sagemaker, modelarts

    # A real bucket: dry runs check that every output is writable before they print the request.
    extra = f"outputs:\n  model: s3://{s3_bucket}/models/\nresources: {{instance_type: ml.p3.2xlarge}}\n"
    for result in dry_runs(custom_job(tmp_path / "literal", hyperparameters=SECRETS, extra=extra)):
        text = result.stdout + result.stderr
        assert result.returncode == 2, text
        assert "hyperparameters.api_key, hyperparameters.api_token, hyperparameters.db_password" in text
        assert "${env:" in text and not _leaks(text)
    references = {key: f"${{env:{key.upper()}}}" for key in SECRETS}
    for result in dry_runs(custom_job(tmp_path / "refs", hyperparameters=references, extra=extra)):
        text = result.stdout + result.stderr
        assert result.returncode == 0, text
        assert "${env:API_TOKEN}" in text and "sk-SEKRET-0005" not in text