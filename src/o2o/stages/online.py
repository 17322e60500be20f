"""Stage 4: online fine-tuning, on one of two schedules (``algo.update_schedule``).

- ``episode`` (the Cal-QL authors'): collect one episode with the stochastic
  policy, label it (transformed rewards and returns-to-go, so calibration keeps
  working online), store it, then take ``len(episode) * utd_ratio`` gradient
  steps.
- ``step`` (RLPD, SAC, IQL): every env step is stored at once and followed by
  an update block of ``utd_ratio`` gradient steps; the episode's
  returns-to-go are written when it ends.

Either way the first ``algo.warmup_steps`` env steps take uniform random
actions and no updates, and batches mix offline and online data by the
mixing ratio.

A preemption request is honoured between two gradient steps or during
collection. On the episode schedule the checkpoint records how many of the
episode's updates remain, or the random state from the episode's start so the
episode is collected again: a resumed run continues exactly. On the step
schedule the agent has learnt from the partial episode, so its steps are kept
as a truncated episode and the resumed run starts a new one.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from o2o import metrics as M
from o2o.buffers import MixedSampler
from o2o.checkpoints import Preempted, capture_rng, restore_rng
from o2o.config import Config
from o2o.envs import make_env
from o2o.exploration import BonusSampler
from o2o.reference import reference_error
from o2o.returns import label_rewards, transform_reward
from o2o.rollout import Episode, rollout
from o2o.run_state import ONLINE_STAGE, OnlineProgress
from o2o.stages.common import MetricAverager, RunContext, log


def collect_episode(env, agent, max_steps: int, random_steps: int = 0, stop=lambda: False,
                    after_step=None) -> Episode | None:
    """One episode (or its first ``max_steps`` steps) with the stochastic policy; None if ``stop()`` interrupts it.

    The first ``random_steps`` actions are uniform random (the warm-up).
    """
    taken = 0

    def policy(obs):
        nonlocal taken
        taken += 1
        return env.action_space.sample() if taken <= random_steps else agent.act(obs, deterministic=False)

    return rollout(env, policy, max_steps=max_steps, stop=stop, after_step=after_step)


def update(agent, sampler) -> dict:
    """One gradient step on a sampled batch; with an intrinsic reward, its statistics beside the losses."""
    metrics = agent.update(sampler.sample())
    return {**metrics, **sampler.metrics} if isinstance(sampler, BonusSampler) else metrics


class EpisodeLabeller:
    """The V_ref of a finished online episode: its Monte-Carlo returns, or a learned reference's values (whose error
    against those returns is logged as online/reference/*)."""

    def __init__(self, cfg: Config, reference=None, tracker=None):
        self.cfg, self.reference, self.tracker = cfg, reference, tracker

    def __call__(self, raw_rewards, observations, step: int) -> tuple[np.ndarray, np.ndarray]:
        ends = np.zeros(len(raw_rewards), dtype=bool)
        ends[-1] = True
        rewards, mc = label_rewards(np.asarray(raw_rewards), ends, self.cfg.domain, self.cfg.algo)
        if self.reference is None:
            return rewards, mc
        v_ref = self.reference(observations)
        errors = reference_error(v_ref, torch.as_tensor(mc, device=v_ref.device))
        self.tracker.log_metrics({M.reference(M.ONLINE, k): v for k, v in errors.items() if np.isfinite(v)}, step)
        return rewards, v_ref.cpu().numpy()


class StepLearner:
    """The ``step`` schedule: store each transition as it happens, then take ``utd_ratio`` updates."""

    def __init__(self, agent, sampler: MixedSampler, cfg: Config, progress: OnlineProgress, averager: MetricAverager,
                 labeller: EpisodeLabeller):
        self.agent, self.sampler, self.cfg, self.progress, self.averager = agent, sampler, cfg, progress, averager
        self.labeller = labeller
        self.rows: list[torch.Tensor] = []  # buffer rows of the episode so far
        self.raw_rewards: list[float] = []

    def __call__(self, obs, action, reward, next_obs, terminated) -> None:
        self.raw_rewards.append(reward)
        reward = transform_reward(np.float32(reward), self.cfg.algo)
        self.rows.append(self.sampler.online.add(obs[None], action[None], [reward], next_obs[None], [terminated], [0.0]))
        self.progress.env_steps += 1
        if self.progress.env_steps > self.cfg.algo.warmup_steps:
            for _ in range(self.cfg.algo.utd_ratio):
                self.averager.add(update(self.agent, self.sampler))
                self.progress.updates_since_log += 1

    def end_episode(self) -> None:
        """Write the returns-to-go of the episode's rows (a partial episode counts as truncated)."""
        if self.rows:
            rows = torch.cat(self.rows)
            online = self.sampler.online
            _, v_ref = self.labeller(self.raw_rewards, online.storage[rows, :online.obs_dim], self.progress.env_steps)
            online.set_v_ref(rows, v_ref)
        self.rows, self.raw_rewards = [], []


def finetune(agent, sampler: MixedSampler, cfg: Config, ctx: RunContext, resume_rng: dict | None = None,
             reference=None, bonus=None, retrain_now=None) -> dict[str, float]:
    """Fine-tune from ``ctx.state.online`` (a fresh start when None, else a resumed one).

    ``reference``: a learned V_ref (o2o.reference) that labels the online episodes; ``bonus``: an intrinsic reward
    (o2o.exploration) added to every sampled batch; ``retrain_now(env_step)``: called every ``retrain.interval``
    env steps (stages/retrain.py).
    """
    sched = cfg.schedule
    env = make_env(cfg.env, cfg.domain, seed=cfg.seed)
    envs = [ctx.evaluator.env, env]
    resumed = ctx.state.online is not None
    progress = ctx.state.online = ctx.state.online or OnlineProgress(
        next_eval=sched.eval_interval_online or sched.online_steps, next_checkpoint=sched.checkpoint_interval,
        next_retrain=cfg.retrain.interval)
    averager = MetricAverager(progress.averager)
    if resumed:
        sampler.online.load_state(progress.buffer)
        restore_rng(resume_rng, envs)
        if bonus is not None and progress.bonus is not None:
            bonus.load_state(progress.bonus)
    if bonus is not None:
        sampler = BonusSampler(sampler, bonus, cfg.exploration.coef, agent)
    labeller = EpisodeLabeller(cfg, reference, ctx.tracker)
    last_time = time.perf_counter()
    agent.begin_phase(M.ONLINE)
    if not resumed and not ctx.state.eval_history:  # no pre-training: score the initial policy at env step 0
        progress.results = ctx.evaluate(agent, M.ONLINE, 0)

    step_learner = (StepLearner(agent, sampler, cfg, progress, averager, labeller)
                    if cfg.algo.update_schedule == "step" else None)

    def checkpoint(rng: dict | None = None) -> None:
        progress.averager, progress.buffer = averager.state(), sampler.online.state()
        progress.bonus = bonus.state() if bonus is not None else None
        ctx.save(agent, ONLINE_STAGE, envs, rng)

    with ctx.progress_bar(sched.online_steps, "online fine-tuning", initial=progress.env_steps) as bar:
        while progress.env_steps < sched.online_steps or progress.pending_updates:
            if not progress.pending_updates:
                episode_start_rng, steps_before = capture_rng(envs), progress.env_steps
                def after_step(*transition):
                    if step_learner is not None:
                        step_learner(*transition)
                    bar.update(1)
                    ctx.step_done()

                episode = collect_episode(env, agent, sched.online_steps - progress.env_steps,
                                          max(cfg.algo.warmup_steps - progress.env_steps, 0),
                                          stop=lambda: ctx.guard.requested, after_step=after_step)
                if episode is None:
                    if step_learner is None:
                        bar.update(steps_before - bar.n)  # the episode is collected again: its steps do not count
                        checkpoint(episode_start_rng)  # the episode is collected again on resume
                    else:
                        step_learner.end_episode()  # learnt from already: kept, as a truncated episode
                        checkpoint()
                    raise Preempted(f"online env step {progress.env_steps}")
                n = len(episode)
                if step_learner is None:
                    observations = episode.stacked_observations()
                    rewards, v_ref = labeller(episode.rewards, observations[:-1], steps_before + n)
                    sampler.online.add(observations[:-1], episode.actions, rewards, observations[1:],
                                       episode.terminations, v_ref)
                    progress.env_steps += n
                    learning_steps = progress.env_steps - max(cfg.algo.warmup_steps, steps_before)
                    progress.pending_updates = max(learning_steps, 0) * cfg.algo.utd_ratio
                else:
                    step_learner.end_episode()
                progress.episodes += 1
                progress.regret_sum += 1.0 - episode.goal_reached
                ctx.tracker.log_metrics({
                    M.train(M.ONLINE, M.EPISODE_RETURN): float(episode.rewards.sum()),
                    M.train(M.ONLINE, M.EPISODE_SUCCESS): float(episode.succeeded),
                    M.train(M.ONLINE, M.EPISODE_LENGTH): n,
                    M.CUMULATIVE_REGRET: progress.regret,
                    M.EPISODES: progress.episodes,
                }, progress.env_steps)

            while progress.pending_updates:
                averager.add(update(agent, sampler))
                progress.pending_updates -= 1
                progress.updates_since_log += 1
                ctx.step_done()
                if ctx.guard.requested:
                    checkpoint()
                    raise Preempted(f"online env step {progress.env_steps}, {progress.pending_updates} updates left")

            finished = progress.env_steps >= sched.online_steps
            if progress.env_steps - progress.last_log_step >= sched.log_interval or finished:
                now = time.perf_counter()
                metrics = averager.pop_means()
                ctx.check_finite_metrics(metrics, M.ONLINE, progress.env_steps)
                metrics[M.UPDATES_PER_SECOND] = progress.updates_since_log / max(now - last_time, 1e-9)
                metrics[M.GRAD_STEPS] = agent.grad_steps
                ctx.tracker.log_metrics({M.train(M.ONLINE, k): v for k, v in metrics.items()}, progress.env_steps)
                ctx.log_calibration(agent, M.ONLINE, progress.env_steps)
                log.info("online env step %d/%d: episodes=%d regret=%.3f updates/s=%.1f", progress.env_steps,
                         sched.online_steps, progress.episodes, progress.regret, metrics[M.UPDATES_PER_SECOND])
                bar.set_postfix(episodes=progress.episodes, regret=f"{progress.regret:.3f}",
                                ups=f"{metrics[M.UPDATES_PER_SECOND]:.1f}")
                progress.last_log_step, progress.updates_since_log, last_time = progress.env_steps, 0, now
            if progress.env_steps >= progress.next_eval or finished:
                progress.results = ctx.evaluate(agent, M.ONLINE, progress.env_steps)
                while progress.next_eval <= progress.env_steps:
                    progress.next_eval += sched.eval_interval_online or sched.online_steps
            if retrain_now is not None and progress.next_retrain and progress.env_steps >= progress.next_retrain:
                retrain_now(progress.env_steps)
                while progress.next_retrain <= progress.env_steps:
                    progress.next_retrain += cfg.retrain.interval
            if sched.checkpoint_interval and agent.grad_steps >= progress.next_checkpoint and not finished:
                while progress.next_checkpoint <= agent.grad_steps:
                    progress.next_checkpoint += sched.checkpoint_interval
                checkpoint()
            if ctx.guard.requested:
                checkpoint()
                raise Preempted(f"online env step {progress.env_steps}")
    env.close()
    return {**{M.summary(M.ONLINE, k): v for k, v in progress.results.items()},
            M.CUMULATIVE_REGRET: progress.regret, M.EPISODES: float(progress.episodes), M.ENV_STEPS: float(progress.env_steps)}
