"""Checkpoints that a killed or preempted job resumes from, exactly.

A checkpoint holds everything the next step depends on: networks, optimizer
(with the entropy and Lagrange multipliers), the online buffer, every random
number generator (Python, NumPy, torch, each env's), step counters, the
evaluation history and the MLflow run id. Files are written to a temporary
name and renamed, so a kill during a write leaves the previous one usable.
"""
from __future__ import annotations

import json
import logging
import os
import random
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from o2o.errors import CheckpointError, DiskFull, disk_full
from o2o.run_state import RunState

log = logging.getLogger("o2o")

LATEST, FINAL = "latest.pt", "final.pt"


def capture_rng(envs: list) -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "envs": [(env.unwrapped.np_random.bit_generator.state, env.action_space.np_random.bit_generator.state)
                      for env in envs]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict, envs: list) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for env, (env_state, space_state) in zip(envs, state["envs"]):
        env.unwrapped.np_random.bit_generator.state = env_state
        env.action_space.np_random.bit_generator.state = space_state


def save_atomic(payload: dict, path: Path) -> Path:
    """``payload`` to ``path`` through a temporary file: a kill or a full disk never leaves half a checkpoint."""
    return write_atomic(path, lambda tmp: torch.save(payload, tmp))


def write_atomic(path: Path, write) -> Path:
    """``write(tmp)``, then ``tmp`` renamed to ``path``; a full disk stops with one line (:class:`DiskFull`) and
    leaves no temporary file."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # torch reports a failed write as a RuntimeError, often without errno
        full = disk_full(err) or disk_nearly_full(path.parent)
        tmp.unlink(missing_ok=True)
        if not full:
            raise
        raise disk_full_error(path) from None
    return path


def disk_nearly_full(folder: Path) -> bool:
    """Less than 1 MiB left: what a write that failed without saying why most likely met."""
    import shutil

    try:
        return shutil.disk_usage(folder).free < 2**20
    except OSError:
        return False


def disk_full_error(path: Path) -> DiskFull:
    import shutil

    free = shutil.disk_usage(path.parent if path.parent.exists() else path.anchor).free
    kept = sorted(p for p in path.parent.glob("*.pt")) if path.parent.is_dir() else []
    keep = f"the last good checkpoint {kept[-1]} is kept" if kept else "no checkpoint was written before"
    return DiskFull(f"no space left to write {path} ({free / 2**20:.1f} MiB free on its disk): {keep}; free space, "
                    "then run the same command again to resume")


def checkpoint_globals() -> list:
    """What a checkpoint holds besides tensors and Python's plain types: numpy arrays (random states, buffers). A
    checkpoint is read by torch's weights-only unpickler with these allowed and nothing else, so a file that names
    any other callable is refused instead of run."""
    import importlib

    import numpy as np

    multiarray = importlib.import_module("numpy._core.multiarray" if hasattr(np, "_core") else "numpy.core.multiarray")
    dtypes = [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")]
    return [multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype, *dtypes]


class Checkpoints:
    """The checkpoint files of one run directory."""

    def __init__(self, run_dir: Path):
        self.folder = Path(run_dir) / "checkpoints"

    def load(self) -> RunState | None:
        """The final checkpoint if the run finished, else the latest one, else None."""
        for name in (FINAL, LATEST):
            path = self.folder / name
            if path.exists():
                try:
                    with torch.serialization.safe_globals(checkpoint_globals()):
                        return RunState.from_dict(torch.load(path, map_location="cpu", weights_only=True))
                except Exception as err:  # truncated, not a checkpoint, from an incompatible version
                    raise CheckpointError(f"checkpoint {path} cannot be read ({type(err).__name__}): delete it to "
                                          "start the run over, or give this job another run directory") from None
        return None

    def save(self, state: RunState) -> Path:
        path = save_atomic(state.to_dict(), self.folder / (FINAL if state.finished else LATEST))
        progress = {"stage": state.stage, "grad_steps": (state.agent or {}).get("grad_steps"),
                    "env_steps": state.online.env_steps if state.online else 0}
        write_atomic(self.folder / "progress.json", lambda tmp: tmp.write_text(json.dumps(progress)))
        return path


class PreemptionGuard:
    """Turns the scheduler's preemption signal into a request the training loops honour at a safe point.

    Under submitit the job already has a USR2 handler that requeues the job
    and exits. This guard puts itself in front: the signal only sets
    ``requested``; the loop saves a checkpoint and calls :meth:`finish`, which
    hands over to the previous handler (requeue and exit), or exits.
    """

    SIGNALS = (signal.SIGUSR2,)

    def __init__(self):
        self.requested = False
        self._signum = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "PreemptionGuard":
        for signum in self.SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame) -> None:
        log.warning("received %s: saving a checkpoint at the next safe point", signal.Signals(signum).name)
        self.requested, self._signum = True, signum

    def finish(self) -> None:
        """After the checkpoint: requeue through the previous handler, or exit."""
        previous = self._previous.get(self._signum)
        self.__exit__()
        if callable(previous):
            previous(self._signum, None)
        sys.exit(128 + (self._signum or 0))


INTERRUPTED = threading.Event()  # Ctrl-C was pressed (catch_interrupts)


def catch_interrupts() -> None:
    """Ctrl-C raises KeyboardInterrupt wherever the main thread is; inside a finalizer (SQLAlchemy's weakref callbacks
    run during MLflow calls) Python swallows it and the run goes on. The handler also sets a flag that the training
    loop checks at every step (raise_if_interrupted), so one Ctrl-C always stops the run, and the swallowed one
    prints nothing (measured: a full suite on a loaded machine hit it once, as an "Exception ignored" traceback
    before the run's one line). A SIGINT
    that is ignored or handled by someone else (a background job, an embedding program) is left as it is."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return

    def interrupt(signum, frame):
        INTERRUPTED.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    sys.unraisablehook = _quiet_swallowed_interrupt(sys.unraisablehook)


def _quiet_swallowed_interrupt(previous):
    """Python reports an exception it cannot raise (one from a finalizer) through sys.unraisablehook, which prints
    "Exception ignored" and a traceback. A Ctrl-C caught there is not lost (the flag stops the loop at its next step),
    so it prints nothing: the run ends with its one line. Anything else goes to the previous hook."""
    def hook(unraisable):
        if isinstance(unraisable.exc_value, KeyboardInterrupt) and INTERRUPTED.is_set():
            return
        previous(unraisable)

    return hook


def raise_if_interrupted() -> None:
    """The loop's check: a Ctrl-C whose KeyboardInterrupt was swallowed stops the run here."""
    if INTERRUPTED.is_set():
        raise KeyboardInterrupt


class Preempted(Exception):
    """Raised inside a stage after it saved its checkpoint because of a preemption request."""
