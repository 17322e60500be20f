"""Stage 3: offline pre-training, N gradient steps on the offline data."""
from __future__ import annotations

import time

from o2o.buffers import TransitionBuffer
from o2o.checkpoints import Preempted
from o2o.stages.common import MetricAverager, RunContext, log


def pretrain(agent, data: TransitionBuffer, batch_size: int, steps: int, calibrate: bool, ctx: RunContext,
             resume: dict | None = None) -> dict[str, float]:
    """Train on offline batches; evaluate, log and checkpoint at the schedule's intervals.

    ``resume`` is this stage's entry of a checkpoint: training continues after its step.
    """
    sched = ctx.schedule
    resume = resume or {"step": 0, "averager": None, "results": {}}
    averager, results = MetricAverager(resume["averager"]), resume["results"]
    envs = [ctx.evaluator.env]
    start = resume["step"]
    started, last_time, last_step = time.perf_counter(), time.perf_counter(), start

    def checkpoint(step: int) -> None:
        ctx.save(agent, "offline", {"step": step, "averager": averager.state(), "results": results}, envs)

    with ctx.progress_bar(steps, "offline pre-training", initial=start) as bar:
        for step in range(start + 1, steps + 1):
            averager.add(agent.update(data.sample(batch_size), calibrate=calibrate))
            if step % sched.log_interval == 0 or step == steps:
                now = time.perf_counter()
                metrics = averager.pop_means()
                metrics["updates_per_second"] = (step - last_step) / max(now - last_time, 1e-9)
                last_time, last_step = now, step
                ctx.tracker.log_metrics({f"offline/train/{k}": v for k, v in metrics.items()}, step)
                bar.update(step - bar.n)
                bar.set_postfix(critic=f"{metrics['critic_loss']:.3g}", ups=f"{metrics['updates_per_second']:.1f}")
                log.info("offline step %d/%d: critic_loss=%.4f q_data=%.3f mc_return=%.3f updates/s=%.1f", step, steps,
                         metrics["critic_loss"], metrics["q_data"], metrics["mc_return"], metrics["updates_per_second"])
            if (sched.eval_interval_offline and step % sched.eval_interval_offline == 0) or step == steps:
                results = ctx.evaluate(agent, "offline", step)
            if sched.checkpoint_interval and step % sched.checkpoint_interval == 0 and step < steps:
                checkpoint(step)
            if ctx.guard.requested:
                checkpoint(step)
                raise Preempted(f"offline step {step}")
    elapsed = time.perf_counter() - started
    return {**{f"offline/{k}": v for k, v in results.items()},
            "offline/updates_per_second": (steps - start) / elapsed if elapsed else 0.0}
