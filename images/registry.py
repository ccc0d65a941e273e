"""What login and push share about registries: splitting an image reference, the error a user
sees, and retrying the failures that go away by themselves (a registry restarting, a reset
connection) while failing at once on the ones that do not (a wrong password)."""
from __future__ import annotations

from typing import Callable, TypeVar

from jobs.core import retry
from jobs.core.errors import FaceopsError

T = TypeVar("T")

DOCKER_HUB = "docker.io"
TRANSIENT = ("connection refused", "connection reset", "timeout", "i/o timeout", "eof", "503", "502",
             "504", "429", "too many requests", "no such host", "temporary failure", "tls handshake")
DENIED = ("unauthorized", "authentication required", "401", "denied", "incorrect username or password",
          "no basic auth credentials")


class RegistryError(FaceopsError):
    """A registry refused a login or push, or could not be reached; the message names it."""


def repo_and_tag(ref: str) -> tuple[str, str]:
    """``host:5000/team/train:gpu`` -> (``host:5000/team/train``, ``gpu``); no tag means ``latest``."""
    name, colon, tag = ref.rpartition(":")
    if not colon or "/" in tag:
        return ref, "latest"
    return name, tag


def split_ref(ref: str) -> tuple[str, str, str]:
    """``host:5000/team/train:gpu`` -> (``host:5000``, ``team/train``, ``gpu``).

    The first path part is a registry host when it has a dot or a port or is ``localhost``, as
    docker decides; otherwise the image lives on Docker Hub. A missing tag means ``latest``."""
    name, _, digest = ref.partition("@")
    slash = name.find("/")
    first = name[:slash] if slash > 0 else ""
    if first and ("." in first or ":" in first or first == "localhost"):
        registry, rest = first, name[slash + 1:]
    else:
        registry, rest = DOCKER_HUB, name
    repo, tag = repo_and_tag(rest)
    if not repo or not tag:
        raise FaceopsError(f"'{ref}' is not an image reference (expected [REGISTRY/]NAME[:TAG])")
    return registry, repo, digest or tag


def is_denied(message: str) -> bool:
    """True for errors that mean the credentials are wrong or missing: retrying cannot help."""
    lowered = message.lower()
    return any(word in lowered for word in DENIED)


def is_transient(message: str) -> bool:
    """True for errors that may go away on their own: the registry is down, busy or restarting."""
    lowered = message.lower()
    return not is_denied(message) and any(word in lowered for word in TRANSIENT)


def retrying(action: Callable[[], T], registry: str, attempts: int = 4, delay: float = 1.0,
             say: Callable[[str], None] | None = None) -> T:
    """Run ``action``, retrying with exponential backoff while it fails with a transient
    :class:`RegistryError`; the last failure is re-raised saying how often it was tried."""
    return retry.retrying(action, lambda exc: isinstance(exc, RegistryError) and is_transient(str(exc)),
                          attempts=attempts, delay=delay, say=(lambda line: say(f"{registry}: {line}")) if say else None,
                          give_up=lambda exc, tries: RegistryError(f"{exc} (gave up after {tries} attempts)"))
