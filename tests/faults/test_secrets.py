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

HASH_TOKEN = """\
import hashlib
from jobs.core.contract import from_env
job = from_env()
digest = hashlib.sha256(str(job.hyperparameters["api_token"]).encode()).hexdigest()
(job.output("model") / "token.sha256").write_text(digest)
print("job got a token", digest[:12])
"""


def _token_hash(version: int) -> str:
    from jobs.core.contract import Contract
    from jobs.store import workdir

    return (Contract(workdir(Store().get("fault-job", version))).output_dir("model") / "token.sha256").read_text()


def _sha(value: str) -> str:
    import hashlib

    return hashlib.sha256(value.encode()).hexdigest()


def test_literal_secrets_stay_out_of_the_local_record_and_reach_the_job(tmp_path):
    """A local version keeps a literal secret beside its record (secrets.json, 0600), not in it:
    the store file, the log, the views and the bundle never hold it; the job, its reruns and its
    resume get the value, and diff says when it changed."""
    import json
    import stat

    from jobs.core.contract import Contract
    from jobs.core.secrets import SECRETS_FILE
    from jobs.store import workdir

    home = tmp_path / "faceops-home"
    spec = custom_job(tmp_path / "proj", script=HASH_TOKEN, hyperparameters={**SECRETS, "lr": 0.1})
    runs = [cli("job", "submit", str(spec), "--wait"),
            cli("job", "submit", str(spec), "--set", "lr=0.2", "--dry-run", "--json"),
            cli("job", "rerun", "fault-job:1", "--set", "lr=0.2", "--wait"),
            cli("job", "rerun", "fault-job:2", "--set", "api_token=tok-SEKRET-0009", "--wait")]
    for result in runs:
        assert result.returncode == 0, (result.args, result.stderr)
    assert [_token_hash(v) for v in (1, 2, 3)] == [_sha(SECRETS["api_token"])] * 2 + [_sha("tok-SEKRET-0009")]
    assert len(Store().versions("fault-job")) == 3, "a dry run stores no version"
    for version in (1, 2, 3):
        folder = workdir(Store().get("fault-job", version))
        for path in (folder / SECRETS_FILE, Contract(folder).hyperparameters_file):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        kept = json.loads((folder / SECRETS_FILE).read_text())
        assert sorted(kept.values()) == sorted({**SECRETS, **({"api_token": "tok-SEKRET-0009"} if version == 3 else {})}.values())
        hyperparameters = Store().get("fault-job", version)["spec"]["hyperparameters"]
        assert all(hyperparameters[key].startswith("${secret:") for key in SECRETS), hyperparameters
    record = Store().get("fault-job", 1)
    texts = [(home / "store.sqlite").read_bytes().decode(errors="replace"),
             *(p.read_bytes().decode(errors="replace") for p in home.glob("store.sqlite-*")),
             (workdir(record) / "job.log").read_text()]
    with tarfile.open(home / "bundles" / f"{record['code']['hash']}.tar.gz") as tar:
        texts += [tar.extractfile(m).read().decode(errors="replace") for m in tar.getmembers() if m.isfile()]
    for args in (("show", "fault-job:3", "--json"), ("logs", "fault-job:3"), ("versions", "fault-job"),
                 ("diff", "fault-job:2", "fault-job:3"), ("diff", "fault-job:2", "fault-job:3", "--json")):
        shown = cli("job", *args)
        assert shown.returncode == 0, (args, shown.stderr)
        texts.append(shown.stdout + shown.stderr)
    texts += [result.stdout + result.stderr for result in runs]
    assert not [leak for text in texts for leak in _leaks(text) + (["tok-SEKRET-0009"] if "tok-SEKRET-0009" in text else [])]
    unchanged, changed = cli("job", "diff", "fault-job:1", "fault-job:2").stdout, cli("job", "diff", "fault-job:2", "fault-job:3").stdout
    assert "api_token" not in unchanged and "lr" in unchanged
    assert "hyperparameters.api_token" in changed and "*** (changed)" in changed
    assert "api_key" not in changed


def test_resume_and_rerun_keep_the_parents_secrets_or_say_they_are_missing(tmp_path):
    """A resumed version gets its parent's secrets; a rerun whose parent lost its secrets file
    stops before storing anything, naming the key (never a value) and how to give it again."""
    from jobs.core.secrets import SECRETS_FILE
    from jobs.store import workdir

    script = HASH_TOKEN + "import os, sys\nos.makedirs(job.checkpoint_dir, exist_ok=True)\n" \
        "open(os.path.join(job.checkpoint_dir, 'step-1'), 'w').write('1')\n" \
        "sys.exit(0 if job.hyperparameters.get('lr') == 0.2 else 3)\n"
    spec = custom_job(tmp_path / "proj", script=script, hyperparameters={**SECRETS, "lr": 0.1})
    first = cli("job", "submit", str(spec), "--wait")
    assert Store().get("fault-job", 1)["status"] == "failed", first.stdout + first.stderr
    resumed = cli("job", "resume", "fault-job:1")  # follows the job, which fails again (lr is still 0.1)
    assert "submitted fault-job:2" in resumed.stderr and Store().get("fault-job", 2)["status"] == "failed", resumed.stderr
    assert _token_hash(2) == _sha(SECRETS["api_token"])
    (workdir(Store().get("fault-job", 1)) / SECRETS_FILE).unlink()
    lost = cli("job", "rerun", "fault-job:1", "--set", "lr=0.2")
    assert lost.returncode != 0 and "--set api_token=" in lost.stderr and not _leaks(lost.stderr), lost.stderr
    given = cli("job", "rerun", "fault-job:1", "--set", "api_token=t1-new-value", "--set", "api_key=k1-new-value",
                "--set", "db_password=p1-new-value", "--set", "lr=0.2", "--wait")
    assert given.returncode == 0, given.stderr
    assert _token_hash(3) == _sha("t1-new-value") and Store().get("fault-job", 3)["status"] == "done"
