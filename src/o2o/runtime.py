"""Where a run computes: seeds, the device, the precision check and torch's CPU threads.

``threads=0`` (the default) chooses the thread count. Measured on a 2-core
machine (``scripts/bench_update.py --threads 1|2``, Cal-QL update, door-sized
observations; docs/speed.md): on idle cores two threads beat one by 1.2x
(32-wide, batch 32), 1.4x (64, batch 256), 1.5x (128, batch 256) and 1.8-1.9x
(256x3 and 512x3, batch 256); with the cores busy one thread beats two at
every size (3.4 vs 1.7 updates/s at 256x3), and a tiny-network job with
torch's default ran ~100x slower than with one thread (issue 12): OpenMP
threads beyond the free cores spin against the other jobs. So: one thread
for small updates (little to gain, everything to lose), for GPU runs (the
update is on the GPU; the CPU steps the env) and when the usable cores are
busy; otherwise the free cores. While a run
trains, :class:`ThreadGovernor` drops to one thread when the cores become
busy and returns when they free up. The choice and its reason go to the log
and to MLflow (tags ``torch_threads``, ``torch_threads_reason``).
"""
from __future__ import annotations

import logging
import os
import platform
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from o2o.errors import ConfigError

log = logging.getLogger("o2o")
THREADS_TAG, THREADS_REASON_TAG = "torch_threads", "torch_threads_reason"  # the thread count and why (the governor updates them)

# batch x (widest critic layer)^2 below which two threads gained at most 1.4x on idle cores (module docstring)
# and bf16 autocast on an AMX CPU at most ~1x (choose_precision)
SMALL_UPDATE = 256 * 128 * 128
RECHECK_SECONDS = 30.0  # a collapse under new contention lasts at most this long (a choice, not a measurement)


def is_small_update(batch_size: int, critic_hidden: list[int]) -> bool:
    return batch_size * max(critic_hidden) ** 2 < SMALL_UPDATE


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (SLURM, taskset, cpusets) within any cgroup quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def free_cores(cores: int) -> int:
    """Cores not already busy, by the 1-minute load average (processes running or waiting for a core)."""
    try:
        busy = os.getloadavg()[0]
    except OSError:
        return cores
    return max(0, int(cores - busy + 0.5))


def choose_threads(batch_size: int, critic_hidden: list[int], device: torch.device) -> tuple[int, str]:
    """The thread count for ``threads=0``, and why."""
    if device.type != "cpu":
        return 1, f"the update runs on {device.type}"
    if is_small_update(batch_size, critic_hidden):
        return 1, f"a small update (batch {batch_size}, width {max(critic_hidden)}): more threads gain little"
    cores = usable_cores()
    free = free_cores(cores)
    if free <= 1:
        return 1, f"{cores} usable cores, {cores - free} busy: one thread cannot be starved"
    return free, f"{cores} usable cores, {free} free"


class ThreadGovernor:
    """Keeps an automatic thread count right while the run trains: called often, it looks every
    ``RECHECK_SECONDS`` and moves to what :func:`choose_threads` says now (one thread on busy cores)."""

    def __init__(self, batch_size: int, critic_hidden: list[int], threads: int, on_change=None):
        self.batch_size, self.critic_hidden, self.threads = batch_size, critic_hidden, threads
        self.on_change = on_change
        self._next = time.monotonic() + RECHECK_SECONDS

    def tick(self) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + RECHECK_SECONDS
        threads, why = choose_threads(self.batch_size, self.critic_hidden, torch.device("cpu"))
        if threads != self.threads:
            log.warning("torch threads %d -> %d (%s)", self.threads, threads, why)
            torch.set_num_threads(threads)
            self.threads = threads
            if self.on_change is not None:
                self.on_change(threads, why)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but torch sees no CUDA GPU here: use device=auto or device=cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name} is not a device torch knows: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device={name} but torch sees {torch.cuda.device_count()} CUDA GPU(s) here, numbered from "
                          "0: use device=cuda or one of them")
    return device


def machine() -> str:
    """The CPU model and its core count, and the GPU where torch sees one: what a speed figure or a study page names
    (the cores a job may use are its ``torch_threads`` tag)."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{model}, {os.cpu_count()} cores{gpu}"


def cpu_has_native_bf16() -> bool:
    """AMX or AVX512-BF16; without them CPU bf16 matmuls are emulated and far slower than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return True  # cannot tell: do not warn
    return "amx_bf16" in flags or "avx512_bf16" in flags


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def choose_precision(name: str, device: torch.device, batch_size: int, critic_hidden: list[int]) -> tuple[str, str]:
    """``precision=auto``: bf16 autocast where the hardware computes it natively, fp32 elsewhere; and why.

    On a CPU with AMX, bf16 paid off only for updates that are not small (``scripts/bench_update.py``, one
    thread: 2.9x fp32 at 3x256 and batch 256, about 1x at 2x64 and batch 256, 0.71x at 2x32 and batch 32,
    where autocast costs more than it saves), so small updates stay in fp32 there."""
    if name != "auto":
        return name, "set by precision="
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported()
        return ("bf16", "the GPU computes bf16 natively") if native else ("fp32", "the GPU has no native bf16")
    if not cpu_has_native_bf16():
        return "fp32", "the CPU has neither AMX nor AVX512-BF16 (bf16 would be emulated, ~36x slower)"
    if is_small_update(batch_size, critic_hidden):
        return "fp32", f"a small update (batch {batch_size}, width {max(critic_hidden)}): bf16 autocast gains nothing"
    return "bf16", "the CPU has AMX or AVX512-BF16"


@dataclass
class Runtime:
    device: torch.device
    threads: int
    threads_why: str
    precision: str  # fp32 | bf16: what the agent computes in
    precision_why: str
    compile: bool = False  # the update as one compiled graph (o2o.agents.compiled)
    compile_why: str = ""

    def tags(self) -> dict[str, str]:
        """What MLflow records of the choices (the config keeps what was asked: ``auto``, ``0``)."""
        return {THREADS_TAG: str(self.threads), THREADS_REASON_TAG: self.threads_why,
                "precision_used": self.precision, "precision_reason": self.precision_why,
                "compile_used": str(self.compile).lower(), "compile_reason": self.compile_why}


# Updates a run must plan for compiling to pay: measured on a 2-core AMD EPYC at the quickstart sizes (64x64,
# batch 256, fp32, one thread; python scripts/bench_update.py --obs-dim 6 --act-dim 2 --hidden 64 --layers 2
# --modes eager compiled --precision fp32 --threads 1 --steps 200): eager 58.2 and compiled 118.8 updates/s, 16.6 s
# to compile one variant of the update, so one variant repays itself after 16.6 / (1/58.2 - 1/118.8) = 1,900
# updates; a run compiles about two (offline and online, or with and without the actor step). Larger networks
# repay sooner (a compiled update saves more per step; docs/speed.md).
COMPILE_BREAK_EVEN_UPDATES = 4_000


def choose_compile(asked, device: torch.device, planned_updates: int) -> tuple[bool, str]:
    """``compile``: true / false as asked; ``auto``: compile where it can run and pays off, with the reason."""
    import importlib.util
    import shutil

    asked = str(asked).lower()
    if asked in ("true", "false"):
        return asked == "true", "set by compile="
    if device.type == "cpu":
        if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
            return False, "no C++ compiler on this machine (inductor builds its CPU kernels with one)"
    elif device.type == "cuda":
        if importlib.util.find_spec("triton") is None:
            return False, "triton is not installed (inductor's GPU kernels)"
    else:
        return False, f"torch.compile is not used on {device.type}"
    if planned_updates < COMPILE_BREAK_EVEN_UPDATES:
        return False, (f"{planned_updates} planned updates, fewer than the {COMPILE_BREAK_EVEN_UPDATES} that repay "
                       "compiling (measured)")
    return True, f"{planned_updates} planned updates repay compiling (break-even about {COMPILE_BREAK_EVEN_UPDATES})"


def setup_runtime(cfg, started_precision: str | None = None) -> Runtime:
    """Seeds, the device, threads and precision (a :class:`ThreadGovernor` keeps an automatic thread count right
    while training). ``started_precision``: what a resumed run started in, which ``precision=auto`` keeps."""
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    if cfg.threads > usable_cores():
        raise ConfigError(f"threads={cfg.threads} is more than the {usable_cores()} cores this job may use (more "
                          f"threads than cores only contend): use threads=0 (chosen per run) or at most {usable_cores()}")
    if cfg.threads:
        threads, why = cfg.threads, "set by threads="
    else:
        threads, why = choose_threads(cfg.buffer.batch_size, cfg.algo.critic_hidden, device)
    torch.set_num_threads(threads)
    log.info("torch uses %d CPU thread%s (%s)", threads, "s" * (threads > 1), why)
    precision, precision_why = choose_precision(cfg.precision, device, cfg.buffer.batch_size, cfg.algo.critic_hidden)
    if cfg.precision == "auto" and started_precision and started_precision != precision:
        precision_why = (f"the precision this run started in, kept on resuming (this machine would choose {precision}: "
                         f"{precision_why})")
        precision = started_precision
    log.info("precision %s (%s)", precision, precision_why)
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        log.warning("precision=bf16 on a CPU without AMX or AVX512-BF16: matmuls are emulated and much slower "
                    "than fp32 (measured 0.2 vs 7 updates/s at 3x256 on an AVX2 CPU); use precision=fp32 here")
    from o2o.config import planned_updates

    compiled, compile_why = choose_compile(cfg.compile, device, planned_updates(cfg))
    log.info("update %s (%s)", "compiled" if compiled else "eager", compile_why)
    return Runtime(device, threads, why, precision, precision_why, compiled, compile_why)
