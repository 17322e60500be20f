"""Online fine-tuning, on one of two schedules (``algo.update_schedule``), each a collector:

- ``episode`` (the Cal-QL authors'), :class:`EpisodeCollector`: collect one episode with the stochastic policy,
  label it (transformed rewards and V_ref, so calibration keeps working online), store it, then owe
  ``len(episode) * utd_ratio`` gradient steps, taken before the next episode.
- ``step`` (RLPD, SAC, IQL), :class:`StepCollector`: every env step is stored at once and followed by an
  update block of ``utd_ratio`` gradient steps; the episode's V_ref is written when it ends. Log flushes and
  evaluations that fall due at an env step run there (RLPD's and IQL's loops); checkpoints and retraining wait for
  the episode's end.

Either way the first ``algo.warmup_steps`` env steps take no updates and act at random (or with the policy, for
WSRL), and batches mix offline and online data by the mixing ratio.

A preemption request is honoured between two gradient steps or during collection. On the episode schedule the
checkpoint records how many of the episode's updates remain, or the random state from the episode's start so the
episode is collected again: a resumed run continues exactly. On the step schedule the agent has learnt from the
partial episode, so its steps are kept as a truncated episode and the resumed run starts a new one.
"""
from __future__ import annotations

import numpy as np
import torch

from o2o import metrics as M
from o2o.buffers import MixedSampler, TransitionBuffer
from o2o.checkpoints import Preempted, capture_rng, restore_rng
from o2o.config import Config
from o2o.envs import make_env
from o2o.errors import Diverged
from o2o.reference import reference_error
from o2o.returns import reference_returns, transform_reward
from o2o.rollout import Episode, rollout
from o2o.run_state import ONLINE_STAGE, OnlineProgress
from o2o.stages.common import Learner, PhaseLoop, RunContext, Ticker, relabelled, target_bounds, widened


class EpisodeLabeller:
    """The V_ref of a finished online episode from its transformed rewards: its Monte-Carlo returns, or a learned
    reference's values (whose error against those returns is logged as online/reference/*)."""

    def __init__(self, cfg: Config, reference=None, tracker=None):
        self.cfg, self.reference, self.tracker = cfg, reference, tracker

    def __call__(self, rewards: np.ndarray, observations, step: int, terminated: bool) -> np.ndarray:
        ends = np.zeros(len(rewards), dtype=bool)
        ends[-1] = True
        mc = reference_returns(np.asarray(rewards, dtype=np.float32), ends, self.cfg.domain, self.cfg.algo,
                               ends & terminated)
        if self.reference is None:
            return mc
        mc = torch.as_tensor(mc)
        v_ref = self.reference.episode_values(mc, observations)
        if self.cfg.divergence_guard and not torch.isfinite(v_ref).all():
            raise Diverged(f"the learned V_ref (reference={self.cfg.reference.value}) of the online episode ending at "
                           f"env step {step} is not finite: lower the reference's learning rate, or set "
                           "divergence_guard=false to let it run")
        errors = reference_error(v_ref, mc.to(v_ref.device))
        self.tracker.log_metrics({M.reference(M.ONLINE, k): v for k, v in errors.items() if np.isfinite(v)}, step)
        return v_ref.cpu().numpy()


class Collector:
    """Collects one episode (or the budget's last steps) into the online buffer; the shared part of both schedules."""

    def __init__(self, env, learner: Learner, buffer: TransitionBuffer, labeller: EpisodeLabeller, cfg: Config,
                 progress: OnlineProgress, loop: PhaseLoop):
        self.env, self.learner, self.buffer, self.labeller = env, learner, buffer, labeller
        self.cfg, self.progress, self.loop = cfg, progress, loop

    def rollout(self, max_steps: int, on_step) -> Episode | None:
        """The stochastic policy; during the warm-up's env steps uniform random actions instead, unless the
        warm-up acts with the policy (``algo.warmup_actions=policy``, WSRL's)."""
        agent, bar, ctx = self.learner.agent, self.loop.bar, self.loop.ctx
        random_steps, taken = max(self.cfg.algo.warmup_steps - self.progress.env_steps, 0), 0
        if self.cfg.algo.warmup_actions == "policy":
            random_steps = 0

        def policy(obs):
            nonlocal taken
            taken += 1
            return self.env.action_space.sample() if taken <= random_steps else agent.act(obs, deterministic=False)

        def after_step(*transition):
            on_step(*transition)
            bar.update(1)
            ctx.step_done()

        return rollout(self.env, policy, max_steps=max_steps, stop=lambda: ctx.guard.requested, after_step=after_step)


class EpisodeCollector(Collector):
    """The ``episode`` schedule: the episode is stored whole, then its updates are owed."""

    def collect(self, max_steps: int) -> Episode | None:
        progress, algo = self.progress, self.cfg.algo
        self.start_rng = capture_rng([self.loop.ctx.evaluator.env, self.env])
        steps_before = progress.env_steps
        episode = self.rollout(max_steps, on_step=lambda *transition: None)
        if episode is None:
            self.loop.bar.update(steps_before - self.loop.bar.n)  # collected again on resume: its steps do not count
            return None
        observations = episode.stacked_observations(self.buffer.obs_dtype)
        rewards = transform_reward(np.asarray(episode.rewards, dtype=np.float32), algo)
        v_ref = self.labeller(rewards, observations[:-1], steps_before + len(episode), episode.terminated)
        rows = self.buffer.add(observations[:-1], episode.actions, rewards, observations[1:], episode.terminations, v_ref)
        self.buffer.set_next_actions(rows, episode.actions)
        progress.env_steps += len(episode)
        progress.pending_updates = max(progress.env_steps - max(algo.warmup_steps, steps_before), 0) * algo.utd_ratio
        return episode

    def interrupted(self) -> dict:
        """The random state to resume from: the episode's start, so that it is collected again."""
        return self.start_rng


class StepCollector(Collector):
    """The ``step`` schedule: each transition is stored as it happens and followed by ``utd_ratio`` updates."""

    def collect(self, max_steps: int) -> Episode | None:
        self.rows: list[torch.Tensor] = []  # buffer rows of the episode so far
        self.actions: list[np.ndarray] = []  # their actions
        self.rewards: list[np.float32] = []  # their transformed rewards
        self.terminated = False  # whether the last step so far ended the episode in a terminal state
        episode = self.rollout(max_steps, on_step=self.on_step)
        self.end_episode()  # an interrupted one too: learnt from already, so kept, as a truncated episode
        return episode

    def on_step(self, obs, action, reward, next_obs, terminated) -> None:
        reward = transform_reward(np.float32(reward), self.cfg.algo)
        self.rewards.append(reward)
        self.terminated = bool(terminated)
        self.actions.append(action)
        # V_ref is unknown (NaN) until the episode ends (end_episode); the batch metrics leave such rows out
        self.rows.append(self.buffer.add(obs[None], action[None], [reward], next_obs[None], [terminated], [np.nan]))
        self.progress.env_steps += 1
        if self.progress.env_steps > self.cfg.algo.warmup_steps:
            for _ in range(self.cfg.algo.utd_ratio):
                self.loop.add(self.learner.update())
        if self.progress.env_steps < self.cfg.schedule.online_steps:  # the last one is the stage's final point
            self.loop.point_within(self.progress.env_steps)

    def end_episode(self) -> None:
        """Write the V_ref (and the next actions, where kept) of the episode's rows (a partial episode counts as
        truncated)."""
        if self.rows:
            rows = torch.cat(self.rows)
            v_ref = self.labeller(np.asarray(self.rewards, dtype=np.float32),
                                  self.buffer.observations(rows), self.progress.env_steps,
                                  self.terminated)
            self.buffer.set_v_ref(rows, v_ref)
            self.buffer.set_next_actions(rows, np.stack(self.actions))

    def interrupted(self) -> None:
        """No random state to go back to: the resumed run starts a new episode from the present one."""
        return None


COLLECTORS = {"episode": EpisodeCollector, "step": StepCollector}


def finetune(agent, sampler: MixedSampler, cfg: Config, ctx: RunContext, resume_rng: dict | None = None,
             reference=None, bonus=None, retrain_now=None) -> dict[str, float]:
    """Fine-tune from ``ctx.state.online`` (a fresh start when None, else a resumed one).

    ``reference``: a learned V_ref (o2o.reference) that labels the online episodes; ``bonus``: an intrinsic reward
    (o2o.exploration) added to every sampled batch; ``retrain_now(env_step)``: called every ``retrain.interval``
    env steps (stages/retrain.py).
    """
    sched, total = cfg.schedule, cfg.schedule.online_steps
    env = make_env(cfg.env, cfg.domain, seed=cfg.seed)
    envs = [ctx.evaluator.env, env]
    progress, resumed = _start(ctx, cfg)
    if resumed:
        sampler.online.load_state(progress.buffer)
        restore_rng(resume_rng, envs)
        if bonus is not None and progress.bonus is not None:
            bonus.load_state(progress.bonus)
        if reference is not None and progress.reference is not None:
            reference.load_state(progress.reference)
    agent.begin_phase(M.ONLINE)
    bound_exploring_targets(agent, cfg, progress)
    if not resumed and not ctx.state.eval_history:  # no pre-training: score the initial policy at env step 0
        progress.results = ctx.evaluate(agent, M.ONLINE, 0)

    def save(rng: dict | None = None) -> None:
        progress.averager, progress.buffer = loop.averager.state(), sampler.online.state()
        progress.updates_since_log = loop.updates_since_log
        progress.bonus = bonus.state() if bonus is not None else None
        progress.reference = reference.state() if reference is not None else None
        ctx.save(agent, ONLINE_STAGE, envs, rng)

    def describe(m: dict) -> tuple[str, dict]:
        line = (f"online env step {progress.env_steps}/{total}: episodes={progress.episodes} "
                f"regret={progress.regret:.3f} updates/s={m[M.UPDATES_PER_SECOND]:.1f}")
        return line, {"episodes": progress.episodes, "regret": f"{progress.regret:.3f}",
                      "ups": f"{m[M.UPDATES_PER_SECOND]:.1f}"}

    loop = PhaseLoop(ctx, agent, M.ONLINE, progress, unit="env step", save=save, describe=describe,
                     extra=lambda: {M.GRAD_STEPS: agent.grad_steps}, updates_since_log=progress.updates_since_log,
                     log=Ticker(sched.log_interval, progress, "last_log_step", anchored=False),
                     evaluate=Ticker(sched.eval_interval_online or total, progress, "next_eval"),
                     checkpoint=Ticker(sched.checkpoint_interval, progress, "next_checkpoint"))
    hooks = ((Ticker(cfg.retrain.interval, progress, "next_retrain"), retrain_now),) if retrain_now else ()
    learner = Learner(agent, relabelled(sampler.sample, terminal_reward=cfg.exploration.terminal_reward), bonus,
                      cfg.exploration.coef)
    collector = COLLECTORS[cfg.algo.update_schedule](env, learner, sampler.online,
                                                     EpisodeLabeller(cfg, reference, ctx.tracker), cfg, progress, loop)

    with loop.running(total, "online fine-tuning", initial=progress.env_steps):
        while progress.env_steps < total or progress.pending_updates:
            if not progress.pending_updates:
                episode = collector.collect(total - progress.env_steps)
                if episode is None:
                    save(collector.interrupted())
                    raise Preempted(f"online env step {progress.env_steps}")
                _log_episode(ctx, progress, episode)
                bound_exploring_targets(agent, cfg, progress,
                                        transform_reward(np.asarray(episode.rewards, np.float32), cfg.algo))
            while progress.pending_updates:  # the episode schedule's updates, owed for the episode just stored
                loop.add(learner.update())
                progress.pending_updates -= 1
                ctx.step_done()
                loop.honour_preemption(f"online env step {progress.env_steps}, {progress.pending_updates} updates left")
            loop.point(progress.env_steps, final=progress.env_steps >= total, checkpoint_at=agent.grad_steps,
                       hooks=hooks)
    env.close()
    return {**{M.summary(M.ONLINE, k): v for k, v in progress.results.items()},
            M.CUMULATIVE_REGRET: progress.regret, M.EPISODES: float(progress.episodes), M.ENV_STEPS: float(progress.env_steps)}


def bound_exploring_targets(agent, cfg: Config, progress: OnlineProgress | None = None, rewards=None) -> None:
    """``exploration.target_bounds``: the exploring agent's TD target bound; while fine-tuning, from the reward range
    kept in the online progress (checkpointed), widened by each episode's (transformed) ``rewards`` and never
    narrowed, as OOO's."""
    if cfg.exploration.target_bounds is None:
        return
    bounds = list(cfg.exploration.target_bounds)
    if progress is not None:
        progress.reward_range = widened(progress.reward_range or bounds, rewards)
        bounds = progress.reward_range
    agent.target_bounds = target_bounds(bounds, cfg.algo.gamma)


def _start(ctx: RunContext, cfg: Config) -> tuple[OnlineProgress, bool]:
    """The online progress to continue (a resumed run), or a fresh one with its first due points."""
    if ctx.state.online is not None:
        return ctx.state.online, True
    sched = cfg.schedule
    ctx.state.online = OnlineProgress(next_eval=sched.eval_interval_online or sched.online_steps,
                                      next_checkpoint=sched.checkpoint_interval, next_retrain=cfg.retrain.interval)
    return ctx.state.online, False


def _log_episode(ctx: RunContext, progress: OnlineProgress, episode: Episode) -> None:
    """A finished training episode: its return, success and length, and the run's regret so far."""
    progress.episodes += 1
    progress.regret_sum += 1.0 - episode.score
    ctx.tracker.log_metrics({
        M.train(M.ONLINE, M.EPISODE_RETURN): float(episode.rewards.sum()),
        M.train(M.ONLINE, M.EPISODE_SUCCESS): float(episode.succeeded),
        M.train(M.ONLINE, M.EPISODE_LENGTH): len(episode),
        M.CUMULATIVE_REGRET: progress.regret,
        M.EPISODES: progress.episodes,
    }, progress.env_steps)
