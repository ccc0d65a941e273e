"""A loopback SageMaker + CloudWatch Logs for tests: moto's server app (real request parsing,
real storage of jobs, tags and log events) running in this process, behind a thin WSGI layer that
adds what moto does not do and the real service does.

What is moto and what is ours, honestly:
- moto: CreateTrainingJob/CreateProcessingJob/Describe*/List*/ListTags/StopProcessingJob and
  CloudWatch Logs, answered from its in-memory backend.
- ours (the layer below): every SageMaker request checked against botocore's model of the API
  (``botocore/data/sagemaker/*/service-2.json``, from which the SageMaker API Reference's
  "Required", "Type", "Length Constraints", "Pattern" and "Valid Values" are generated) with
  botocore's ``ParamValidator`` and :func:`jobs.backends.service_model.problems` for the
  max/pattern/enum limits ParamValidator skips, refused with the service's ``ValidationException``
  (https://docs.aws.amazon.com/sagemaker/latest/APIReference/CommonErrors.html);
  StopTrainingJob (moto has none), refusing an ECR image outside the job's region (the service's
  ValidationException "Invalid region ... in image URI": cross-region ECR pulls are not allowed),
  a processing job's ExitMessage (what its container wrote to /opt/ml/output/message,
  https://docs.aws.amazon.com/sagemaker/latest/dg/byoc-metadata.html, set with
  :meth:`SageMakerServer.set_processing`), refusing a duplicate job name
  (moto silently overwrites), quota errors for the
  instance types a test names, and ThrottlingException for the next N calls.
- moto runs no containers, so jobs start Completed; :meth:`SageMakerServer.set_training` changes
  a job's state the way the running service would, so status mapping is tested for each state.
"""
from __future__ import annotations

import io
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from moto.core import DEFAULT_ACCOUNT_ID

from tests.harness.net import ServerThread

REGION = "us-east-1"


@dataclass
class Extras:
    """The behaviour tests switch on: throttle the next ``throttle`` calls, quota errors for
    ``quota_types``, new training jobs starting InProgress (as on the service) instead of moto's
    Completed; every JSON request body is kept in ``requests`` as (target, body)."""

    throttle: int = 0
    start_in_progress: bool = False
    quota_types: set[str] = field(default_factory=set)
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    invalid: list[tuple[str, list[str]]] = field(default_factory=list)


class ExtrasMiddleware:
    def __init__(self, app: Any, extras: Extras) -> None:
        self.app = app
        self.extras = extras
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any):
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        environ["wsgi.input"] = io.BytesIO(body)
        if target.startswith("SageMaker."):
            operation = target.split(".", 1)[1]
            request = json.loads(body or b"{}")
            with self.lock:
                self.extras.requests.append((operation, request))
                if self.extras.throttle > 0:
                    self.extras.throttle -= 1
                    return _error(start_response, "ThrottlingException", "Rate exceeded")
            problem = self._check(operation, request)
            if problem:
                return _error(start_response, *problem)
            if operation == "StopTrainingJob":
                job = backend().training_jobs.get(request["TrainingJobName"])
                if job is None:
                    return _error(start_response, "ValidationException", f"Requested resource not found: {request['TrainingJobName']}")
                job.training_job_status = job.secondary_status = "Stopping"
                return _json(start_response, {})
            if operation == "CreateTrainingJob" and self.extras.start_in_progress:
                answer = self.app(environ, start_response)
                job = backend().training_jobs.get(request["TrainingJobName"])
                if job is not None:
                    job.training_job_status, job.secondary_status = "InProgress", "Starting"
                return answer
        return self.app(environ, start_response)

    def _check(self, operation: str, request: dict[str, Any]) -> tuple[str, str] | None:
        from jobs.backends.service_model import problems

        found = problems("sagemaker", operation, request)
        if found:
            self.extras.invalid.append((operation, found))
            return "ValidationException", f"{len(found)} validation error(s) detected: " + "; ".join(found)
        if operation == "CreateTrainingJob":
            name, existing = request["TrainingJobName"], backend().training_jobs
            kind, instance = "training", request["ResourceConfig"]["InstanceType"]
        elif operation == "CreateProcessingJob":
            name, existing = request["ProcessingJobName"], backend().processing_jobs
            kind, instance = "processing", request["ProcessingResources"]["ClusterConfig"]["InstanceType"]
        else:
            return None
        image = (request.get("AlgorithmSpecification") or request.get("AppSpecification") or {}).get(
            "TrainingImage") or request.get("AppSpecification", {}).get("ImageUri", "")
        image_region = image.split("/", 1)[0].split(".")[3:4]
        if image_region and image_region != [REGION]:
            return "ValidationException", (f"Invalid region {image_region[0]} in image URI {image}. "
                                           f"Please provide an image URI in region {REGION}.")
        if name in existing:
            return "ResourceInUse", (f"{kind.capitalize()} job names must be unique within an AWS account and region, "
                                     f"and a {kind} job with this name already exists ({existing[name].arn})")
        if instance in self.extras.quota_types:
            return "ResourceLimitExceeded", (f"The account-level service limit '{instance} for {kind} job usage' is 0 "
                                             "Instances, with current utilization of 0 Instances and a request delta of 1 "
                                             "Instances. Please use AWS Service Quotas to request an increase for this quota.")
        return None


def _error(start_response: Any, code: str, message: str):
    start_response("400 Bad Request", [("Content-Type", "application/x-amz-json-1.1"), ("x-amzn-RequestId", "test")])
    return [json.dumps({"__type": code, "message": message}).encode()]


def _json(start_response: Any, body: dict[str, Any]):
    start_response("200 OK", [("Content-Type", "application/x-amz-json-1.1")])
    return [json.dumps(body).encode()]


def backend():
    """moto's in-memory SageMaker for the default account and the test region."""
    from moto.sagemaker.models import sagemaker_backends

    return sagemaker_backends[DEFAULT_ACCOUNT_ID][REGION]


class SageMakerServer(ServerThread):
    """moto's app plus :class:`ExtrasMiddleware` on a free loopback port, in a thread."""

    def __init__(self) -> None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        self.extras = Extras()
        app = ExtrasMiddleware(DomainDispatcherApplication(create_backend_app), self.extras)
        super().__init__(make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler))

    def set_training(self, name: str, status: str, secondary: str, **fields: Any) -> None:
        """Move a training job as the running service would (moto's jobs start Completed)."""
        job = backend().training_jobs[name]
        job.training_job_status, job.secondary_status = status, secondary
        for key, value in fields.items():
            setattr(job, key, value)

    def set_processing(self, name: str, status: str, **fields: Any) -> None:
        job = backend().processing_jobs[name]
        job.processing_job_status = status
        for key, value in fields.items():
            setattr(job, key, value)

    def reset(self) -> None:
        """Forget every job and log so each test starts clean."""
        from moto.logs.models import logs_backends
        from moto.sagemaker.models import sagemaker_backends

        sagemaker_backends[DEFAULT_ACCOUNT_ID].reset()
        logs_backends[DEFAULT_ACCOUNT_ID].reset()
        self.extras.throttle = 0
        self.extras.start_in_progress = False
        self.extras.quota_types.clear()
        self.extras.requests.clear()
