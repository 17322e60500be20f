"""Stage 4: online fine-tuning.

As in the Cal-QL authors' loop: collect one episode with the stochastic
policy, give it returns-to-go (so calibration keeps working online), store it
in the online buffer, then take ``len(episode) * utd_ratio`` gradient steps on
batches that mix offline and online data.
"""
from __future__ import annotations

import time

import numpy as np

from o2o.buffers import MixedSampler
from o2o.config import Config
from o2o.envs import make_env, transform_reward
from o2o.returns import returns_to_go
from o2o.stages.common import MetricAverager, RunContext, log


def collect_episode(env, agent, max_steps: int, random_steps: int = 0) -> dict[str, np.ndarray]:
    """One episode (or its first ``max_steps`` steps) with the stochastic policy.

    The first ``random_steps`` actions are uniform random (SAC-style warm-up).
    """
    obs, _ = env.reset()
    steps: dict[str, list] = {k: [] for k in ("obs", "actions", "rewards", "next_obs", "terminals", "success")}
    done = False
    while not done and len(steps["rewards"]) < max_steps:
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


def finetune(agent, sampler: MixedSampler, cfg: Config, seed: int, ctx: RunContext) -> dict[str, float]:
    sched, env_cfg = cfg.schedule, cfg.env
    env = make_env(env_cfg, training=True, seed=seed)
    utd_ratio = cfg.utd_ratio
    fail_reward = float(transform_reward(env_cfg.fail_reward, env_cfg)) if env_cfg.sparse else None
    averager = MetricAverager()
    env_steps = episodes = failures = 0
    results: dict[str, float] = {}
    next_eval = sched.eval_interval_online or sched.online_steps
    last_log_step, last_time, updates_since_log = 0, time.perf_counter(), 0
    with ctx.progress_bar(sched.online_steps, "online fine-tuning") as bar:
        while env_steps < sched.online_steps:
            episode = collect_episode(env, agent, sched.online_steps - env_steps,
                                      max(cfg.algo.random_steps - env_steps, 0))
            n = len(episode["rewards"])
            rewards = transform_reward(episode["rewards"].astype(np.float32), env_cfg)
            ends = np.zeros(n, dtype=bool)
            ends[-1] = True
            mc = returns_to_go(rewards, ends, cfg.algo.gamma, fail_reward)
            sampler.online.add(episode["obs"], episode["actions"], rewards, episode["next_obs"],
                               episode["terminals"], mc)
            env_steps += n
            episodes += 1
            failures += not episode["success"].any()
            ctx.tracker.log_metrics({
                "online/train/episode_return": float(episode["rewards"].sum()),
                "online/train/episode_success": float(episode["success"].any()),
                "online/train/episode_length": n,
                "online/cumulative_regret": failures / episodes,
                "online/episodes": episodes,
            }, env_steps)

            for _ in range(n * utd_ratio):
                averager.add(agent.update(sampler.sample(), calibrate=cfg.algo.calibrated and cfg.algo.calibrate_online))
                updates_since_log += 1
            bar.update(n)

            if env_steps - last_log_step >= sched.log_interval or env_steps >= sched.online_steps:
                now = time.perf_counter()
                metrics = averager.pop_means()
                metrics["updates_per_second"] = updates_since_log / max(now - last_time, 1e-9)
                metrics["grad_steps"] = agent.grad_steps
                ctx.tracker.log_metrics({f"online/train/{k}": v for k, v in metrics.items()}, env_steps)
                log.info("online env step %d/%d: episodes=%d regret=%.3f updates/s=%.1f", env_steps,
                         sched.online_steps, episodes, failures / episodes, metrics["updates_per_second"])
                last_log_step, last_time, updates_since_log = env_steps, now, 0
            if env_steps >= next_eval or env_steps >= sched.online_steps:
                results = ctx.evaluate(agent)
                ctx.log_eval("online", env_steps, results)
                while next_eval <= env_steps:
                    next_eval += sched.eval_interval_online or sched.online_steps
            if sched.checkpoint_interval and agent.grad_steps % sched.checkpoint_interval < n * utd_ratio:
                ctx.save_checkpoint(agent, "online")
    env.close()
    return {**{f"online/{k}": v for k, v in results.items()},
            "online/cumulative_regret": failures / max(episodes, 1), "online/episodes": float(episodes),
            "online/env_steps": float(env_steps)}
