"""Real services and shared data for the tests and the benchmarks, importable as a library.

Each module starts one kind of service on loopback and stops it again: ``net`` (free ports, a
server thread, a throttling/cutting TCP proxy), ``process`` (start a service process, wait until
it answers, stop it), ``s3`` (SeaweedFS), ``docker`` (a private dockerd and busybox images),
``registry`` (docker-registry with htpasswd), ``sagemaker`` (moto plus what moto lacks) and
``modelarts`` (a signature-checking ModelArts). tests/conftest.py wraps them in fixtures; the
benchmarks call them directly.
"""
from __future__ import annotations

from pathlib import Path

LFW10 = Path(__file__).resolve().parents[3] / "shared" / "data" / "lfw10"
"""The shared 10 people x 10 LFW photos, read in place and never copied into the repo."""
