"""The one secret policy: which keys hold secrets, and how every output hides their values.

A key is secret when its name contains ``password``, ``passwd``, ``secret``, ``token``,
``credential`` or ``key`` (except names that only look like it: ``keypoints``, ``max_tokens``, and
structural names such as S3's ``Key``).
Every view of a record (``job show``/``list``/``versions``/``diff``, ``--dry-run`` on any backend)
goes through :func:`mask`, and a code bundle carries YAML files with those values blanked
(:func:`redact_yaml`). A secret need not be written in a spec at all: ``${env:NAME}`` (see
:data:`jobs.core.contract.ENV_REF`) is stored as written and resolved only inside the job.
"""
from __future__ import annotations

import re
from typing import Any, Iterable

from jobs.core.contract import ENV_REF

MASK = "***"
SECRET_WORDS = ("password", "passwd", "secret", "token", "credential", "key")
# Names that contain a secret word without being a secret: removed before the check.
SAFE_PARTS = ("keypoint", "keyframe", "monkey", "hotkey", "tokenizer", "tokenize", "max_tokens", "num_tokens",
              "tokens_per")
# Whole names that are structure, not secrets: S3's and tags' ``Key``, a sort or primary key.
SAFE_NAMES = {"key", "keys", "s3key", "objectkey", "tagkey", "sortkey", "primarykey", "partitionkey", "keyname"}
# A value shorter than this is masked where its key is seen, but not searched for inside other
# text: replacing every "1" in a record would hide everything and protect nothing.
MIN_VALUE_LENGTH = 4
_YAML_LINE = re.compile(rb"^(\s*(?:-\s+)?[\"']?)([A-Za-z0-9_.\-]+)([\"']?\s*:[ \t]*)([^\s#][^#\r\n]*?)(\s*(?:#.*)?)$")


def is_secret(key: str) -> bool:
    """True when the name ``key`` says it holds a secret (``api_token``, ``db_password``, ``api_key``)."""
    name = str(key).lower()
    if re.sub(r"[^a-z0-9]", "", name) in SAFE_NAMES:
        return False
    for part in SAFE_PARTS:
        name = name.replace(part, "")
    return any(word in name for word in SECRET_WORDS)


def is_reference(value: Any) -> bool:
    """True for a ``${env:NAME}`` reference, which names a secret without holding it (also in
    the JSON-quoted form cloud requests carry hyperparameters in)."""
    if not isinstance(value, str):
        return False
    text = value.strip()
    if len(text) > 1 and text[0] == text[-1] == '"':
        text = text[1:-1]
    return bool(ENV_REF.fullmatch(text))


def secret_values(data: Any) -> list[str]:
    """The values held under secret keys anywhere in ``data`` (references left out)."""
    found: list[str] = []
    if isinstance(data, dict):
        for key, value in data.items():
            if is_secret(key) and value not in (None, "") and not isinstance(value, (dict, list)) and not is_reference(value):
                found.append(str(value))
            else:
                found += secret_values(value)
    elif isinstance(data, list):
        for value in data:
            found += secret_values(value)
    return found


def mask(data: Any, values: Iterable[str] = ()) -> Any:
    """A copy of ``data`` fit to show: every value under a secret key becomes ``***`` (an
    ``${env:NAME}`` reference stays, it holds nothing), and each of ``values`` plus every secret
    value found in ``data`` is replaced by ``***`` wherever it appears inside other text."""
    hidden = sorted({v for v in (*values, *secret_values(data)) if v and len(v) >= MIN_VALUE_LENGTH},
                    key=len, reverse=True)
    return _mask(data, hidden)


def _mask(data: Any, hidden: list[str]) -> Any:
    if isinstance(data, dict):
        return {k: MASK if is_secret(k) and v not in (None, "") and not isinstance(v, (dict, list))
                and not is_reference(v) else _mask(v, hidden) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_mask(v, hidden) for v in data]
    if isinstance(data, str):
        for secret in hidden:
            data = data.replace(secret, MASK)
    return data


def redact_yaml(data: bytes) -> bytes:
    """YAML text with the value of every ``secret_key: value`` line replaced by ``***``
    (a ``${env:NAME}`` reference is kept): what a code bundle carries of a spec or config."""
    lines = data.split(b"\n")
    for i, line in enumerate(lines):
        match = _YAML_LINE.match(line)
        if not match or not is_secret(match.group(2).decode(errors="replace")):
            continue
        value = match.group(4).strip().strip(b"\"'")
        if is_reference(value.decode(errors="replace")) or value in (b"|", b">", b"{", b"["):
            continue
        lines[i] = match.group(1) + match.group(2) + match.group(3) + b'"' + MASK.encode() + b'"' + match.group(5)
    return b"\n".join(lines)


def refuse_literal_secrets(spec: dict[str, Any], service: str) -> None:
    """Refuse a spec whose hyperparameters hold a secret as a literal value on a cloud service:
    the service shows every hyperparameter to anyone who may describe the job (SageMaker's
    DescribeTrainingJob and console, ModelArts' job details). A ``${env:NAME}`` reference holds
    nothing and passes; the message says how to use one."""
    from jobs.core.errors import SpecError

    found = sorted(key for key, value in (spec.get("hyperparameters") or {}).items()
                   if is_secret(key) and value not in (None, "") and not isinstance(value, (dict, list))
                   and not is_reference(value))
    if found:
        names = ", ".join(f"hyperparameters.{key}" for key in found)
        example = f"{found[0]}: ${{env:{found[0].upper()}}}"
        raise SpecError(f"{names}: a secret value would be visible to anyone who can describe the {service} job "
                        f"(its console and API show every hyperparameter); write a reference instead, like "
                        f"'{example}', and give the job that variable in its container's environment "
                        f"(the image, or the service's secret injection)")
