"""The one secret policy: which keys hold secrets, and how every output hides their values.

A key is secret when its name contains ``password``, ``passwd``, ``secret``, ``token``,
``credential`` or ``key`` (except names that only look like it: ``keypoints``, ``max_tokens``, and
structural names such as S3's ``Key``).
Every view of a record (``job show``/``list``/``versions``/``diff``, ``--dry-run`` on any backend)
goes through :func:`mask`, and a code bundle carries YAML files with those values blanked
(:func:`redact_yaml`). A secret need not be written in a spec at all: ``${env:NAME}`` (see
:data:`jobs.core.contract.ENV_REF`) is stored as written and resolved only inside the job.

A literal secret given to a local version never reaches its record either (:func:`hide`): the
record keeps a marker ``${secret:ID}`` and the value goes to ``secrets.json`` in the version's
folder, readable by its owner only, from which the supervisor gives it to the job
(:func:`reveal`) and a rerun or resume takes it again. ``ID`` is an HMAC of the value under a
random key kept in ``$FACEOPS_HOME/secrets.key`` (0600), so ``job diff`` sees that a secret
changed while nobody holding the store alone can test guesses of a short secret against it.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import tempfile
from functools import lru_cache
from pathlib import Path
from secrets import token_bytes
from typing import Any, Iterable

from jobs.core.config import home
from jobs.core.contract import ENV_REF
from jobs.core.errors import SpecError
from jobs.core.files import atomic_write, write_once

MASK = "***"
# Where a local version's literal secrets live (in its folder), and the marker its record holds.
SECRETS_FILE = "secrets.json"
SECRET_REF = re.compile(r"\$\{secret:([0-9a-f]{16})\}")
KEY_FILE = "secrets.key"
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


@lru_cache(maxsize=4096)  # views ask it of every key of every record (100 versions: ~40,000 calls)
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
            if is_literal(key, value):
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
        return {k: MASK if is_literal(k, v) else _mask(v, hidden) for k, v in data.items()}
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


def refuse_literal_secrets(spec: dict[str, Any], service: str, shared_store: str | None = None) -> None:
    """Refuse a spec whose hyperparameters hold a secret as a literal value on a cloud service:
    the service shows every hyperparameter to anyone who may describe the job (SageMaker's
    DescribeTrainingJob and console, ModelArts' job details). With ``shared_store`` (where a team
    store is) the same holds for any backend: the team reads every record, and a rerun on
    another machine could not find the value. A ``${env:NAME}`` reference holds nothing and
    passes; the message says how to use one."""
    found = sorted(key for key, value in (spec.get("hyperparameters") or {}).items() if is_literal(key, value))
    if found:
        names = ", ".join(f"hyperparameters.{key}" for key in found)
        example = f"{found[0]}: ${{env:{found[0].upper()}}}"
        if shared_store:
            raise SpecError(f"{names}: a literal secret never enters the shared store {shared_store} (everyone using "
                            f"it reads every version, and a rerun elsewhere could not find the value); write a "
                            f"reference instead, like '{example}', and set that variable where the job runs")
        raise SpecError(f"{names}: a secret value would be visible to anyone who can describe the {service} job "
                        f"(its console and API show every hyperparameter); write a reference instead, like "
                        f"'{example}', and give the job that variable in its container's environment "
                        f"(the image, or the service's secret injection)")


def is_literal(key: str, value: Any) -> bool:
    """True when ``value`` under ``key`` is a secret written out (not a reference, not empty)."""
    return (is_secret(key) and value not in (None, "") and not isinstance(value, (dict, list))
            and not is_reference(value))


def hide(hyperparameters: dict[str, Any], known: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(hyperparameters fit for a record, {ID: value} for the secrets file)``: every literal
    secret (at any depth) becomes ``${secret:ID}``. A marker already there (a rerun keeps its
    parent's spec) stays as it is and takes its value from ``known``, the parent's secrets file;
    one missing from it is a SpecError that names the key and says how to give the value again."""
    values: dict[str, Any] = {}

    def walk(data: Any, path: str) -> Any:
        if isinstance(data, dict):
            return {k: leaf(k, v, f"{path}.{k}") if not isinstance(v, (dict, list)) else walk(v, f"{path}.{k}")
                    for k, v in data.items()}
        if isinstance(data, list):
            return [walk(v, f"{path}[{i}]") for i, v in enumerate(data)]
        return data

    def leaf(key: str, value: Any, path: str) -> Any:
        marker = SECRET_REF.fullmatch(value) if isinstance(value, str) else None
        if marker:
            if marker.group(1) not in known:
                raise SpecError(f"{path}: its value was kept in the parent version's {SECRETS_FILE}, which does "
                                f"not have it; give it again with --set {path.split('.', 1)[1]}=... "
                                f"(or better a ${{env:NAME}} reference)")
            values[marker.group(1)] = known[marker.group(1)]
            return value
        if not is_literal(key, value):
            return value
        ident = hmac.new(_home_key(), json.dumps(value).encode(), hashlib.sha256).hexdigest()[:16]
        values[ident] = value
        return f"${{secret:{ident}}}"

    return walk(hyperparameters, "hyperparameters"), values


def reveal(data: Any, values: dict[str, Any]) -> Any:
    """``data`` with every ``${secret:ID}`` marker replaced by its value: what the job receives.
    A marker without a value is a SpecError naming where it is (never a value)."""
    if isinstance(data, dict):
        return {k: reveal(v, values) for k, v in data.items()}
    if isinstance(data, list):
        return [reveal(v, values) for v in data]
    marker = SECRET_REF.fullmatch(data) if isinstance(data, str) else None
    if marker is None:
        return data
    if marker.group(1) not in values:
        raise SpecError(f"a secret hyperparameter has no value in this version's {SECRETS_FILE}; rerun the version "
                        "giving it with --set")
    return values[marker.group(1)]


def write_secrets(folder: Path, values: dict[str, Any]) -> None:
    """Keep a version's literal secrets in its folder, readable by its owner only (none: no file)."""
    if values:
        atomic_write(Path(folder) / SECRETS_FILE, json.dumps(values), mode=0o600)


def read_secrets(folder: Path) -> dict[str, Any]:
    """The ``{ID: value}`` a version kept in its folder ({} when it kept none)."""
    path = Path(folder) / SECRETS_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def _home_key() -> bytes:
    """The random HMAC key of this ``$FACEOPS_HOME``, made on first use (0600, as mkstemp makes
    files); two first submits at once agree on the key (see :func:`write_once`)."""
    return write_once(home() / KEY_FILE, token_bytes(32))
