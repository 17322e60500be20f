"""Stage 3: offline pre-training, N gradient steps on the offline data; also offline retraining (stages/retrain.py)."""
from __future__ import annotations

import time

from o2o import metrics as M
from typing import Callable

from o2o.buffers import Batch
from o2o.checkpoints import Preempted
from o2o.run_state import OfflineProgress
from o2o.stages.common import MetricAverager, RunContext, log


def pretrain(agent, sample: Callable[[], Batch], steps: int, ctx: RunContext, phase: str = M.OFFLINE
             ) -> dict[str, float]:
    """Train on ``sample()`` batches; evaluate, log and checkpoint at the schedule's offline intervals.

    ``phase`` names the metrics, the checkpoint's stage and where progress lives (``ctx.state.offline`` or
    ``ctx.state.retrain``): a resumed run continues after its step.
    """
    sched = ctx.schedule
    progress = getattr(ctx.state, phase) or OfflineProgress()
    setattr(ctx.state, phase, progress)
    averager = MetricAverager(progress.averager)
    envs = [ctx.evaluator.env]
    start = progress.step
    started, last_time, last_step = time.perf_counter(), time.perf_counter(), start
    agent.begin_phase(phase)
    if start == 0:  # the initial policy, so the curve starts where training does (the authors evaluate at epoch 0)
        progress.results = ctx.evaluate(agent, phase, 0)

    def checkpoint(step: int) -> None:
        progress.step, progress.averager = step, averager.state()
        ctx.save(agent, phase, envs)

    with ctx.progress_bar(steps, "offline pre-training" if phase == M.OFFLINE else "offline retraining",
                          initial=start) as bar:
        for step in range(start + 1, steps + 1):
            averager.add(agent.update(sample()))
            bar.update(1)
            ctx.step_done()
            if step % sched.log_interval == 0 or step == steps:
                now = time.perf_counter()
                metrics = averager.pop_means()
                ctx.check_finite_metrics(metrics, phase, step)
                metrics[M.UPDATES_PER_SECOND] = (step - last_step) / max(now - last_time, 1e-9)
                last_time, last_step = now, step
                ctx.tracker.log_metrics({M.train(phase, k): v for k, v in metrics.items()}, step)
                ctx.log_calibration(agent, phase, step)
                bar.set_postfix(critic=f"{metrics[M.CRITIC_LOSS]:.3g}", ups=f"{metrics[M.UPDATES_PER_SECOND]:.1f}")
                log.info("%s step %d/%d: critic_loss=%.4f q_data=%.3f v_ref=%.3f updates/s=%.1f", phase, step, steps,
                         metrics[M.CRITIC_LOSS], metrics[M.Q_DATA], metrics[M.V_REF],
                         metrics[M.UPDATES_PER_SECOND])
            if (sched.eval_interval_offline and step % sched.eval_interval_offline == 0) or step == steps:
                progress.results = ctx.evaluate(agent, phase, step)
            if sched.checkpoint_interval and step % sched.checkpoint_interval == 0 and step < steps:
                checkpoint(step)
            if ctx.guard.requested:
                checkpoint(step)
                raise Preempted(f"{phase} step {step}")
    progress.step = steps
    elapsed = time.perf_counter() - started
    return {**{M.summary(phase, k): v for k, v in progress.results.items()},
            M.summary(phase, M.UPDATES_PER_SECOND): (steps - start) / elapsed if elapsed else 0.0}
