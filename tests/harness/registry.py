"""A private image registry for tests and benchmarks: Debian's docker-registry (distribution
2.8) on a free loopback port with bcrypt htpasswd auth and a random password."""
from __future__ import annotations

import json
import secrets
import shutil
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tests.harness.net import free_port, port_open
from tests.harness.process import running


@dataclass(frozen=True)
class Registry:
    """A private registry: ``host`` (127.0.0.1:PORT) and the one user its htpasswd file allows."""

    host: str
    user: str
    password: str
    htpasswd: Path
    storage: Path

    def add_user(self, user: str, password: str) -> None:
        """Allow another login (the registry re-reads its htpasswd file when it changes)."""
        subprocess.run(["htpasswd", "-iB", str(self.htpasswd), user], input=password.encode(),
                       check=True, capture_output=True)


@contextmanager
def running_registry(root: Path) -> Iterator[Registry]:
    """The registry with its config, htpasswd file, storage and log under ``root``, stopped
    afterwards. RuntimeError says why it cannot start."""
    for program in ("docker-registry", "htpasswd"):
        if shutil.which(program) is None:
            raise RuntimeError(f"{program} not found (Debian docker-registry, apache2-utils; scripts/setup-dev.sh)")
    registry = Registry(host=f"127.0.0.1:{free_port()}", user="faceops", password=secrets.token_urlsafe(16),
                        htpasswd=root / "htpasswd", storage=root / "storage")
    subprocess.run(["htpasswd", "-icB", str(registry.htpasswd), registry.user], input=registry.password.encode(),
                   check=True, capture_output=True)
    config = root / "config.yml"
    config.write_text(json.dumps({  # YAML is a superset of JSON
        "version": 0.1, "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(registry.storage)}, "delete": {"enabled": True}},
        "http": {"addr": registry.host, "secret": secrets.token_hex(16)},
        "auth": {"htpasswd": {"realm": "faceops-test", "path": str(registry.htpasswd)}},
    }))
    with running(["docker-registry", "serve", str(config)], root / "registry.log", lambda: port_open(registry.host),
                 timeout=30.0):
        yield registry
