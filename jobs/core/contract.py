"""The container contract: the one folder layout and set of environment variables every entry
point sees, whichever backend runs it (SageMaker's layout, which ModelArts custom images can follow).

The local backend lays it out under a job version's folder; the docker runtime and cloud services
lay it out under ``/opt/ml``. Entry points call :func:`from_env` and :func:`log_metrics` and never
care where they run.

Standard library only: the images carry this file next to ``faceops-cloud-bootstrap`` and
``faceops-task``, which run before (or without) any faceops code, so the variable names and
folder layouts are written here once for every side.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

CONTAINER_ROOT = Path("/opt/ml")
# ``${env:NAME}`` in a hyperparameter: the secret stays out of the spec, the record and the
# bundle, and is read from the job's environment only when the job starts.
ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")
BOOTSTRAP = "faceops-cloud-bootstrap"
# Where the images install the bootstrap and the interpreter it runs on: ModelArts presets PATH in
# training containers, so its start command names both by absolute path.
BOOTSTRAP_PATH = "/opt/faceops/bin/" + BOOTSTRAP
IMAGE_PYTHON = "/opt/venv/bin/python3"
# Channel and output names faceops itself uses on cloud services (reserved for users). Letters,
# digits and underscores: ModelArts' ``access_method: env`` names a variable after each, and
# variable names take only those.
CODE_CHANNEL = "faceops_code"
JOB_CHANNEL = "faceops_job"
OUTPUT_CHANNEL = "faceops_output"
# ModelArts: the job's checkpoints, uploaded to OBS under the remote job's name as they are
# written (an output) and downloaded again when the job starts (an input, into RESUME_CHANNEL).
CHECKPOINT_CHANNEL = "faceops_checkpoints"
RESUME_CHANNEL = "faceops_resume"
# Put in a new checkpoint folder on OBS so that it exists when ModelArts first downloads it; never
# copied into the checkpoints.
CHECKPOINT_MARKER = ".faceops-checkpoints"
RESERVED_CHANNELS = (CODE_CHANNEL, JOB_CHANNEL, OUTPUT_CHANNEL, CHECKPOINT_CHANNEL, RESUME_CHANNEL)
# What ModelArts (or a console edit) appends to the start command comes after this marker.
PARAMETERS_FLAG = "--faceops-parameters"
# Limits on what one archive may unpack to (see archive_limits).
ARCHIVE_MAX_BYTES = 20 * 1024 ** 3
ARCHIVE_MAX_RATIO = 100.0


def env_name(name: str) -> str:
    """Channel and output names as they appear in variable names: ``train-a`` -> ``TRAIN_A``."""
    return re.sub(r"[^A-Za-z0-9]", "_", name).upper()


def environment(*, hyperparameters_file: Path, checkpoint_dir: Path, metrics_file: Path, failure_file: Path,
                channels: Mapping[str, Path], outputs: Mapping[str, Path],
                model_dir: Path | None = None) -> dict[str, str]:
    """The variables an entry point reads (see :func:`from_env`), for folders wherever they are.
    SageMaker's ``SM_*`` names are set too so scripts written for SageMaker run unchanged."""
    env = {
        "FACEOPS_HYPERPARAMETERS": str(hyperparameters_file),
        "FACEOPS_CHECKPOINT_DIR": str(checkpoint_dir),
        "FACEOPS_METRICS_FILE": str(metrics_file),
        "FACEOPS_FAILURE_FILE": str(failure_file),
        "FACEOPS_CHANNELS": ",".join(channels),
        "FACEOPS_OUTPUTS": ",".join(outputs),
        "SM_CHANNELS": json.dumps(list(channels)),
    }
    if model_dir is not None:
        env["FACEOPS_MODEL_DIR"] = env["SM_MODEL_DIR"] = str(model_dir)
    for name, path in channels.items():
        env[f"FACEOPS_CHANNEL_{env_name(name)}"] = env[f"SM_CHANNEL_{env_name(name)}"] = str(path)
    for name, path in outputs.items():
        env[f"FACEOPS_OUTPUT_{env_name(name)}"] = str(path)
    return env


def _spec_error(message: str) -> Exception:
    """faceops's :class:`~jobs.core.errors.SpecError` (exit 2) for a job's bad setting. Only tasks
    meet one, and they run with faceops on the path, while the images' scripts use this file alone."""
    from jobs.core.errors import SpecError  # not at the top: this file also runs alone in images

    return SpecError(message)


@dataclass
class Contract:
    """Folder layout rooted at ``root`` for a job with the given input channels and outputs."""

    root: Path
    channels: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    def channel_dir(self, name: str) -> Path:
        return self.root / "input" / "data" / name

    @property
    def hyperparameters_file(self) -> Path:
        return self.root / "input" / "config" / "hyperparameters.json"

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    def output_dir(self, name: str) -> Path:
        """``model`` is SageMaker's model folder; any other output gets ``output/data/<name>``."""
        return self.model_dir if name == "model" else self.root / "output" / "data" / name

    @property
    def failure_file(self) -> Path:
        return self.root / "output" / "failure"

    @property
    def metrics_file(self) -> Path:
        return self.root / "output" / "metrics.jsonl"

    @property
    def checkpoint_dir(self) -> Path:
        return self.root / "checkpoints"

    @property
    def code_dir(self) -> Path:
        return self.root / "code"

    def make_dirs(self) -> None:
        """Create every folder of the layout (empty)."""
        for path in [*(self.channel_dir(c) for c in self.channels), *(self.output_dir(o) for o in self.outputs),
                     self.hyperparameters_file.parent, self.model_dir, self.failure_file.parent,
                     self.checkpoint_dir, self.code_dir]:
            path.mkdir(parents=True, exist_ok=True)

    def env(self) -> dict[str, str]:
        """The variables an entry point reads, pointing into this layout."""
        return environment(hyperparameters_file=self.hyperparameters_file, model_dir=self.model_dir,
                           checkpoint_dir=self.checkpoint_dir, metrics_file=self.metrics_file,
                           failure_file=self.failure_file,
                           channels={name: self.channel_dir(name) for name in self.channels},
                           outputs={name: self.output_dir(name) for name in self.outputs})


@dataclass(frozen=True)
class ServiceLayout:
    """Where a cloud service puts a job's input channels and collects its outputs inside the
    container: the backends name these folders in their requests, the bootstrap finds them there."""

    inputs: Path
    outputs: Path
    metrics_file: Path
    failure_file: Path
    model_dir: Path | None = None

    def channel_dir(self, name: str) -> Path:
        return self.inputs / name

    def output_dir(self, name: str) -> Path:
        """A training layout's ``model`` has its fixed folder; faceops' own output holds the metrics."""
        if name == "model" and self.model_dir is not None:
            return self.model_dir
        return self.metrics_file.parent if name == OUTPUT_CHANNEL else self.outputs / name


SERVICE_LAYOUTS = ("sagemaker-training", "sagemaker-processing", "modelarts")


def service_layout(kind: str, root: Path = CONTAINER_ROOT) -> ServiceLayout:
    """The layout of ``kind`` (one of :data:`SERVICE_LAYOUTS`) under ``root``. SageMaker training
    packs ``output/data`` (with the metrics) as output.tar.gz; processing jobs and ModelArts upload
    faceops' own output channel."""
    if kind == "sagemaker-training":
        return ServiceLayout(root / "input" / "data", root / "output" / "data",
                             root / "output" / "data" / "metrics.jsonl", root / "output" / "failure", root / "model")
    if kind == "sagemaker-processing":
        # A processing job reports /opt/ml/output/message as DescribeProcessingJob's ExitMessage
        # (https://docs.aws.amazon.com/sagemaker/latest/dg/byoc-metadata.html); it has no failure file.
        base = root / "processing"
        return ServiceLayout(base / "input", base / "output", base / "output" / OUTPUT_CHANNEL / "metrics.jsonl",
                             root / "output" / "message")
    if kind == "modelarts":
        return ServiceLayout(root / "input" / "data", root / "output" / "data",
                             root / "output" / "faceops" / "metrics.jsonl", root / "output" / "failure", root / "model")
    raise ValueError(f"unknown service layout {kind!r}; known: {', '.join(SERVICE_LAYOUTS)}")


@dataclass
class JobEnv:
    """What an entry point needs, read from the environment by :func:`from_env`."""

    hyperparameters: dict[str, Any]
    channels: dict[str, Path]
    outputs: dict[str, Path]
    model_dir: Path
    checkpoint_dir: Path
    metrics_file: Path | None
    failure_file: Path | None

    def channel(self, name: str) -> Path:
        """The local folder of input channel ``name``; a clear error when the job has none."""
        if name not in self.channels:
            known = ", ".join(self.channels) or "none"
            raise _spec_error(f"this task needs an input channel '{name}' (job has: {known})")
        return self.channels[name]

    def output(self, name: str) -> Path:
        """The local folder for output ``name`` (the model folder for ``model``)."""
        return self.outputs.get(name) or (self.model_dir if name == "model" else self.model_dir.parent / "output" / "data" / name)


def resolve_env(hyperparameters: dict[str, Any], environ: Any) -> dict[str, Any]:
    """Hyperparameters with each ``${env:NAME}`` value replaced by that variable of the job's
    environment; a missing variable stops the job with a message naming it (not its value)."""
    resolved = {}
    for key, value in hyperparameters.items():
        match = ENV_REF.fullmatch(value.strip()) if isinstance(value, str) else None
        if match:
            if match.group(1) not in environ:
                raise _spec_error(f"hyperparameters.{key}: the job's environment has no variable {match.group(1)}")
            value = environ[match.group(1)]
        resolved[key] = value
    return resolved


def from_env(environ: dict[str, str] | None = None) -> JobEnv:
    """Read the contract from the environment (``FACEOPS_*``, falling back to ``SM_*`` and the
    ``/opt/ml`` defaults) so the same entry point runs locally, in a container or in the cloud."""
    env = os.environ if environ is None else environ
    root = CONTAINER_ROOT
    hp_file = Path(env.get("FACEOPS_HYPERPARAMETERS", root / "input/config/hyperparameters.json"))
    hyperparameters = resolve_env(json.loads(hp_file.read_text()) if hp_file.exists() else {}, env)
    channels: dict[str, Path] = {}
    names = [c for c in env.get("FACEOPS_CHANNELS", "").split(",") if c] or json.loads(env.get("SM_CHANNELS", "[]"))
    for name in names:
        key = env_name(name)
        channels[name] = Path(env.get(f"FACEOPS_CHANNEL_{key}") or env.get(f"SM_CHANNEL_{key}") or root / "input/data" / name)
    model_dir = Path(env.get("FACEOPS_MODEL_DIR") or env.get("SM_MODEL_DIR") or root / "model")
    outputs = {name: Path(env.get(f"FACEOPS_OUTPUT_{env_name(name)}", model_dir if name == "model" else root / "output/data" / name))
               for name in env.get("FACEOPS_OUTPUTS", "").split(",") if name}
    metrics = env.get("FACEOPS_METRICS_FILE")
    failure = env.get("FACEOPS_FAILURE_FILE") or str(root / "output/failure")
    return JobEnv(
        hyperparameters=hyperparameters,
        channels=channels,
        outputs=outputs,
        model_dir=model_dir,
        checkpoint_dir=Path(env.get("FACEOPS_CHECKPOINT_DIR") or root / "checkpoints"),
        metrics_file=Path(metrics) if metrics else None,
        failure_file=Path(failure),
    )


def log_metrics(metrics_file: Path | None = None, **values: Any) -> None:
    """Append one JSON line of metrics (``step=10, loss=1.2``) to the job's metrics file.

    The backend folds the lines into the version record: the last value of each key becomes a
    final metric. Outside a job (no metrics file) this is a no-op, so library code can always call it.
    In a cloud container (the bootstrap sets ``FACEOPS_METRICS_STDOUT=1``) the same line is also
    printed as ``faceops-metrics {...}``: SageMaker's MetricDefinitions find values there
    (:func:`metric_regex`), and ``faceops job metrics`` reads the rows from the log while the job runs.
    """
    path = metrics_file or (Path(os.environ["FACEOPS_METRICS_FILE"]) if os.environ.get("FACEOPS_METRICS_FILE") else None)
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"time": round(time.time(), 3), **values})
    with open(path, "a") as fh:
        fh.write(line + "\n")
    if os.environ.get("FACEOPS_METRICS_STDOUT") == "1":
        print(METRICS_PREFIX + line, flush=True)


METRICS_PREFIX = "faceops-metrics "
_NUMBER = r"(-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)"


def metric_regex(name: str) -> str:
    """The regular expression that finds metric ``name`` (or a glob like ``val_*_acc``) in a
    line :func:`log_metrics` prints, its value as the first group, as SageMaker's
    MetricDefinitions take it."""
    key = '[^"]*'.join(re.escape(part) for part in name.split("*"))
    return f'{METRICS_PREFIX}.*"{key}": {_NUMBER}'


def write_failure(reason: str, failure_file: Path | None = None) -> None:
    """Record why the job failed where every backend looks for it (``output/failure``)."""
    path = failure_file or from_env().failure_file
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(reason.strip() + "\n")


def final_metrics(metrics_file: Path) -> dict[str, Any]:
    """Fold a metrics file into final metrics: the last value of every key (bookkeeping keys such
    as ``time`` left out). Lines that are not JSON objects are skipped: a job killed mid-write must
    not lose the metrics before it."""
    final: dict[str, Any] = {}
    if not metrics_file.exists():
        return final
    for line in metrics_file.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict):
            final.update({k: v for k, v in entry.items() if k != "time"})
    return final


# SageMaker hands a training job's model over as ``<outputs.model>/<job>/output/model.tar.gz``;
# every other backend writes the files themselves. A channel given such an output (the job's
# prefix, the output path holding one job, or the archive itself) gets the files.
MODEL_ARCHIVE = "model.tar.gz"
ARCHIVE_PLACES = (MODEL_ARCHIVE, f"output/{MODEL_ARCHIVE}", f"*/output/{MODEL_ARCHIVE}")


def model_archives(folder: Path) -> list[Path]:
    """The SageMaker model archives in a channel folder: at its top, under ``output/`` (the
    job's own prefix) or under ``<job>/output/`` (the output path)."""
    return sorted({path for place in ARCHIVE_PLACES for path in folder.glob(place) if path.is_file()})


def extract_archive(archive: Path, dest: Path) -> None:
    """Unpack the tarball ``archive`` into the folder ``dest`` with tarfile's ``data`` filter
    (no absolute paths, no links or members outside ``dest``, no device files), after
    :func:`check_archive_size` has read the members' sizes from their headers: a bomb is refused
    before a byte of it is written."""
    dest.mkdir(parents=True, exist_ok=True)
    check_archive_size(archive, dest)
    try:
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, filter="data")
                return
            # Pythons without extraction filters (3.11 before 3.11.4, like Debian 12's 3.11.2, which
            # the images may run): refuse what the data filter would, anything but plain files and
            # folders inside dest.
            inside = dest.resolve()
            for member in tar.getmembers():
                target = (inside / member.name).resolve()
                if not (member.isfile() or member.isdir()) or inside not in (target, *target.parents):
                    raise ValueError(f"{archive}: refusing member {member.name!r} (outside the folder or not a plain file)")
            tar.extractall(dest)
    except (tarfile.TarError, OSError) as exc:
        raise ValueError(f"{archive}: not a readable model archive ({exc})") from None


def archive_limits() -> tuple[int, float]:
    """The most bytes an archive may unpack to (``FACEOPS_ARCHIVE_MAX_BYTES``, 20 GiB) and the
    most its unpacked size may exceed its own (``FACEOPS_ARCHIVE_MAX_RATIO``, 100: model weights
    compress little, zeros a thousandfold). Variables, not config.yaml: this file runs in images
    before any faceops code."""
    return (int(os.environ.get("FACEOPS_ARCHIVE_MAX_BYTES") or ARCHIVE_MAX_BYTES),
            float(os.environ.get("FACEOPS_ARCHIVE_MAX_RATIO") or ARCHIVE_MAX_RATIO))


def check_archive_size(archive: Path, dest: Path) -> None:
    """Add up the member sizes the tar headers state (what extraction will write), stopping as
    soon as the total is too big: over ``archive.max_bytes``, over ``archive.max_ratio`` times the
    archive, or over the free space at ``dest``. Raises ValueError naming the archive and limit."""
    limit, ratio = archive_limits()
    packed = max(archive.stat().st_size, 1)
    free = shutil.disk_usage(dest).free
    total = 0
    try:
        with tarfile.open(archive) as tar:
            for member in tar:
                total += max(member.size, 0)
                if total > limit:
                    why = f"over the {limit}-byte limit (FACEOPS_ARCHIVE_MAX_BYTES)"
                elif total > ratio * packed:
                    why = f"over {ratio:g} times its own {packed} bytes (FACEOPS_ARCHIVE_MAX_RATIO): a decompression bomb"
                elif total > free:
                    why = f"more than the {free} bytes free on the disk holding {dest}"
                else:
                    continue
                raise ValueError(f"{archive}: unpacks to at least {total} bytes, {why}; nothing was extracted")
    except tarfile.TarError as exc:
        raise ValueError(f"{archive}: not a readable model archive ({exc})") from None


def unpack_model_archives(folder: Path, dest: Path | None = None) -> Path | None:
    """Unpack the one model archive of channel ``folder`` (see :func:`model_archives`) into
    ``dest`` (default: the channel itself, the archive then removed, so the channel holds the files
    as another backend's output would). Returns where the files are, or None when the channel holds
    no archive. Several jobs' archives are ambiguous: a ValueError names them."""
    archives = model_archives(folder)
    if not archives:
        return None
    if len(archives) > 1:
        names = ", ".join(a.relative_to(folder).as_posix() for a in archives)
        raise ValueError(f"{folder}: several model archives ({names}); give one training job's output "
                         f"(<outputs.model>/<job name>/)")
    target = folder if dest is None else dest
    extract_archive(archives[0], target)
    if dest is None:
        archives[0].unlink()
    return target


# A batch (processing) job on several instances: each takes a share of its sharded input and
# writes a part of its output, named FACEOPS_SHARD_PART, under ``<output>/parts/<part>/``; a
# merge makes them one output afterwards. INDEX/COUNT say which share when the instances see
# the whole input (the local backend, ModelArts); a service that hands each instance its own
# subset (SageMaker's ShardedByS3Key) leaves them at 0 and 1 and only names the part.
SHARD_INDEX = "FACEOPS_SHARD_INDEX"
SHARD_COUNT = "FACEOPS_SHARD_COUNT"
SHARD_PART = "FACEOPS_SHARD_PART"
PARTS = "parts"


@dataclass(frozen=True)
class Shard:
    """This instance's share of a sharded batch job: items whose stable key hashes to ``index``
    modulo ``count``, written as the part ``part``."""

    index: int
    count: int
    part: str


def shard_from_env(environ: Mapping[str, str] | None = None) -> Shard | None:
    """The shard the backend gave this instance (see :data:`SHARD_PART`), or None for a job that
    writes its whole output itself."""
    env = os.environ if environ is None else environ
    if not env.get(SHARD_PART):
        return None
    index, count, part = env.get(SHARD_INDEX, "0"), env.get(SHARD_COUNT, "1"), env[SHARD_PART]
    if not (index.isdigit() and count.isdigit() and int(index) < int(count)) \
            or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", part):
        raise _spec_error(f"{SHARD_INDEX}={index}, {SHARD_COUNT}={count}, {SHARD_PART}={part!r}: expected "
                        "0 <= index < count and a plain folder name")
    return Shard(int(index), int(count), part)


def shard_env(index: int, count: int, part: str | None = None) -> dict[str, str]:
    """The variables that make an instance shard ``index`` of ``count``, writing part ``part``
    (default ``shard-<index>``)."""
    return {SHARD_INDEX: str(index), SHARD_COUNT: str(count), SHARD_PART: part or f"shard-{index}"}
