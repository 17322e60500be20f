"""What the training stages share: metric averaging, progress, checkpoints and evaluation logging."""
from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from o2o import metrics as M
from o2o.checkpoints import Checkpoints, PreemptionGuard, capture_rng
from o2o.config import ScheduleConfig
from o2o.errors import Diverged
from o2o.run_state import RunState
from o2o.tracking import Tracker

log = logging.getLogger("o2o")


class MetricAverager:
    """Sums metric tensors on the device; one host transfer per flush."""

    def __init__(self, state: dict | None = None):
        self._sums: dict[str, torch.Tensor] = dict(state["sums"]) if state else {}
        self._count = state["count"] if state else 0

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        for key, value in metrics.items():
            value = value.detach().float()
            self._sums[key] = self._sums[key] + value if key in self._sums else value.clone()
        self._count += 1

    def pop_means(self) -> dict[str, float]:
        if not self._count:
            return {}
        keys = list(self._sums)
        values = (torch.stack([self._sums[k] for k in keys]) / self._count).cpu().tolist()
        self._sums, self._count = {}, 0
        return dict(zip(keys, values))

    def state(self) -> dict:
        return {"sums": {k: v.cpu() for k, v in self._sums.items()}, "count": self._count}


@dataclass
class RunContext:
    """Everything a stage needs besides the agent and its data."""

    tracker: Tracker
    evaluator: Any  # o2o.stages.evaluate.Evaluator
    schedule: ScheduleConfig
    checkpoints: Checkpoints
    state: RunState  # what a checkpoint holds; the stages keep their progress in it
    guard: PreemptionGuard = field(default_factory=PreemptionGuard)
    progress: bool = True
    divergence_guard: bool = True
    threads: Any = None  # o2o.runtime.ThreadGovernor when threads are chosen automatically on a CPU
    calibration: Any = None  # o2o.stages.calibration.CalibrationProbe when the run has offline data

    def log_calibration(self, agent, phase: str, step: int) -> None:
        """The calibration diagnostics on the fixed offline batch, at every log flush."""
        if self.calibration is not None:
            self.tracker.log_metrics({M.calibration(phase, k): v for k, v in self.calibration(agent).items()}, step)

    def step_done(self) -> None:
        """Called after each gradient or env step: keeps an automatic thread count right for the machine's load."""
        if self.threads is not None:
            self.threads.tick()

    def _what_now(self) -> str:
        return (f"; the last finite checkpoint is kept in {self.checkpoints.folder} (lower the learning rates or the "
                "reward scale, or set divergence_guard=false to let it run)")

    def check_finite_metrics(self, metrics: dict[str, float], phase: str, step: int) -> None:
        """Stop at a non-finite training metric (losses, Q-values): the run has diverged."""
        bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
        if self.divergence_guard and bad:
            raise Diverged(f"{phase} training diverged by step {step}: {', '.join(bad)} not finite{self._what_now()}")

    @contextlib.contextmanager
    def progress_bar(self, total: int, desc: str, initial: int = 0):
        """A bar that moves every step (rate, ETA); log lines meanwhile print above it, not glued onto it."""
        # disable=None: quiet when output is not a terminal
        with logging_redirect_tqdm(), tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True,
                                           disable=None if self.progress else True) as bar:
            yield bar

    def check_finite_parameters(self, agent, phase: str) -> None:
        """Stop before a non-finite network is evaluated or saved."""
        bad = [name for name, p in agent.named_parameters() if not torch.isfinite(p).all()]
        if self.divergence_guard and bad:
            raise Diverged(f"{phase} training diverged by gradient step {agent.grad_steps}: parameters "
                           f"{', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} not finite{self._what_now()}")

    def evaluate(self, agent, phase: str, step: int) -> dict[str, float]:
        self.check_finite_parameters(agent, phase)
        results = self.evaluator(agent)
        self.state.eval_history.append({"phase": phase, "step": step, **results})
        self.tracker.log_metrics({M.evaluation(phase, k): v for k, v in results.items()}, step)
        log.info("%s eval @ %d: %s", phase, step, ", ".join(f"{k}={v:.3f}" for k, v in results.items()))
        return results

    def save(self, agent, stage: str, envs: list, rng: dict | None = None) -> None:
        """Checkpoint the run as it stands; metrics logged so far are sent first. Never saves non-finite weights."""
        self.check_finite_parameters(agent, stage)
        self.tracker.flush()
        self.state.stage, self.state.agent = stage, agent.checkpoint()
        self.state.rng = rng if rng is not None else capture_rng(envs)
        self.checkpoints.save(self.state)
