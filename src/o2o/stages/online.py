"""Stage 4: online fine-tuning.

As in the Cal-QL authors' loop: collect one episode with the stochastic
policy, give it returns-to-go (so calibration keeps working online), store it
in the online buffer, then take ``len(episode) * utd_ratio`` gradient steps on
batches that mix offline and online data.

A preemption request is honoured between two gradient steps (the checkpoint
records how many of the episode's updates remain) or during collection (the
checkpoint holds the random state from the episode's start, and the episode is
collected again on resume), so a resumed run continues exactly.
"""
from __future__ import annotations

import time

import numpy as np

from o2o.buffers import MixedSampler
from o2o.checkpoints import Preempted, capture_rng, restore_rng
from o2o.config import Config
from o2o.envs import make_env, transform_reward
from o2o.returns import returns_to_go
from o2o.stages.common import MetricAverager, RunContext, log


def collect_episode(env, agent, max_steps: int, random_steps: int = 0, stop=lambda: False):
    """One episode (or its first ``max_steps`` steps) with the stochastic policy; None if ``stop()`` interrupts it.

    The first ``random_steps`` actions are uniform random (SAC-style warm-up).
    """
    obs, _ = env.reset()
    steps: dict[str, list] = {k: [] for k in ("obs", "actions", "rewards", "next_obs", "terminals", "success")}
    done = False
    while not done and len(steps["rewards"]) < max_steps:
        if stop():
            return None
        if len(steps["rewards"]) < random_steps:
            action = env.action_space.sample()
        else:
            action = agent.act(obs, deterministic=False)
        next_obs, reward, terminated, truncated, info = env.step(action)
        for key, value in (("obs", obs), ("actions", action), ("rewards", reward), ("next_obs", next_obs),
                           ("terminals", terminated), ("success", bool(info.get("success", False)))):
            steps[key].append(value)
        obs, done = next_obs, terminated or truncated
    return {k: np.asarray(v) for k, v in steps.items()}


def finetune(agent, sampler: MixedSampler, cfg: Config, seed: int, ctx: RunContext,
             resume: dict | None = None, resume_rng: dict | None = None) -> dict[str, float]:
    sched, env_cfg = cfg.schedule, cfg.env
    env = make_env(env_cfg, training=True, seed=seed)
    envs = [ctx.evaluator.env, env]
    utd_ratio = cfg.utd_ratio
    calibrate = cfg.algo.calibrated and cfg.algo.calibrate_online
    fail_reward = float(transform_reward(env_cfg.fail_reward, env_cfg)) if env_cfg.sparse else None
    s = resume or {"env_steps": 0, "episodes": 0, "failures": 0, "pending_updates": 0, "last_log_step": 0,
                   "updates_since_log": 0, "next_eval": sched.eval_interval_online or sched.online_steps,
                   "next_checkpoint": sched.checkpoint_interval, "results": {}, "averager": None}
    s = dict(s)
    averager = MetricAverager(s.pop("averager"))
    if resume is not None:
        sampler.online.load_state(s.pop("buffer"))
        restore_rng(resume_rng, envs)
    last_time = time.perf_counter()

    def checkpoint(rng: dict | None = None) -> None:
        ctx.save(agent, "online", {**s, "averager": averager.state(), "buffer": sampler.online.state()}, envs, rng)

    with ctx.progress_bar(sched.online_steps, "online fine-tuning", initial=s["env_steps"]) as bar:
        while s["env_steps"] < sched.online_steps or s["pending_updates"]:
            if not s["pending_updates"]:
                episode_start_rng = capture_rng(envs)
                episode = collect_episode(env, agent, sched.online_steps - s["env_steps"],
                                          max(cfg.algo.random_steps - s["env_steps"], 0), stop=lambda: ctx.guard.requested)
                if episode is None:
                    checkpoint(episode_start_rng)  # the episode is collected again on resume
                    raise Preempted(f"online env step {s['env_steps']}")
                n = len(episode["rewards"])
                rewards = transform_reward(episode["rewards"].astype(np.float32), env_cfg)
                ends = np.zeros(n, dtype=bool)
                ends[-1] = True
                mc = returns_to_go(rewards, ends, cfg.algo.gamma, fail_reward)
                sampler.online.add(episode["obs"], episode["actions"], rewards, episode["next_obs"],
                                   episode["terminals"], mc)
                s["env_steps"] += n
                s["episodes"] += 1
                s["failures"] += int(not episode["success"].any())
                s["pending_updates"] = n * utd_ratio
                ctx.tracker.log_metrics({
                    "online/train/episode_return": float(episode["rewards"].sum()),
                    "online/train/episode_success": float(episode["success"].any()),
                    "online/train/episode_length": n,
                    "online/cumulative_regret": s["failures"] / s["episodes"],
                    "online/episodes": s["episodes"],
                }, s["env_steps"])
                bar.update(n)

            while s["pending_updates"]:
                averager.add(agent.update(sampler.sample(), calibrate=calibrate))
                s["pending_updates"] -= 1
                s["updates_since_log"] += 1
                if ctx.guard.requested:
                    checkpoint()
                    raise Preempted(f"online env step {s['env_steps']}, {s['pending_updates']} updates left")

            finished = s["env_steps"] >= sched.online_steps
            if s["env_steps"] - s["last_log_step"] >= sched.log_interval or finished:
                now = time.perf_counter()
                metrics = averager.pop_means()
                metrics["updates_per_second"] = s["updates_since_log"] / max(now - last_time, 1e-9)
                metrics["grad_steps"] = agent.grad_steps
                ctx.tracker.log_metrics({f"online/train/{k}": v for k, v in metrics.items()}, s["env_steps"])
                log.info("online env step %d/%d: episodes=%d regret=%.3f updates/s=%.1f", s["env_steps"],
                         sched.online_steps, s["episodes"], s["failures"] / s["episodes"],
                         metrics["updates_per_second"])
                s["last_log_step"], s["updates_since_log"], last_time = s["env_steps"], 0, now
            if s["env_steps"] >= s["next_eval"] or finished:
                s["results"] = ctx.evaluate(agent, "online", s["env_steps"])
                while s["next_eval"] <= s["env_steps"]:
                    s["next_eval"] += sched.eval_interval_online or sched.online_steps
            if sched.checkpoint_interval and agent.grad_steps >= s["next_checkpoint"] and not finished:
                while s["next_checkpoint"] <= agent.grad_steps:
                    s["next_checkpoint"] += sched.checkpoint_interval
                checkpoint()
            if ctx.guard.requested:
                checkpoint()
                raise Preempted(f"online env step {s['env_steps']}")
    env.close()
    return {**{f"online/{k}": v for k, v in s["results"].items()},
            "online/cumulative_regret": s["failures"] / max(s["episodes"], 1), "online/episodes": float(s["episodes"]),
            "online/env_steps": float(s["env_steps"])}
