"""A loopback ModelArts for tests: the documented v2 training-job endpoints the backend calls,
with Huawei's AK/SK request signing checked (SDK-HMAC-SHA256 over the canonical request,
recomputed here from the APIG signing rules, not with the SDK's own signer).

Endpoints: POST /v2/{project}/training-jobs (create), GET /v2/{project}/training-jobs/{id} (show),
POST /v2/{project}/training-job-searches (list), POST /v2/{project}/training-jobs/{id}/actions
(stop), GET /v2/{project}/training-jobs/{id}/tasks/{task}/logs/preview (logs).
It runs nothing: tests move a job through its phases with :meth:`ModelArtsServer.set_phase`,
write its log with :meth:`ModelArtsServer.append_log`, and get what one node's container would
be started with from :meth:`ModelArtsServer.container`.

Held to the service, not to our assumptions:
- A create body is checked against the SDK's own request models (``huaweicloudsdkmodelarts``
  ``Job`` and the models it nests, through their ``openapi_types``/``attribute_map``): unknown
  fields and wrong types are refused, and so are missing fields the CreateTrainingJob reference
  marks mandatory (https://support.huaweicloud.com/intl/en-us/api-modelarts/CreateTrainingJob.html),
  the name pattern (1-64 letters, digits, ``_``, ``-``) and ``access_method`` outside parameter/env.
- Channels: an input or output without ``access_method`` (default ``parameter``, per the SDK's
  Input/Output) is appended to the command as ``--<name>=<local_dir>``; with ``env`` it becomes
  a variable named after the channel (https://support.huaweicloud.com/drawer-modelarts/ma_drawer_008.html);
  variable names are letters, digits and underscores, so a channel named otherwise gets none.
  Parameters are appended as ``--<name>=<value>``.
- The start command: ModelArts' docs allow ``;`` and ``&&`` in it and want the script last when
  there are hyperparameters (a shell), while another page says jobs do not run in a shell, so
  :meth:`ModelArtsServer.container` reads it both ways (``shell=True``: the command with the
  appended arguments as a POSIX shell splits it, quotes removed; ``False``: split on blanks,
  each appended argument one word). PATH is among the variables ModelArts presets ("Environment
  Variables Preset in a Training Container", below), so the container gets one without the image's
  own folders; the start folder is /home/ma-user (:data:`START_FOLDER`).
- Node variables: MA_NUM_HOSTS, VC_WORKER_NUM, VC_TASK_INDEX, VC_WORKER_HOSTS, MA_TASK_NAME,
  MA_VJ_NAME, MA_CURRENT_IP, as preset in training containers
  (https://support.huaweicloud.com/intl/en-us/usermanual-standard-modelarts/develop-modelarts-0104.html).
- Logs: the preview returns at most the last 5 MB with ``current_size`` and ``full_size``
  (ShowTrainingJobLogsPreview, https://support.huaweicloud.com/api-modelarts/ShowTrainingJobLogsPreview.html);
  the full log is exported to ``log_export_path`` as ``modelarts-job-<job id>-<task>.log``
  ("Common Logs", https://support.huaweicloud.com/intl/en-us/develop-modelarts/develop-modelarts-0095.html),
  which :meth:`ModelArtsServer.export_logs` writes where a test's object storage has it.
- Errors use codes from Huawei's published list (ModelArts API reference, "Error Codes",
  https://support.huaweicloud.com/intl/en-us/api-modelarts/modelarts_03_0095.html and its OTC
  edition https://docs.otc.t-systems.com/modelarts/api-ref/common_parameters/error_codes.html):
  ModelArts.0104 "Parameter error." for a bad request, ModelArts.0116 "The expected {0} exceeds
  the quota limit." for quota; APIGW.0301 (IAM authentication) and APIGW.0308 (throttling) from
  the API Gateway list those pages refer to. The detail after the listed message is ours.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
import shlex
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote, unquote, urlsplit, parse_qsl

from tests.harness.net import ServerThread

START_FOLDER = "/home/ma-user"  # the working directory of a training container
PRESET_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
VARIABLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
LOG_WINDOW = 5 * 1024 * 1024  # the preview's "n MB": current_size "at most 5 MB"
NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
ACCESS_METHODS = ("parameter", "env")
# Fields CreateTrainingJob marks mandatory, per model (the SDK's models do not say).
REQUIRED = {"Job": ("kind", "metadata"), "JobMetadata": ("name",), "Input": ("name", "remote"),
            "Output": ("name", "remote"), "Parameters": ("name",), "InputDataInfoObs": ("obs_url",),
            "RemoteObs": ("obs_url",), "SpecResource": ("flavor_id",)}
SCALARS = {"str": (str,), "int": (int,), "bool": (bool,), "float": (int, float), "object": (object,)}
AUTH_RE = re.compile(r"^SDK-HMAC-SHA256 Access=([^,]+), SignedHeaders=([^,]+), Signature=([0-9a-f]{64})$")
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def canonical_request(method: str, path: str, query: str, headers: dict[str, str], signed: list[str], body: bytes) -> str:
    """APIG's canonical request: method, URI (segments escaped, ending in /), sorted query,
    the signed headers as name:value lines, their names, and the body's SHA-256."""
    uri = "/".join(quote(unquote(part), safe="~") for part in path.split("/"))
    if not uri.endswith("/"):
        uri += "/"
    pairs = sorted(parse_qsl(query, keep_blank_values=True))
    query_text = "&".join(f"{quote(k, safe='~')}={quote(v, safe='~')}" for k, v in pairs)
    lines = "".join(f"{name}:{headers.get(name, '').strip()}\n" for name in signed)
    payload = headers.get("x-sdk-content-sha256") or (hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256)
    return "\n".join([method, uri, query_text, lines, ";".join(signed), payload])


def model_problems(value: Any, kind: str, where: str) -> list[str]:
    """What is wrong with ``value`` as the SDK type ``kind`` (``str``, ``list[Input]``,
    ``dict(str, str)``, a model class name): checked against the model's ``openapi_types`` and
    ``attribute_map``, and the mandatory fields of :data:`REQUIRED`."""
    from huaweicloudsdkmodelarts.v1 import model as m

    if kind.startswith("list["):
        if not isinstance(value, list):
            return [f"{where}: expected a list"]
        return [p for i, item in enumerate(value) for p in model_problems(item, kind[5:-1], f"{where}[{i}]")]
    if kind.startswith("dict("):
        inner = kind[5:-1].split(", ", 1)[1]
        if not isinstance(value, dict):
            return [f"{where}: expected an object"]
        return [p for k, v in value.items() for p in model_problems(v, inner, f"{where}.{k}")]
    if kind in SCALARS:
        ok = isinstance(value, SCALARS[kind]) and not (kind in ("int", "float") and isinstance(value, bool))
        return [] if ok else [f"{where}: expected {kind}, got {type(value).__name__}"]
    model = getattr(m, kind)
    if not isinstance(value, dict):
        return [f"{where}: expected a {kind} object"]
    fields = {wire: attr for attr, wire in model.attribute_map.items()}
    problems = [f"{where}.{name}: mandatory" for name in REQUIRED.get(kind, ()) if value.get(name) is None]
    for name, item in value.items():
        if name not in fields:
            problems.append(f"{where}.{name}: not a field of {kind}")
        elif item is not None:
            problems += model_problems(item, model.openapi_types[fields[name]], f"{where}.{name}")
    return problems


def job_problems(job: Any) -> list[str]:
    """A CreateTrainingJob body's problems: the SDK model check plus the documented value rules."""
    problems = model_problems(job, "Job", "body")
    if problems:
        return problems
    if not NAME_RE.match(job["metadata"]["name"]):
        problems.append("body.metadata.name: 1-64 letters, digits, underscores and hyphens")
    algorithm = job.get("algorithm") or {}
    for kind in ("inputs", "outputs"):
        for i, channel in enumerate(algorithm.get(kind) or []):
            if channel.get("access_method", "parameter") not in ACCESS_METHODS:
                problems.append(f"body.algorithm.{kind}[{i}].access_method: one of {', '.join(ACCESS_METHODS)}")
    return problems


@dataclass
class State:
    """What the server holds and what tests switch on."""

    access_key: str
    secret_key: str
    project_id: str
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    logs: dict[tuple[str, str], str] = field(default_factory=dict)
    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    auth_checked: int = 0
    flavors: set[str] = field(default_factory=lambda: {"modelarts.p3.large.public", "modelarts.vm.cpu.8u"})
    quota_flavors: set[str] = field(default_factory=set)
    images: set[str] = field(default_factory=set)
    throttle: int = 0
    log_window: int = LOG_WINDOW


class Handler(BaseHTTPRequestHandler):
    state: State

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _handle(self, method: str) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        url = urlsplit(self.path)
        problem = self._check_signature(method, url.path, url.query, body)
        if problem:
            return self._reply(401, {"error_code": "APIGW.0301", "error_msg": problem})
        payload = json.loads(body) if body else None
        self.state.requests.append((method, url.path, payload))
        if self.state.throttle > 0:
            self.state.throttle -= 1
            return self._reply(429, {"error_code": "APIGW.0308", "error_msg": "The throttling threshold has been reached: policy user over ratelimit"})
        prefix = f"/v2/{self.state.project_id}/"
        if not url.path.startswith(prefix):
            return self._reply(404, {"error_code": "ModelArts.0104", "error_msg": "Parameter error. The project id does not match the request signature"})
        route = url.path[len(prefix):].split("/")
        if method == "POST" and route == ["training-jobs"]:
            return self._create(payload)
        if method == "POST" and route == ["training-job-searches"]:
            return self._search(payload or {})
        if len(route) >= 2 and route[0] == "training-jobs" and route[1] in self.state.jobs:
            job = self.state.jobs[route[1]]
            if method == "GET" and len(route) == 2:
                return self._reply(200, job)
            if method == "POST" and route[2:] == ["actions"] and payload == {"action_type": "terminate"}:
                job["status"]["phase"] = "Terminating"
                return self._reply(202, job)
            if method == "GET" and len(route) == 6 and route[2] == "tasks" and route[4:] == ["logs", "preview"]:
                data = self.state.logs.get((route[1], route[3]), "").encode()
                window = data[-self.state.log_window:]
                return self._reply(200, {"content": window.decode(errors="replace"), "current_size": len(window),
                                         "full_size": len(data)})
        return self._reply(404, {"error_code": "ModelArts.0104", "error_msg": f"Parameter error. No training job or endpoint {url.path}"})

    def _check_signature(self, method: str, path: str, query: str, body: bytes) -> str | None:
        match = AUTH_RE.match(self.headers.get("Authorization", ""))
        if not match:
            return "Incorrect IAM authentication information: Authorization header missing or not SDK-HMAC-SHA256"
        access, signed, signature = match.group(1), match.group(2).split(";"), match.group(3)
        if access != self.state.access_key:
            return "Incorrect IAM authentication information: ak is not found"
        date = self.headers.get("X-Sdk-Date", "")
        try:
            when = datetime.strptime(date, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
        except ValueError:
            return "Incorrect IAM authentication information: X-Sdk-Date missing or malformed"
        if abs(time.time() - when.timestamp()) > 15 * 60:
            return "Incorrect IAM authentication information: X-Sdk-Date expired"
        if not {"host", "x-sdk-date"} <= set(signed):
            return "Incorrect IAM authentication information: host and x-sdk-date must be signed"
        headers = {k.lower(): v for k, v in self.headers.items()}
        canonical = canonical_request(method, path, query, headers, signed, body)
        to_sign = f"SDK-HMAC-SHA256\n{date}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        expected = hmac.new(self.state.secret_key.encode(), to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature):
            return "Incorrect IAM authentication information: verify aksk signature fail"
        self.state.auth_checked += 1
        return None

    def _create(self, job: Any) -> None:
        problems = job_problems(job)
        if problems:
            return self._reply(400, {"error_code": "ModelArts.0104", "error_msg": "Parameter error. " + "; ".join(problems)})
        name = job["metadata"]["name"]
        flavor = job["spec"]["resource"]["flavor_id"]
        image = job["algorithm"]["engine"]["image_url"]
        if any(j["metadata"]["name"] == name for j in self.state.jobs.values()):
            return self._reply(400, {"error_code": "ModelArts.0104", "error_msg": f"Parameter error. Job name {name} already exists."})
        if flavor not in self.state.flavors:
            return self._reply(400, {"error_code": "ModelArts.0104", "error_msg": f"Parameter error. Flavor {flavor} is not supported. Use one of: {', '.join(sorted(self.state.flavors))}"})
        if flavor in self.state.quota_flavors:
            return self._reply(400, {"error_code": "ModelArts.0116", "error_msg": f"The expected {flavor} nodes exceeds the quota limit."})
        if image not in self.state.images:
            return self._reply(400, {"error_code": "ModelArts.0104", "error_msg": f"Parameter error. Image {image} does not exist in SWR or you have no permission to pull it."})
        job_id = str(uuid.uuid4())
        stored = json.loads(json.dumps(job))
        stored["metadata"].update(id=job_id, create_time=int(time.time() * 1000))
        nodes = job["spec"]["resource"].get("node_count") or 1
        stored["status"] = {"phase": "Creating", "secondary_phase": "Creating", "duration": 0,
                            "tasks": [f"worker-{n}" for n in range(nodes)]}
        self.state.jobs[job_id] = stored
        self._reply(201, stored)

    def _search(self, query: Any) -> None:
        names = [v for f in query.get("filters") or [] if f.get("key") == "name" for v in f.get("value", [])]
        items = [j for j in self.state.jobs.values() if not names or any(n in j["metadata"]["name"] for n in names)]
        self._reply(200, {"total": len(items), "count": len(items), "limit": 10, "offset": 0, "items": items})

    def _reply(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Request-Id", uuid.uuid4().hex)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class ModelArtsServer(ServerThread):
    """The server on a free loopback port, in a thread, with the given AK/SK and project id."""

    def __init__(self, access_key: str, secret_key: str, project_id: str) -> None:
        self.state = State(access_key, secret_key, project_id)
        handler = type("BoundHandler", (Handler,), {"state": self.state})
        super().__init__(ThreadingHTTPServer(("127.0.0.1", 0), handler))

    def set_phase(self, job_id: str, phase: str, **status: Any) -> None:
        """Move a job as the running service would."""
        self.state.jobs[job_id]["status"].update(phase=phase, **status)

    def append_log(self, job_id: str, task: str, text: str) -> None:
        key = (job_id, task)
        self.state.logs[key] = self.state.logs.get(key, "") + text

    def container(self, job_id: str, node: int = 0, hosts: list[str] | None = None,
                  shell: bool = True) -> tuple[list[str], dict[str, str]]:
        """The argv and the variables (beyond the image's own) that ModelArts starts node
        ``node``'s container of a created job with: the command with ``parameter``-access
        channels and the parameters appended (read through a shell, or split on blanks:
        ``shell``), ``env``-access channels and the job's environments as variables, the preset
        PATH and node variables; ``hosts`` stands in for the nodes' domain names (the service's
        own: ``<vj>-worker-N.<vj>``)."""
        job = self.state.jobs[job_id]
        algorithm, count = job["algorithm"], job["spec"]["resource"].get("node_count") or 1
        vj = f"modelarts-job-{job_id}"
        hosts = hosts or [f"{vj}-worker-{n}.{vj}" for n in range(count)]
        appended, env = [], dict(algorithm.get("environments") or {})
        for channel in [*(algorithm.get("inputs") or []), *(algorithm.get("outputs") or [])]:
            if channel.get("access_method", "parameter") != "env":
                appended.append(f"--{channel['name']}={channel['local_dir']}")
            elif VARIABLE_RE.match(channel["name"]):
                env[channel["name"]] = channel["local_dir"]
        appended += [f"--{p['name']}={p['value']}" for p in algorithm.get("parameters") or []]
        if shell:
            argv = shlex.split(" ".join([algorithm["command"], *appended]))
        else:
            argv = algorithm["command"].split() + appended
        env.update(PATH=PRESET_PATH, MA_NUM_HOSTS=str(count), VC_WORKER_NUM=str(count), VC_TASK_INDEX=str(node),
                   VC_WORKER_HOSTS=",".join(hosts), MA_TASK_NAME="worker", MA_VJ_NAME=vj, MA_CURRENT_IP=f"192.168.0.{node + 10}")
        return argv, env

    def export_logs(self, put: Any, rotate_at: int | None = None) -> None:
        """Upload every task's full log to the job's ``log_export_path`` as ModelArts does
        (every few seconds while the job runs): ``put(bucket, key, data)`` writes one object.
        With ``rotate_at`` the log is rotated every that many bytes, as newer platform versions
        do: the older pieces as ``modelarts-job-<job id>-<task>-<n>.log`` (1 the oldest, names
        the docs do not give), the newest under the documented name."""
        for (job_id, task), text in self.state.logs.items():
            folder = self.state.jobs[job_id]["spec"]["log_export_path"]["obs_url"].strip("/")
            bucket, _, prefix = folder.partition("/")
            data = text.encode()
            step = rotate_at or max(len(data), 1)
            pieces = [data[at:at + step] for at in range(0, len(data), step)] or [b""]
            for number, piece in enumerate(pieces[:-1], 1):
                put(bucket, f"{prefix}/modelarts-job-{job_id}-{task}-{number}.log".lstrip("/"), piece)
            put(bucket, f"{prefix}/modelarts-job-{job_id}-{task}.log".lstrip("/"), pieces[-1])
