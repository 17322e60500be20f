"""Stage 4: online fine-tuning.

As in the Cal-QL authors' loop: collect one episode with the stochastic
policy, label it (transformed rewards and returns-to-go, so calibration keeps
working online), store it in the online buffer, then take
``len(episode) * utd_ratio`` gradient steps on batches that mix offline and
online data.

A preemption request is honoured between two gradient steps (the checkpoint
records how many of the episode's updates remain) or during collection (the
checkpoint holds the random state from the episode's start, and the episode is
collected again on resume), so a resumed run continues exactly.
"""
from __future__ import annotations

import time

import numpy as np

from o2o import metrics as M
from o2o.buffers import MixedSampler
from o2o.checkpoints import Preempted, capture_rng, restore_rng
from o2o.config import Config
from o2o.envs import make_env
from o2o.returns import label_rewards
from o2o.rollout import Episode, rollout
from o2o.run_state import ONLINE_STAGE, OnlineProgress
from o2o.stages.common import MetricAverager, RunContext, log


def collect_episode(env, agent, max_steps: int, random_steps: int = 0, stop=lambda: False) -> Episode | None:
    """One episode (or its first ``max_steps`` steps) with the stochastic policy; None if ``stop()`` interrupts it.

    The first ``random_steps`` actions are uniform random (SAC-style warm-up).
    """
    taken = 0

    def policy(obs):
        nonlocal taken
        taken += 1
        return env.action_space.sample() if taken <= random_steps else agent.act(obs, deterministic=False)

    return rollout(env, policy, max_steps=max_steps, stop=stop)


def finetune(agent, sampler: MixedSampler, cfg: Config, ctx: RunContext, resume_rng: dict | None = None
             ) -> dict[str, float]:
    """Fine-tune from ``ctx.state.online`` (a fresh start when None, else a resumed one)."""
    sched = cfg.schedule
    env = make_env(cfg.env, binary_reward=cfg.domain.reward.binary_from_success, training=True, seed=cfg.seed)
    envs = [ctx.evaluator.env, env]
    resumed = ctx.state.online is not None
    s = ctx.state.online = ctx.state.online or OnlineProgress(
        next_eval=sched.eval_interval_online or sched.online_steps, next_checkpoint=sched.checkpoint_interval)
    averager = MetricAverager(s.averager)
    if resumed:
        sampler.online.load_state(s.buffer)
        restore_rng(resume_rng, envs)
    last_time = time.perf_counter()
    agent.begin_phase(M.ONLINE)

    def checkpoint(rng: dict | None = None) -> None:
        s.averager, s.buffer = averager.state(), sampler.online.state()
        ctx.save(agent, ONLINE_STAGE, envs, rng)

    with ctx.progress_bar(sched.online_steps, "online fine-tuning", initial=s.env_steps) as bar:
        while s.env_steps < sched.online_steps or s.pending_updates:
            if not s.pending_updates:
                episode_start_rng = capture_rng(envs)
                episode = collect_episode(env, agent, sched.online_steps - s.env_steps,
                                          max(cfg.algo.random_steps - s.env_steps, 0), stop=lambda: ctx.guard.requested)
                if episode is None:
                    checkpoint(episode_start_rng)  # the episode is collected again on resume
                    raise Preempted(f"online env step {s.env_steps}")
                n = len(episode)
                ends = np.zeros(n, dtype=bool)
                ends[-1] = True
                rewards, mc = label_rewards(episode.rewards, ends, cfg.domain, cfg.algo.gamma)
                observations = episode.stacked_observations()
                sampler.online.add(observations[:-1], episode.actions, rewards, observations[1:],
                                   episode.terminations, mc)
                s.env_steps += n
                s.episodes += 1
                s.failures += int(not episode.succeeded)
                s.pending_updates = n * cfg.algo.utd_ratio
                ctx.tracker.log_metrics({
                    M.train(M.ONLINE, M.EPISODE_RETURN): float(episode.rewards.sum()),
                    M.train(M.ONLINE, M.EPISODE_SUCCESS): float(episode.succeeded),
                    M.train(M.ONLINE, M.EPISODE_LENGTH): n,
                    M.CUMULATIVE_REGRET: s.regret,
                    M.EPISODES: s.episodes,
                }, s.env_steps)
                bar.update(n)

            while s.pending_updates:
                averager.add(agent.update(sampler.sample()))
                s.pending_updates -= 1
                s.updates_since_log += 1
                if ctx.guard.requested:
                    checkpoint()
                    raise Preempted(f"online env step {s.env_steps}, {s.pending_updates} updates left")

            finished = s.env_steps >= sched.online_steps
            if s.env_steps - s.last_log_step >= sched.log_interval or finished:
                now = time.perf_counter()
                metrics = averager.pop_means()
                metrics[M.UPDATES_PER_SECOND] = s.updates_since_log / max(now - last_time, 1e-9)
                metrics[M.GRAD_STEPS] = agent.grad_steps
                ctx.tracker.log_metrics({M.train(M.ONLINE, k): v for k, v in metrics.items()}, s.env_steps)
                log.info("online env step %d/%d: episodes=%d regret=%.3f updates/s=%.1f", s.env_steps,
                         sched.online_steps, s.episodes, s.regret, metrics[M.UPDATES_PER_SECOND])
                s.last_log_step, s.updates_since_log, last_time = s.env_steps, 0, now
            if s.env_steps >= s.next_eval or finished:
                s.results = ctx.evaluate(agent, M.ONLINE, s.env_steps)
                while s.next_eval <= s.env_steps:
                    s.next_eval += sched.eval_interval_online or sched.online_steps
            if sched.checkpoint_interval and agent.grad_steps >= s.next_checkpoint and not finished:
                while s.next_checkpoint <= agent.grad_steps:
                    s.next_checkpoint += sched.checkpoint_interval
                checkpoint()
            if ctx.guard.requested:
                checkpoint()
                raise Preempted(f"online env step {s.env_steps}")
    env.close()
    return {**{M.summary(M.ONLINE, k): v for k, v in s.results.items()},
            M.CUMULATIVE_REGRET: s.regret, M.EPISODES: float(s.episodes), M.ENV_STEPS: float(s.env_steps)}
