"""Checkpoints shared by every training task: save every N steps and at each epoch, resume from the
newest one (same step, same optimizer state), and save before exiting on SIGTERM so a stopped or
preempted (spot) job loses nothing.

A checkpoint is a folder ``ckpt-<step>/`` holding the Gluon parameters, the trainer's optimizer
states and ``meta.json``; it is written under a temporary name and renamed, so a job killed while
saving never leaves a half checkpoint that the next run would try to load.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PARAMS, STATES, META = "net.params", "trainer.states", "meta.json"
SIGTERM_EXIT = 143


@dataclass
class Checkpoint:
    path: Path
    step: int
    epoch: int
    extra: dict[str, Any] = field(default_factory=dict)


class Checkpointer:
    """Saves and restores a Gluon block plus its trainer in ``folder``, keeping the newest ``keep``."""

    def __init__(self, folder: Path, every: int = 0, keep: int = 3) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.every = every
        self.keep = keep
        self.stop_requested = False

    def install_sigterm(self) -> None:
        """On SIGTERM only raise a flag: the loop saves at the next step boundary, where the
        parameters and the optimizer state agree, then calls :meth:`exit_if_stopping`."""
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stop_requested", True))

    def due(self, step: int) -> bool:
        """True when step ``step`` should be checkpointed (every N steps, or a stop is pending)."""
        return self.stop_requested or (self.every > 0 and step > 0 and step % self.every == 0)

    def save(self, net: Any, trainer: Any, step: int, epoch: int, **extra: Any) -> Path:
        """Write ``ckpt-<step>`` atomically and drop the oldest beyond ``keep``."""
        final = self.folder / f"ckpt-{step:09d}"
        tmp = self.folder / f".tmp-ckpt-{step:09d}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        net.save_parameters(str(tmp / PARAMS))
        if trainer is not None:
            trainer.save_states(str(tmp / STATES))
        (tmp / META).write_text(json.dumps({"step": step, "epoch": epoch, **extra}))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in self.all()[:-self.keep] if self.keep > 0 else []:
            shutil.rmtree(old.path, ignore_errors=True)
        return final

    def all(self) -> list[Checkpoint]:
        """Complete checkpoints, oldest first."""
        found = []
        for path in sorted(self.folder.glob("ckpt-*")):
            meta = path / META
            if meta.exists() and (path / PARAMS).exists():
                data = json.loads(meta.read_text())
                found.append(Checkpoint(path, int(data.pop("step")), int(data.pop("epoch")), data))
        return found

    def latest(self) -> Checkpoint | None:
        found = self.all()
        return found[-1] if found else None

    def restore(self, net: Any, trainer: Any, ctx: Any = None) -> Checkpoint | None:
        """Load the newest checkpoint into ``net`` and ``trainer``; None when there is none."""
        latest = self.latest()
        if latest is None:
            return None
        net.load_parameters(str(latest.path / PARAMS), ctx=ctx)
        if trainer is not None and (latest.path / STATES).exists():
            trainer.load_states(str(latest.path / STATES))
        return latest

    def exit_if_stopping(self, net: Any, trainer: Any, step: int, epoch: int, **extra: Any) -> None:
        """After a SIGTERM: save and exit with 143 (128 + SIGTERM), so the backend sees a stop."""
        if not self.stop_requested:
            return
        path = self.save(net, trainer, step, epoch, **extra)
        print(f"SIGTERM: saved checkpoint {path.name} at step {step}, exiting", flush=True)
        raise SystemExit(SIGTERM_EXIT)
