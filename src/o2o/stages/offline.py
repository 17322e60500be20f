"""Offline pre-training: N gradient steps on the offline data; also offline retraining (stages/retrain.py)."""
from __future__ import annotations

import time

from o2o import metrics as M
from o2o.run_state import OfflineProgress
from o2o.stages.common import Learner, PhaseLoop, RunContext, Ticker


def pretrain(agent, learner: Learner, steps: int, ctx: RunContext, phase: str = M.OFFLINE) -> dict[str, float]:
    """Train with ``learner`` for ``steps`` gradient steps; evaluate, log and checkpoint at the schedule's offline
    intervals.

    ``phase`` names the metrics, the checkpoint's stage and where progress lives (``ctx.state.offline`` or
    ``ctx.state.retrain``): a resumed run continues after its step.
    """
    sched = ctx.schedule
    progress = getattr(ctx.state, phase) or OfflineProgress()
    setattr(ctx.state, phase, progress)
    start, started = progress.step, time.perf_counter()
    agent.begin_phase(phase)
    if start == 0:  # the initial policy, so the curve starts where training does (the authors evaluate at epoch 0)
        progress.results = ctx.evaluate(agent, phase, 0)

    def save(rng=None) -> None:
        progress.averager = loop.averager.state()
        progress.bonus = learner.bonus.state() if learner.bonus is not None else None
        ctx.save(agent, phase, [ctx.evaluator.env], rng)

    def describe(m: dict) -> tuple[str, dict]:
        line = (f"{phase} step {progress.step}/{steps}: critic_loss={m[M.CRITIC_LOSS]:.4f} q_data={m[M.Q_DATA]:.3f} "
                f"v_ref={m[M.V_REF]:.3f} updates/s={m[M.UPDATES_PER_SECOND]:.1f}")
        return line, {"critic": f"{m[M.CRITIC_LOSS]:.3g}", "ups": f"{m[M.UPDATES_PER_SECOND]:.1f}"}

    loop = PhaseLoop(ctx, agent, phase, progress, log=Ticker.after(sched.log_interval, start),
                     evaluate=Ticker.after(sched.eval_interval_offline, start),
                     checkpoint=Ticker.after(sched.checkpoint_interval, start), save=save, describe=describe)
    with loop.running(steps, "offline pre-training" if phase == M.OFFLINE else "offline retraining",
                      initial=start) as bar:
        for step in range(start + 1, steps + 1):
            loop.add(learner.update())
            progress.step = step
            bar.update(1)
            ctx.step_done()
            loop.point(step, final=step == steps)
    elapsed = time.perf_counter() - started
    return {**{M.summary(phase, k): v for k, v in progress.results.items()},
            M.summary(phase, M.UPDATES_PER_SECOND): (steps - start) / elapsed if elapsed else 0.0}
