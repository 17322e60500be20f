"""What the training stages share: one gradient step (:class:`Learner`), metric averaging, and the loop skeleton
(:class:`PhaseLoop`) that offline pre-training, both fine-tuning schedules and retraining run: after each unit of
work it logs, evaluates, checkpoints and honours preemption, each on its own :class:`Ticker`."""
from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from o2o import metrics as M
from o2o.buffers import Batch
from o2o.checkpoints import Checkpoints, Preempted, PreemptionGuard, capture_rng, raise_if_interrupted
from o2o.config import ScheduleConfig
from o2o.errors import Diverged
from o2o.run_state import RunState
from o2o.tracking import Tracker

log = logging.getLogger("o2o")


def relabelled(sample: Callable[[], Batch], reward_shift: float = 0.0,
               terminal_reward: Optional[float] = None) -> Callable[[], Batch]:
    """``sample`` with each batch's rewards shifted by ``reward_shift`` and, with ``terminal_reward``, its transitions
    terminal exactly where the (shifted) reward equals it: OOO's Kitchen batches (MaxSobolMark/OOO,
    conservative_sac_main.py and conservative_sac_exploitation.py: ``batch["dones"] = rewards == 0``, on rewards
    re-biased from the exploration run's -5 to -4 when retraining)."""
    if not reward_shift and terminal_reward is None:
        return sample

    def draw() -> Batch:
        batch = sample()
        rewards = batch.rewards + reward_shift if reward_shift else batch.rewards
        dones = batch.dones if terminal_reward is None else (rewards == terminal_reward).to(batch.dones.dtype)
        return batch._replace(rewards=rewards, dones=dones)

    return draw


def widened(bounds, rewards) -> list:
    """A reward range [min, max] (None: that side open), each side widened by ``rewards`` where they pass it (OOO's
    exploration runs, conservative_sac_main.py: min_q and max_q widened after each round of online episodes)."""
    low, high = bounds
    if rewards is not None and len(rewards):
        low = None if low is None else min(low, float(rewards.min()))
        high = None if high is None else max(high, float(rewards.max()))
    return [low, high]


def target_bounds(bounds, gamma: float) -> Optional[tuple[float, float]]:
    """A bound on the TD target, [min, max] / (1 - gamma) from a reward range (None: that side open); None when
    ``bounds`` is None."""
    if bounds is None:
        return None
    low, high = bounds
    return (-math.inf if low is None else low / (1 - gamma), math.inf if high is None else high / (1 - gamma))


class MetricAverager:
    """Sums metric tensors on the device; one host transfer per flush. Each metric is averaged over the updates that
    emitted it: a delayed actor's loss (RLPD's one actor step per 20 critic steps) is its own mean, not diluted by the
    updates that had none."""

    def __init__(self, state: dict | None = None):
        self._sums: dict[str, torch.Tensor] = dict(state["sums"]) if state else {}
        # a checkpoint from before per-key counts: one count for every key (so the first flush after resuming from it
        # still dilutes a metric that only some updates emit; later flushes do not)
        if state and "counts" not in state:
            state = {**state, "counts": {key: state["count"] for key in self._sums}}
        self._counts: dict[str, int] = dict(state["counts"]) if state else {}

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        for key, value in metrics.items():
            value = value.detach().float()
            count = 1
            if key in M.DATA_DEPENDENT:  # NaN where the batch had no row with a known V_ref: not counted (no sync)
                value, count = torch.nan_to_num(value, nan=0.0), torch.isfinite(value).float()
            if key in self._sums:
                self._sums[key] = self._sums[key] + value
                self._counts[key] = self._counts[key] + count
            else:
                self._sums[key], self._counts[key] = value.clone(), count

    def pop_means(self) -> dict[str, float]:
        if not self._sums:
            return {}
        keys = list(self._sums)
        counts = torch.tensor([float(self._counts[k]) for k in keys])
        values = (torch.stack([self._sums[k] for k in keys]).cpu() / counts).tolist()
        self._sums, self._counts = {}, {}
        return dict(zip(keys, values))

    def state(self) -> dict:
        return {"sums": {k: v.cpu() for k, v in self._sums.items()}, "counts": dict(self._counts)}


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
        fix = "lower the learning rates or the reward scale, or set divergence_guard=false to let it run"
        kept = sorted(p.name for p in self.checkpoints.folder.glob("*.pt")) if self.checkpoints.folder.is_dir() else []
        if not kept:
            return f"; no checkpoint was written before it ({fix})"
        return f"; the last finite checkpoint is kept: {self.checkpoints.folder / kept[-1]} ({fix})"

    def check_finite_metrics(self, metrics: dict[str, float], phase: str, step: int) -> None:
        """Stop at a non-finite training metric (losses, Q-values): the run has diverged."""
        # online, a V_ref mean is NaN when no update of the window saw a row whose V_ref is known yet (the step
        # schedule's first episode); a learned V_ref that turns NaN stops the run where it labels (EpisodeLabeller)
        exempt = M.DATA_DEPENDENT if phase == M.ONLINE else ()
        bad = sorted(k for k, v in metrics.items() if not math.isfinite(v) and k not in exempt)
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


class Learner:
    """One gradient step on a sampled batch; with an intrinsic reward (o2o.exploration), the batch's reward becomes
    ``r + coef * bonus`` and the bonus's own model (RND's predictor) takes its step on the same batch."""

    def __init__(self, agent, sample: Callable[[], Batch], bonus=None, coef: float = 0.0):
        self.agent, self.sample, self.bonus, self.coef = agent, sample, bonus, coef

    def update(self) -> dict[str, torch.Tensor]:
        batch = self.sample()
        if self.bonus is None:
            return self.agent.update(batch)
        intrinsic = self.coef * self.bonus.reward(batch, self.agent)
        self.bonus.update(batch)
        metrics = self.agent.update(batch._replace(rewards=batch.rewards + intrinsic))
        return {**metrics, **dict(zip(M.INTRINSIC_KEYS, (intrinsic.mean(), intrinsic.std(), intrinsic.max())))}


class Ticker:
    """When a periodic action is due, at points of a growing count (gradient or env steps): at every multiple of
    ``interval`` (``anchored``), or ``interval`` after it last fired; never when ``interval`` is 0. The next due
    point (anchored) or the last firing (not) lives in ``holder.<name>``, so a checkpoint of the holder keeps it."""

    def __init__(self, interval: int, holder: Any = None, name: str = "next", anchored: bool = True):
        self.interval, self.anchored, self.name = interval, anchored, name
        self.holder = holder if holder is not None else _Holder(interval if anchored else 0)

    @classmethod
    def after(cls, interval: int, position: int) -> "Ticker":
        """An anchored ticker for a loop that stands at ``position`` (a resumed one): next due at the next multiple."""
        ticker = cls(interval)
        if interval:
            ticker.holder.next = (position // interval + 1) * interval
        return ticker

    def due(self, at: int) -> bool:
        mark = getattr(self.holder, self.name)
        return self.interval > 0 and (at >= mark if self.anchored else at - mark >= self.interval)

    def fired(self, at: int) -> None:
        if not self.anchored:
            setattr(self.holder, self.name, at)
        elif self.interval:
            mark = getattr(self.holder, self.name)
            while mark <= at:
                mark += self.interval
            setattr(self.holder, self.name, mark)


@dataclass
class _Holder:
    next: int


class PhaseLoop:
    """The skeleton of a training phase. The phase adds each update's metrics (:meth:`add`) and calls :meth:`point`
    after each unit of work (a gradient step offline, an episode or its updates online), which does, in this
    order: flush the averaged training metrics to MLflow (``log``, metrics at ``at`` in ``unit``s), evaluate (``evaluate``, and always at the end),
    run the phase's own periodic work (``hooks``), checkpoint (``checkpoint``, never at the end: the stage's end
    saves), and honour a preemption request (a checkpoint, then :class:`~o2o.checkpoints.Preempted`).

    ``save(rng)`` writes the phase's checkpoint; ``describe(metrics)`` gives the log line and the bar's postfix of
    a flush; ``extra()`` adds metrics to each flush; ``progress.results`` keeps the latest evaluation."""

    def __init__(self, ctx: RunContext, agent, phase: str, progress, *, log: Ticker, evaluate: Ticker,
                 checkpoint: Ticker, save: Callable[[Optional[dict]], None],
                 describe: Callable[[dict], tuple[str, dict]], extra: Callable[[], dict] = dict,
                 updates_since_log: int = 0, unit: str = "step"):
        self.ctx, self.agent, self.phase, self.progress, self.unit = ctx, agent, phase, progress, unit
        self.log_ticker, self.eval_ticker, self.checkpoint_ticker = log, evaluate, checkpoint
        self.save, self.describe, self.extra = save, describe, extra
        self.averager = MetricAverager(progress.averager)
        self.updates_since_log, self.last_time = updates_since_log, time.perf_counter()
        self.bar = None

    @contextlib.contextmanager
    def running(self, total: int, desc: str, initial: int = 0):
        """The phase's progress bar, open while the loop runs."""
        with self.ctx.progress_bar(total, desc, initial=initial) as self.bar:
            yield self.bar

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        """One update's metrics, averaged until the next flush."""
        self.averager.add(metrics)
        self.updates_since_log += 1

    def point(self, at: int, final: bool, checkpoint_at: Optional[int] = None,
              hooks: tuple[tuple[Ticker, Callable[[int], None]], ...] = ()) -> None:
        """After a unit of work at ``at`` (``checkpoint_at``: the count the checkpoint interval is in, if another)."""
        if self.log_ticker.due(at) or final:
            self.flush(at)
            self.log_ticker.fired(at)
        if self.eval_ticker.due(at) or final:
            self.progress.results = self.ctx.evaluate(self.agent, self.phase, at)
            self.eval_ticker.fired(at)
        for ticker, work in hooks:
            if ticker.due(at):
                work(at)
                ticker.fired(at)
        count = at if checkpoint_at is None else checkpoint_at
        if not final and self.checkpoint_ticker.due(count):
            self.checkpoint_ticker.fired(count)
            self.save(None)
        self.honour_preemption(f"{self.phase} {self.unit} {at}")

    def point_within(self, at: int) -> None:
        """Inside a unit of work (the step schedule's env step within an episode): the log flush and the evaluation
        that fall due here run here, as the authors' step loops run them; hooks and checkpoints wait for the unit's
        end, where a checkpoint resumes exactly."""
        if self.log_ticker.due(at):
            self.flush(at)
            self.log_ticker.fired(at)
        if self.eval_ticker.due(at):
            self.progress.results = self.ctx.evaluate(self.agent, self.phase, at)
            self.eval_ticker.fired(at)

    def honour_preemption(self, where: str, rng: Optional[dict] = None) -> None:
        """A requested stop: checkpoint (with ``rng``, the random state to resume from, if not the present one)."""
        raise_if_interrupted()
        if self.ctx.guard.requested:
            self.save(rng)
            raise Preempted(where)

    def flush(self, at: int) -> None:
        ctx, now = self.ctx, time.perf_counter()
        metrics = self.averager.pop_means()
        ctx.check_finite_metrics(metrics, self.phase, at)
        metrics[M.UPDATES_PER_SECOND] = self.updates_since_log / max(now - self.last_time, 1e-9)
        metrics.update(self.extra())
        ctx.tracker.log_metrics({M.train(self.phase, k): v for k, v in metrics.items()}, at)
        ctx.log_calibration(self.agent, self.phase, at)
        line, postfix = self.describe(metrics)
        log.info("%s", line)
        if self.bar is not None:
            self.bar.set_postfix(**postfix)
        self.updates_since_log, self.last_time = 0, now
