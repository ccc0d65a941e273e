"""Requests checked against an AWS service's published model before they are sent.

botocore ships each service's API model (``botocore/data/sagemaker/<date>/service-2.json``, the
same model the SageMaker API Reference is generated from): every shape's type, its required
members and its ``min``/``max``/``pattern``/``enum`` limits. botocore's ``ParamValidator`` checks
types, required members and ``min`` only (``botocore.validate.range_check`` never reads ``max``;
patterns and enums are left to the service), so a request can pass it and still be refused by
SageMaker after faceops has uploaded the bundle. :func:`problems` checks both; the SageMaker
backend refuses a request with problems before any upload, and the SageMaker test double
(tests/harness/sagemaker.py) refuses it the way the service would.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from jobs.core.lazy import botocore


@lru_cache(maxsize=None)
def model(service: str) -> Any:
    """botocore's service model for ``service`` (``sagemaker``)."""
    return botocore.session.get_session().get_service_model(service)


def limits(service: str, operation: str, *path: str) -> dict[str, Any]:
    """The ``min``/``max``/``pattern``/``enum`` of one member of an operation's input, reached by
    member names (``key``/``value`` step into a map, ``member`` into a list):
    ``limits("sagemaker", "CreateTrainingJob", "HyperParameters")`` -> ``{"min": 0, "max": 100}``."""
    shape = model(service).operation_model(operation).input_shape
    for step in path:
        shape = getattr(shape, step) if step in ("key", "value", "member") else shape.members[step]
    found = dict(shape.metadata)
    if getattr(shape, "enum", None):
        found["enum"] = list(shape.enum)
    return found


def problems(service: str, operation: str, params: dict[str, Any]) -> list[str]:
    """Every way ``params`` breaks the model of ``operation``: ParamValidator's report (types,
    required members, minimums) first, then each ``max``, ``pattern`` and ``enum`` it skips, as
    ``Operation.Member.Path: what is wrong``."""
    shape = model(service).operation_model(operation).input_shape
    report = botocore.validate.ParamValidator().validate(params, shape)
    found = [report.generate_report()] if report.has_errors() else []
    _walk(params, shape, operation, found)
    return found


def _walk(value: Any, shape: Any, where: str, found: list[str]) -> None:
    meta, kind = shape.metadata, shape.type_name
    if kind == "structure" and isinstance(value, dict):
        for name, member in shape.members.items():
            if name in value:
                _walk(value[name], member, f"{where}.{name}", found)
    elif kind == "list" and isinstance(value, list):
        _size(len(value), meta, where, "entries", found)
        for i, item in enumerate(value):
            _walk(item, shape.member, f"{where}[{i}]", found)
    elif kind == "map" and isinstance(value, dict):
        _size(len(value), meta, where, "entries", found)
        for key, item in value.items():
            _walk(key, shape.key, f"{where} key {key!r}", found)
            _walk(item, shape.value, f"{where}[{key!r}]", found)
    elif kind == "string" and isinstance(value, str):
        _size(len(value), meta, where, "characters", found)
        if getattr(shape, "enum", None) and value not in shape.enum:
            shown = ", ".join(shape.enum[:8]) + (f", ... ({len(shape.enum)} in all)" if len(shape.enum) > 8 else "")
            found.append(f"{where}: {value!r} is not one of {shown}")
        pattern = meta.get("pattern")
        if pattern and not _matches(pattern, value):
            found.append(f"{where}: {value!r} does not match the pattern {pattern}")
    elif kind in ("integer", "long", "float", "double") and isinstance(value, (int, float)):
        if "max" in meta and value > meta["max"]:
            found.append(f"{where}: {value} is more than the {meta['max']} allowed")


def _size(size: int, meta: dict[str, Any], where: str, unit: str, found: list[str]) -> None:
    if "max" in meta and size > meta["max"]:
        found.append(f"{where}: {size} {unit}, more than the {meta['max']} allowed")


def _matches(pattern: str, value: str) -> bool:
    """The service's patterns are Java regular expressions matched against the whole value; the
    few Python cannot compile (``\\p{...}`` classes) are left to the service."""
    try:
        return re.fullmatch(pattern, value, re.DOTALL) is not None
    except re.error:
        return True
