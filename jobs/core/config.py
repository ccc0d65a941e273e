"""Where faceops keeps its state and how it reads user configuration.

State lives under ``$FACEOPS_HOME`` (default ``~/.faceops``): ``store.sqlite``, one folder per job
version, the code bundles, and ``config.yaml`` for settings such as the S3 endpoint. Environment
variables always win over the file so CI and containers can configure without writing files.
"""
from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from jobs.core.errors import SpecError


STORE_NAME = "store.sqlite"
# What a state folder's bundles/ holds: finished bundles and the temporary files of ones being written.
BUNDLE_NAME = re.compile(r"^(?:[0-9a-f]{64}\.tar\.gz|\.bundle\..+\.tmp)$")


def home_path() -> Path:
    """The faceops state folder, without creating it: for reads, which never create state."""
    return Path(os.environ.get("FACEOPS_HOME") or Path.home() / ".faceops").expanduser()


def home() -> Path:
    """Return the faceops state folder, creating it on first use (for writers)."""
    path = home_path()
    path.mkdir(parents=True, exist_ok=True)
    return path


def is_state_folder(path: Path) -> bool:
    """True for ``$FACEOPS_HOME`` or any other faceops state folder (one holding a store, or a
    ``bundles`` folder of code bundles only, as a first submit leaves before its store exists):
    its files change under every submit and are never a job's code."""
    try:
        if (path / STORE_NAME).exists() or path.resolve() == home().resolve():
            return True
        bundles = [entry.name for entry in os.scandir(path / "bundles")] if (path / "bundles").is_dir() else []
    except OSError:
        return False
    return bool(bundles) and all(BUNDLE_NAME.match(name) for name in bundles)


def load_config() -> dict[str, Any]:
    """Read ``$FACEOPS_HOME/config.yaml`` (empty dict when absent).

    Cached by path and modification time: storage asks for settings on every ranged read.
    A malformed file is a usage error the user must fix, so it raises ``SpecError`` naming the file.
    """
    path = home_path() / "config.yaml"
    try:
        mtime = path.stat().st_mtime_ns
    except FileNotFoundError:
        return {}
    return _read_config(str(path), mtime)


@lru_cache(maxsize=8)
def _read_config(path: str, mtime: int) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping at the top level")
    return data


def setting(section: str, key: str, env: tuple[str, ...] = (), default: Any = None) -> Any:
    """Look a setting up in the environment variables ``env`` (first set wins), then in
    ``config.yaml`` under ``section.key``, then fall back to ``default``."""
    for name in env:
        value = os.environ.get(name)
        if value:
            return value
    return (load_config().get(section) or {}).get(key, default)
