"""A loopback ModelArts for tests: the documented v2 training-job endpoints the backend calls,
with Huawei's AK/SK request signing checked (SDK-HMAC-SHA256 over the canonical request,
recomputed here from the APIG signing rules, not with the SDK's own signer).

Endpoints: POST /v2/{project}/training-jobs (create), GET /v2/{project}/training-jobs/{id} (show),
POST /v2/{project}/training-job-searches (list), POST /v2/{project}/training-jobs/{id}/actions
(stop), GET /v2/{project}/training-jobs/{id}/tasks/{task}/logs/preview (logs).
It runs nothing: tests move a job through its phases with :meth:`ModelArtsServer.set_phase` and
write its log with :meth:`ModelArtsServer.append_log`. Error codes and messages for the bad-input
cases follow the shapes of ModelArts' documented errors ({"error_code", "error_msg"}).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote, unquote, urlsplit, parse_qsl

from tests.harness.net import ServerThread

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
            return self._reply(404, {"error_code": "ModelArts.0104", "error_msg": "project id does not match the request signature"})
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
                text = self.state.logs.get((route[1], route[3]), "")
                return self._reply(200, {"content": text, "current_size": len(text), "full_size": len(text)})
        return self._reply(404, {"error_code": "ModelArts.2602", "error_msg": f"training job or endpoint not found: {url.path}"})

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

    def _create(self, job: dict[str, Any]) -> None:
        name = job["metadata"]["name"]
        flavor = job["spec"]["resource"]["flavor_id"]
        image = job["algorithm"]["engine"]["image_url"]
        if any(j["metadata"]["name"] == name for j in self.state.jobs.values()):
            return self._reply(400, {"error_code": "ModelArts.2709", "error_msg": f"Job name {name} already exists."})
        if flavor not in self.state.flavors:
            return self._reply(400, {"error_code": "ModelArts.2763", "error_msg": f"Flavor {flavor} is not supported. Use one of: {', '.join(sorted(self.state.flavors))}"})
        if flavor in self.state.quota_flavors:
            return self._reply(400, {"error_code": "ModelArts.2791", "error_msg": f"Insufficient quota for flavor {flavor}: 0 nodes available, 1 requested."})
        if image not in self.state.images:
            return self._reply(400, {"error_code": "ModelArts.2775", "error_msg": f"Image {image} does not exist in SWR or you have no permission to pull it."})
        job_id = str(uuid.uuid4())
        stored = json.loads(json.dumps(job))
        stored["metadata"].update(id=job_id, create_time=int(time.time() * 1000))
        stored["status"] = {"phase": "Creating", "secondary_phase": "Creating", "duration": 0, "tasks": ["worker-0"]}
        self.state.jobs[job_id] = stored
        self._reply(201, stored)

    def _search(self, query: dict[str, Any]) -> None:
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
