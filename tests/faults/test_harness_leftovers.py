"""Item 8 of the second fault run, the tests' own part: the private Docker engine leaves no
network-namespace mount and no folder in the temporary folder once it stops."""
from __future__ import annotations

import pytest

from tests.harness.docker import mounts_under, running_docker_engine


def test_docker_engine_leaves_no_mount_behind():
    try:
        engine_context = running_docker_engine()
        engine = engine_context.__enter__()
    except RuntimeError as exc:
        pytest.skip(f"no private Docker engine here: {exc}")
    root = engine.root
    try:
        assert engine.client().ping()
    finally:
        engine_context.__exit__(None, None, None)
    assert not mounts_under(root) and not root.exists()
