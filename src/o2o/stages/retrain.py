"""Offline retraining (``retrain=ooo``) after fine-tuning (OOO: Sobol Mark et al., "Offline Retraining for
Online RL: Decoupled Policy Learning to Mitigate Exploration Bias", MaxSobolMark/OOO).

Fine-tuning explores (optimistically, with ``exploration=rnd`` as OOO does); then a fresh agent of the same
algorithm is trained from scratch, offline, on everything seen: the offline data and every online transition,
with the task's rewards (the buffers never hold a bonus). Its evaluations are ``retrain/eval/*`` over its gradient
steps, its summary ``retrain/<metric>``; it is logged as the MLflow model ``retrained_policy``. Checkpoints keep
the fine-tuned agent beside the retraining one, so a preempted retraining resumes where it stopped.
"""
from __future__ import annotations

import contextlib

import torch

from o2o import metrics as M
from o2o.buffers import Batch, MixedSampler, TransitionBuffer
from o2o.checkpoints import capture_rng, restore_rng
from o2o.run_state import RETRAIN_STAGE
from o2o.agents.networks import EnsembleCritic
from o2o.stages.common import Learner, RunContext, log, relabelled, target_bounds
from o2o.stages.offline import pretrain


def prepare(agent, cfg, offline: TransitionBuffer, online: TransitionBuffer) -> None:
    """The retraining options on a fresh agent: the TD target bounded by the data's rewards, min and max over
    1 - gamma (OOO's conservative_sac_exploitation.py, bound_q_functions_according_to_data: over the offline data and
    the replay buffer), and, where asked, the critics' last hidden features normalised (a switch OOO's model.py
    defines and its exploitation script never passes: off in their runs, conf/retrain/ooo.yaml)."""
    if cfg.retrain.feature_normalization:  # every ensemble, also one an agent wraps (normaliser, clamp)
        for module in (*agent.critic.modules(), *agent.critic_target.modules()):
            if isinstance(module, EnsembleCritic):
                module.normalize_features = True
    if cfg.retrain.clip_targets:
        rewards = torch.cat([offline.rewards(), online.rewards()]) + reward_shift(cfg)
        agent.target_bounds = target_bounds([float(rewards.min()), float(rewards.max())], cfg.algo.gamma)


def reward_shift(cfg) -> float:
    """``retrain.reward_bias``: what the retrained agent adds to the stored rewards (the run's bias taken back)."""
    return 0.0 if cfg.retrain.reward_bias is None else cfg.retrain.reward_bias - cfg.algo.reward_bias


def retraining_batches(offline: TransitionBuffer, online: TransitionBuffer, cfg):
    """The retrained agent's batches: offline and online by ``retrain.mixing_ratio``; with ``retrain.upsample_batch``,
    that many more drawn from the online transitions at the online buffer's highest reward (OOO's
    conservative_sac_exploitation.py, upsample_batch_size: the replay buffer's rows whose reward reaches its max,
    concatenated to every batch); then relabelled (``retrain.reward_bias``, ``retrain.terminal_reward``)."""
    sample = MixedSampler(offline, online, cfg.buffer.batch_size, cfg.retrain.mixing_ratio).sample
    extra = cfg.retrain.upsample_batch
    if extra and len(online):
        rewards = online.rewards()
        best = torch.nonzero(rewards >= rewards.max()).squeeze(1)
        mixed = sample

        def sample() -> Batch:
            batch = mixed()
            top = online.batch(best[torch.randint(0, len(best), (extra,), device=best.device)])
            return Batch(*(None if a is None else torch.cat([a, b]) for a, b in zip(batch, top)))

    return relabelled(sample, reward_shift(cfg), cfg.retrain.terminal_reward)


@contextlib.contextmanager
def evaluated_on(evaluator, episodes: int):
    """The evaluator runs ``retrain.eval_episodes`` while a retrained agent is scored (OOO: 100)."""
    before, evaluator.episodes = evaluator.episodes, episodes
    try:
        yield
    finally:
        evaluator.episodes = before


def retrain_during_finetuning(make_fresh_agent, offline: TransitionBuffer, online: TransitionBuffer, cfg,
                              ctx: RunContext):
    """``retrain.interval``: a callable that, at an env step of fine-tuning, trains a fresh agent offline on the data
    so far and logs its score as ``online_retrained/eval/*`` at that step: a measurement, the agent never acts.
    It runs on forked random streams, so the fine-tuning run goes on exactly as it would without it. A preempted
    run redoes an interrupted retraining from its start."""

    def retrain_now(env_step: int) -> None:
        envs = [ctx.evaluator.env]
        saved = capture_rng(envs)
        with torch.random.fork_rng(devices=[] if offline.device.type == "cpu" else [offline.device]):
            torch.manual_seed(cfg.seed + env_step)
            agent = make_fresh_agent()
            prepare(agent, cfg, offline, online)
            agent.begin_phase(M.RETRAIN)
            sample = retraining_batches(offline, online, cfg)
            for _ in range(cfg.retrain.steps):
                agent.update(sample())
            ctx.check_finite_parameters(agent, M.ONLINE_RETRAINED)
            with evaluated_on(ctx.evaluator, cfg.retrain.eval_episodes):
                results = ctx.evaluator(agent)
        restore_rng(saved, envs)
        ctx.tracker.log_metrics({M.evaluation(M.ONLINE_RETRAINED, k): v for k, v in results.items()}, env_step)
        log.info("retrained on the data of %d env steps: %s", env_step,
                 ", ".join(f"{k}={v:.3f}" for k, v in results.items()))

    return retrain_now


def retrain(finetuned, make_fresh_agent, offline: TransitionBuffer, online: TransitionBuffer, cfg,
            ctx: RunContext, online_final: dict):
    """Train a fresh agent on offline + online data; returns (its summary, the agent)."""
    state = ctx.state
    if state.stage != RETRAIN_STAGE:  # entering: what the fine-tuned run needs to be resumed around retraining
        state.online_final = dict(online_final)
        state.online.buffer = online.state()
        state.finetuned_agent = finetuned.checkpoint()
    with torch.random.fork_rng(devices=[] if finetuned.device.type == "cpu" else [finetuned.device]):
        torch.manual_seed(cfg.seed + 1)  # its own initialisation, whatever the global stream has consumed
        agent = make_fresh_agent()
    if state.stage == RETRAIN_STAGE and state.retrain is not None:
        agent.restore(state.agent)
    prepare(agent, cfg, offline, online)
    sample = retraining_batches(offline, online, cfg)
    log.info("offline retraining: a fresh %s (%s) on %d offline and %d online transitions, %d gradient steps",
             cfg.algo.name, "CQL, no calibration" if cfg.retrain.with_cql else "the run's algorithm",
             len(offline), len(online), cfg.retrain.steps)
    with evaluated_on(ctx.evaluator, cfg.retrain.eval_episodes):
        return pretrain(agent, Learner(agent, sample), cfg.retrain.steps, ctx, phase=M.RETRAIN), agent
