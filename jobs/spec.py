"""Job specs: YAML in, a typed and validated :class:`JobSpec` out.

Every error names where it came from - ``spec.yaml:7 hyperparameters.lr: expected a number, got
'fast'`` for the file, ``--set lr=fast: ...`` for an override - and values are checked against the
task's schema, never passed on as raw strings. Loading touches nothing on disk but the spec file.
"""
from __future__ import annotations

import copy
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from jobs.backends import BACKENDS, RUNTIMES
from jobs.core.config import setting
from jobs.core.errors import SpecError
from jobs.core.secrets import MASK, is_reference, is_secret
from jobs.core.tasks import Param, Task, get_task, parse_metric, parse_untyped, registry, unknown_key_message

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
CHANNEL_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
TOP_LEVEL = ("name", "task", "description", "backend", "runtime", "image", "entrypoint", "code",
             "inputs", "outputs", "hyperparameters", "resources", "metrics")
MAX_INSTANCES = 1000  # more machines than any service gives one job: a typo, refused at submit
RESOURCES = {
    "instance_type": Param("str", help="machine type on a cloud backend, e.g. ml.p3.2xlarge"),
    "instance_count": Param("int", 1, "number of machines (distributed training)", min=1, max=MAX_INSTANCES),
    "max_runtime": Param("str", help="stop the job after this long: seconds or 30m, 2h, 1h30m"),
    "spot": Param("bool", False, "use spot/preemptible capacity (checkpoints make it resumable)"),
    "retries": Param("int", 0, "times a failed run is started again, resuming from checkpoints (local: after any failure; "
                     "SageMaker training: after an internal service error only, at most 30; SageMaker processing: none)", min=0),
}
# Keys that ``--set key=value`` addresses at the top level; any other bare key is a hyperparameter.
SET_TOP_LEVEL = ("name", "backend", "runtime", "image", "code", "description")
SECTIONS = ("hyperparameters", "inputs", "outputs", "resources", "metrics")
# A spec is a page of YAML: anything bigger is a mistake (a dataset saved as .yaml) or an attack.
DEFAULT_MAX_SPEC_BYTES = 1024 * 1024
# Nodes a spec may expand to once YAML aliases are followed; a real spec has a few hundred, a
# "billion laughs" alias bomb billions (refused before it is built).
MAX_EXPANDED_NODES = 100_000


@dataclass
class Resources:
    instance_type: str | None = None
    instance_count: int = 1
    max_runtime: int | None = None
    spot: bool = False
    retries: int = 0


@dataclass
class JobSpec:
    """A validated job spec. ``inputs``/``outputs`` map names to URIs; relative paths are resolved
    against the spec file's folder so a version record means the same thing from any directory."""

    name: str
    task: str
    backend: str = "local"
    runtime: str = "process"
    image: str | None = None
    entrypoint: list[str] | None = None
    code: str | None = None
    description: str = ""
    inputs: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    resources: Resources = field(default_factory=Resources)
    # Metric name (or glob pattern) -> {"direction": "min"|"max", "unit": ..., "chance": ...}; adds to (and
    # overrides) the task's own schema, so custom jobs can say which way is better.
    metrics: dict[str, dict[str, str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The resolved spec as plain data (what a version record stores and ``rerun`` reloads)."""
        return asdict(self)


@dataclass
class _Source:
    """Where values came from, for error messages: the file, the line of each key path, and
    which key paths were set on the command line."""

    file: str = "<spec>"
    lines: dict[str, int] = field(default_factory=dict)
    overrides: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def where(self, path: str) -> str:
        if path in self.overrides:
            return f"--set {self.overrides[path]}: {path}"
        probe = path
        while probe and probe not in self.lines:
            probe = probe.rpartition(".")[0]
        line = self.lines.get(probe)
        return f"{self.file}:{line} {path}" if line else f"{self.file} {path}"

    def error(self, path: str, message: str) -> SpecError:
        return SpecError(f"{self.where(path)}: {message}")

    def report(self, path: str, message: str) -> None:
        """Note a problem and go on, so one run names every mistake in the spec."""
        self.problems.append(f"{self.where(path)}: {message}")

    def collect(self, check: Any, default: Any = None) -> Any:
        """``check()``, or ``default`` with its SpecError noted as a problem."""
        try:
            return check()
        except SpecError as exc:
            self.problems.append(str(exc))
            return default

    def raise_problems(self) -> None:
        if len(self.problems) == 1:
            raise SpecError(self.problems[0])
        if self.problems:
            raise SpecError(f"{len(self.problems)} problems:\n" + "\n".join(self.problems))


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> JobSpec:
    """Read, override (``key=value`` strings) and validate the spec file at ``path``."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: no such spec file")
    text = _read_text(path)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        _check_expansion(node, path)
        _check_duplicates(node, path)
        raw = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise SpecError(f"{path}{line}: YAML syntax error: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from None
    except RecursionError:
        raise SpecError(f"{path}: nested too deeply to read (thousands of [ or {{ inside each other); "
                        "a spec is a few levels deep") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping of keys (name, task, ...) at the top level")
    source = _Source(file=str(path), lines=_line_map(node))
    _resolve_relative(raw, path.resolve().parent)
    return validate(raw, source=source, overrides=overrides)


def _read_text(path: Path) -> str:
    """The spec's text: refused when over ``spec.max_bytes`` or not UTF-8 (naming the line)."""
    limit = int(setting("spec", "max_bytes", ("FACEOPS_SPEC_MAX_BYTES",), DEFAULT_MAX_SPEC_BYTES))
    size = path.stat().st_size
    if size > limit:
        raise SpecError(f"{path}: {size} bytes is over the {limit}-byte limit for a spec (spec.max_bytes); "
                        "keep data out of the spec and point inputs: at it")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise SpecError(f"{path}:{line}: not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start}); "
                        "save the spec as UTF-8") from None


def _check_duplicates(node: Any, path: Path) -> None:
    """Refuse a mapping that has the same key twice (YAML would silently keep the last one),
    naming the key and both lines. Runs after :func:`_check_expansion`, so the graph is small."""
    import yaml

    seen: set[int] = set()
    pending = [node]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key, value in current.value:
                if isinstance(key, yaml.ScalarNode):
                    line = key.start_mark.line + 1
                    if key.value in first:
                        raise SpecError(f"{path}:{line}: duplicate key '{key.value}' (first at line "
                                        f"{first[key.value]}); keep one of them")
                    first[key.value] = line
                pending += [key, value]
        elif isinstance(current, yaml.SequenceNode):
            pending += current.value


def _check_expansion(node: Any, path: Path) -> None:
    """Refuse a document whose aliases expand past :data:`MAX_EXPANDED_NODES` (or refer to
    themselves), measured on the node graph without building the expanded data."""
    import yaml

    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(n: Any) -> int:
        key = id(n)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise SpecError(f"{path}:{n.start_mark.line + 1}: a YAML alias refers to itself")
        open_nodes.add(key)
        total = 1
        if isinstance(n, yaml.SequenceNode):
            total += sum(size(child) for child in n.value)
        elif isinstance(n, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in n.value)
        open_nodes.discard(key)
        if total > MAX_EXPANDED_NODES:
            raise SpecError(f"{path}:{n.start_mark.line + 1}: YAML aliases here expand to more than "
                            f"{MAX_EXPANDED_NODES} values; write the values out or use fewer aliases")
        sizes[key] = total
        return total

    if node is not None:
        size(node)


def validate(raw: dict[str, Any], *, source: _Source | None = None,
             overrides: list[str] | tuple[str, ...] = ()) -> JobSpec:
    """Apply ``overrides`` to a raw spec dict and validate it into a :class:`JobSpec`.

    Also used by ``job rerun``, whose raw dict is the parent version's resolved spec."""
    source = source or _Source()
    raw = copy.deepcopy(raw)
    task = _task_of(raw, source)
    for item in overrides:
        path = apply_override(raw, item, task)
        source.overrides[path] = shown_override(item)
    task = _task_of(raw, source)
    return _build(raw, task, source)


def shown_override(item: str) -> str:
    """``key=value`` as an error message may show it: the value of a secret key becomes ``***``."""
    key, sep, value = item.partition("=")
    return f"{key}={MASK}" if sep and is_secret(key.rsplit(".", 1)[-1]) and not is_reference(value) else item


def apply_override(raw: dict[str, Any], item: str, task: Task) -> str:
    """Set one ``key=value`` in ``raw`` and return the dotted key path it set.

    ``lr=0.1`` is a hyperparameter, ``resources.spot=true`` or ``inputs.train=s3://...`` a nested
    key, ``image=...`` a top-level key. Schema-less values are read as YAML so they keep a type."""
    key, sep, value = item.partition("=")
    key = key.strip()
    shown = shown_override(item)
    if not sep or not key:
        raise SpecError(f"--set {shown}: expected key=value")
    if "." in key:
        section, _, sub = key.partition(".")
        if section not in ("hyperparameters", "inputs", "outputs", "resources"):
            raise SpecError(f"--set {shown}: {unknown_key_message(section, ('hyperparameters', 'inputs', 'outputs', 'resources'))}")
        path = key
    elif key in SECTIONS:
        raise SpecError(f"--set {shown}: {key} is a section, not a value; set one of its keys: {key}.NAME=VALUE")
    elif key == "task":
        raise SpecError(f"--set {shown}: the task of a job cannot be changed with --set (its spec's inputs, outputs "
                        "and hyperparameters belong to the task); edit task: in the spec")
    elif key in SET_TOP_LEVEL:
        raw[key] = _local_path(value) if key == "code" else value
        return key
    else:
        section, sub, path = "hyperparameters", key, f"hyperparameters.{key}"
    if section == "hyperparameters":
        if task.params is not None and sub not in task.params:
            raise SpecError(f"--set {shown}: hyperparameters: {unknown_key_message(sub, task.params)}")
        parsed: Any = parse_untyped(value) if task.params is None else value
    else:
        parsed = _local_path(value) if section in ("inputs", "outputs") else value
    if not isinstance(raw.get(section), dict):
        raw[section] = {}
    # A schema-less hyperparameter may be nested: hyperparameters.opt.lr sets {"opt": {"lr": ...}}.
    *parents, leaf = sub.split(".") if section == "hyperparameters" and task.params is None else [sub]
    target = raw[section]
    for part in parents:
        if not isinstance(target.get(part), dict):
            target[part] = {}
        target = target[part]
    target[leaf] = parsed
    return path


def _task_of(raw: dict[str, Any], source: _Source) -> Task:
    name = raw.get("task")
    if name is None:
        raise source.error("task", f"missing; say which task this job runs ({', '.join(registry())})")
    try:
        return get_task(str(name))
    except KeyError as exc:
        raise source.error("task", exc.args[0]) from None


def _build(raw: dict[str, Any], task: Task, source: _Source) -> JobSpec:
    """Check every part of the spec, noting each problem, and raise them all together."""
    for key in raw:
        if key not in TOP_LEVEL:
            source.report(str(key), unknown_key_message(str(key), TOP_LEVEL))
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        source.report("name", f"expected lowercase letters, digits and '-' (like recog-r50), got {name!r}")

    backend = str(raw.get("backend") or "local")
    if backend not in BACKENDS:
        source.report("backend", unknown_key_message(backend, BACKENDS).replace("unknown key", "unknown backend"))
    runtime = str(raw.get("runtime") or "process")
    if runtime not in RUNTIMES:
        source.report("runtime", f"expected one of {', '.join(RUNTIMES)}, got {runtime!r}")
    image = raw.get("image")
    if image is not None and not isinstance(image, str):
        source.report("image", f"expected an image reference like registry/repo:tag, got {image!r}")
    if runtime == "docker" and not image:
        source.report("runtime", "runtime docker needs an image (set image: REF)")
    spec = JobSpec(
        name=name,
        task=task.name,
        backend=backend,
        runtime=runtime,
        image=image,
        entrypoint=source.collect(lambda: _entrypoint(raw.get("entrypoint"), task, source)),
        code=str(raw["code"]) if raw.get("code") else None,
        description=str(raw.get("description") or ""),
        inputs=source.collect(lambda: _uri_map(raw.get("inputs"), "inputs", source, task.inputs), {}),
        outputs=source.collect(lambda: _uri_map(raw.get("outputs"), "outputs", source, task.outputs), {}),
        hyperparameters=source.collect(lambda: _hyperparameters(raw.get("hyperparameters"), task, source), {}),
        resources=source.collect(lambda: _resources(raw.get("resources"), source), Resources()),
        metrics=source.collect(lambda: _metrics(raw.get("metrics"), source), {}),
    )
    source.raise_problems()
    return spec


def _entrypoint(value: Any, task: Task, source: _Source) -> list[str] | None:
    if task.params is not None:
        if value:
            raise source.error("entrypoint", f"task {task.name} runs its own entry point; use task: custom for your own command")
        return None
    if not isinstance(value, list) or not value or not all(isinstance(v, (str, int, float)) for v in value):
        raise source.error("entrypoint", "task custom needs entrypoint: a non-empty list of arguments, e.g. [python, train.py]")
    return [str(v) for v in value]


def _uri_map(value: Any, section: str, source: _Source, known: dict[str, Any] | None) -> dict[str, str]:
    """Name -> URI; with ``known`` (the task's declared inputs or outputs) a name the task never
    reads is an error, so a misspelt ``recogniser:`` cannot silently fall back to a default model."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise source.error(section, "expected a mapping of name -> URI (s3://bucket/prefix, file:///path or a path)")
    out = {}
    for name, uri in value.items():
        path = f"{section}.{name}"
        if not CHANNEL_RE.match(str(name)):
            source.report(path, "names are lowercase letters, digits, '-' and '_', starting with a letter")
        elif known is not None and str(name) not in known:
            source.report(path, unknown_key_message(str(name), known).replace("unknown key", f"unknown {section[:-1]}"))
        elif not isinstance(uri, str) or not uri.strip():
            source.report(path, f"expected a URI (s3://bucket/prefix, file:///path or a path), got {uri!r}")
        elif "://" in uri and not uri.startswith(("s3://", "file://")):
            source.report(path, f"unsupported scheme in {uri!r}; use s3://, file:// or a plain path")
        else:
            out[str(name)] = uri
    return out


def _hyperparameters(value: Any, task: Task, source: _Source) -> dict[str, Any]:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise source.error("hyperparameters", "expected a mapping of name -> value")
    out = task.defaults()
    for key, item in value.items():
        path = f"hyperparameters.{key}"
        try:
            out[str(key)] = task.check(str(key), item)
        except KeyError as exc:
            source.report(path, exc.args[0])
        except ValueError as exc:
            source.report(path, str(exc))
    return out


def _resources(value: Any, source: _Source) -> Resources:
    if value is None:
        return Resources()
    if not isinstance(value, dict):
        raise source.error("resources", f"expected a mapping ({', '.join(RESOURCES)})")
    checked: dict[str, Any] = {}
    for key, item in value.items():
        path = f"resources.{key}"
        if key not in RESOURCES:
            source.report(path, unknown_key_message(str(key), RESOURCES))
            continue
        if item is None:
            continue
        try:
            checked[key] = parse_duration(item) if key == "max_runtime" else RESOURCES[key].check(item)
        except ValueError as exc:
            source.report(path, str(exc))
    return Resources(**checked)


def _metrics(value: Any, source: _Source) -> dict[str, dict[str, str]]:
    """``metrics: {loss: min, acc: {direction: max, unit: "%"}}`` -> typed declarations."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise source.error("metrics", "expected a mapping of metric name -> min, max or {direction, unit}")
    out = {}
    for name, item in value.items():
        try:
            metric = parse_metric(item)
        except ValueError as exc:
            raise source.error(f"metrics.{name}", str(exc)) from None
        out[str(name)] = {"direction": metric.direction, "unit": metric.unit,
                          **({"chance": metric.chance} if metric.chance is not None else {})}
    return out


def parse_duration(value: Any) -> int | None:
    """Seconds from ``3600``, ``"90s"``, ``"30m"``, ``"2h"`` or ``"1h30m"``."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return int(value)
    text = str(value).strip().lower()
    if text.isdigit() and int(text) > 0:
        return int(text)
    match = re.fullmatch(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    if not text or not match or not any(match.groups()):
        raise ValueError(f"expected a duration like 3600, 30m, 2h or 1h30m, got {value!r}")
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def _local_path(value: str) -> str:
    """A relative path typed on the command line means relative to where the user stands."""
    return value if "://" in value or not value.strip() else str(Path(value).resolve())


def _resolve_relative(raw: dict[str, Any], base: Path) -> None:
    """Make relative local paths in inputs, outputs and code absolute (relative to the spec file)."""
    for section in ("inputs", "outputs"):
        if isinstance(raw.get(section), dict):
            for name, uri in raw[section].items():
                if isinstance(uri, str) and "://" not in uri and uri.strip():
                    raw[section][name] = str((base / uri).resolve())
    code = raw.get("code")
    if isinstance(code, str) and "://" not in code:
        raw["code"] = str((base / code).resolve())
    elif code is None and raw.get("task") == "custom":
        raw["code"] = str(base)


def _line_map(node: Any, prefix: str = "") -> dict[str, int]:
    """Dotted key path -> 1-based line number, from yaml's node tree."""
    import yaml

    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
            lines[path] = key_node.start_mark.line + 1
            lines.update(_line_map(value_node, path))
    return lines
