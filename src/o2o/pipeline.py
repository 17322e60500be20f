"""config -> dataset -> reference returns -> offline pre-training -> online fine-tuning -> evaluation."""
from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from o2o.agents.cql import CQL
from o2o.agents.iql import IQL
from o2o.agents.sac import SAC
from o2o.buffers import MixedSampler, TransitionBuffer
from o2o.checkpoints import FINAL, Checkpoints, Preempted, restore_rng
from o2o.config import Config, ConfigError
from o2o.data.dataset import dataset_reference_scores, load_offline_data
from o2o.envs import make_env, transform_reward
from o2o.report import run_plot
from o2o.returns import returns_to_go
from o2o.stages.common import RunContext
from o2o.stages.evaluate import Evaluator
from o2o.stages.offline import pretrain
from o2o.stages.online import finetune
from o2o.tracking import Tracker

log = logging.getLogger("o2o")

AGENTS = {"cql": CQL, "calql": CQL, "iql": IQL, "sac": SAC, "rlpd": SAC}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """AMX or AVX512-BF16; without them CPU bf16 matmuls are emulated and far slower than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return True  # cannot tell: do not warn
    return "amx_bf16" in flags or "avx512_bf16" in flags


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def offline_buffer(data, cfg: Config, device: torch.device) -> TransitionBuffer:
    """Stage 2 applied: transformed rewards and their returns-to-go, on the device."""
    rewards = transform_reward(data.rewards, cfg.env)
    fail_reward = float(transform_reward(cfg.env.fail_reward, cfg.env)) if cfg.env.sparse else None
    mc_returns = returns_to_go(rewards, data.episode_ends, cfg.algo.gamma, fail_reward)
    buffer = TransitionBuffer(len(data), data.observations.shape[1], data.actions.shape[1], device)
    buffer.add(data.observations, data.actions, rewards, data.next_observations, data.terminals, mc_returns)
    return buffer


RUN_ID_FILE = "mlflow_run_id"
PARENT_RUN_ENV = "O2O_PARENT_RUN_ID"


def run_pipeline(cfg: Config, run_dir: str | Path, resolved: dict | None = None,
                 tags: dict | None = None) -> dict[str, float]:
    """Run every stage of one job and log it to MLflow; returns the final metrics.

    A run directory that holds a checkpoint resumes from it, in the same
    MLflow run; one that holds a finished run returns its final metrics.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = resolved if resolved is not None else OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    checkpoints = Checkpoints(run_dir)
    resume = checkpoints.load()
    if resume is not None:
        if resume.get("config") != resolved:
            raise ConfigError(f"{run_dir} holds a run with another config: resume it with the same overrides, "
                              "or give this one its own run directory (hydra.run.dir=...)")
        if resume["stage"] == "final":
            log.info("%s already finished; nothing to do", run_dir)
            return resume["final"]
        log.info("resuming %s from its %s checkpoint (%d gradient steps)", run_dir, resume["stage"],
                 resume["agent"]["grad_steps"])
    seed_everything(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    if cfg.precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        log.warning("precision=bf16 on a CPU without AMX or AVX512-BF16: matmuls are emulated and much slower "
                    "than fp32 (measured 0.2 vs 7 updates/s at 3x256 on an AVX2 CPU); use precision=fp32 here")

    # Stage 1 before MLflow: a missing or mismatched dataset stops the job before anything is written.
    probe_env = make_env(cfg.env, training=True)
    obs_shape, act_shape = probe_env.observation_space.shape, probe_env.action_space.shape
    probe_env.close()
    if cfg.algo.offline_data:
        data = load_offline_data(cfg.env, obs_shape, act_shape)
        data_min, data_max = data.ref_min_score, data.ref_max_score
    else:  # online from scratch: the dataset is only asked for its reference scores
        data = None
        data_min, data_max = dataset_reference_scores(cfg.env)
    ref_min = data_min if data_min is not None else cfg.env.ref_min_score
    ref_max = data_max if data_max is not None else cfg.env.ref_max_score

    run_id_file = run_dir / RUN_ID_FILE
    run_id = run_id_file.read_text().strip() if run_id_file.exists() else None
    run_tags = {"env": cfg.env.name, "algo": cfg.algo.name, "dataset": cfg.env.dataset.id or cfg.env.dataset.path,
                "seed": str(cfg.seed), "stage": "dataset", "device": str(device), "run_dir": str(run_dir),
                **(tags or {})}
    tracker = Tracker(cfg.experiment, cfg.run_name or f"{cfg.algo.name}-{cfg.env.name}-s{cfg.seed}", resolved,
                      run_tags, run_id=run_id, parent_run_id=os.environ.get(PARENT_RUN_ENV))
    run_id_file.write_text(tracker.run_id)
    try:
        if run_id is None:
            config_path = run_dir / "resolved_config.yaml"
            config_path.write_text(OmegaConf.to_yaml(resolved))
            tracker.log_artifact(config_path)
            tracker.log_params({"data.ref_min_score": ref_min, "data.ref_max_score": ref_max})
            if data is not None:
                tracker.log_params({"data.transitions": len(data), "data.episodes": data.num_episodes})
        offline = None
        if data is not None:
            log.info("dataset %s: %d transitions, %d episodes, reference scores %s / %s",
                     data.source, len(data), data.num_episodes, ref_min, ref_max)
            offline = offline_buffer(data, cfg, device)
            tracker.set_tags({"stage": "reference_returns"})
        obs_dim, act_dim = obs_shape[0], act_shape[0]
        agent = AGENTS[cfg.algo.name](obs_dim, act_dim, cfg.algo, device, cfg.precision)
        evaluator = Evaluator(cfg.env, ref_min, ref_max, cfg.seed)
        ctx = RunContext(tracker, evaluator, cfg.schedule, checkpoints, progress=cfg.progress,
                         payload={"config": resolved, "run_id": tracker.run_id,
                                  "eval_history": list(resume.get("eval_history", [])) if resume else []})
        stage = resume["stage"] if resume else None
        if resume:
            agent.restore(resume["agent"])
            if stage == "offline":
                restore_rng(resume["rng"], [evaluator.env])

        with ctx.guard:
            try:
                final = run_stages(agent, offline, cfg, ctx, resume)
            except Preempted as stop:
                log.warning("preempted at %s; checkpoint saved in %s", stop, checkpoints.folder)
                tracker.set_tags({"stage": "preempted"})
                tracker.flush()
                ctx.guard.finish()

        checkpoints.save({**ctx.payload, "stage": "final", "final": final, "agent": agent.checkpoint()}, final=True)
        tracker.log_artifact(checkpoints.folder / FINAL, "checkpoints")
        tracker.log_metrics({f"final/{k.replace('/', '_')}": v for k, v in final.items()}, agent.grad_steps)
        tracker.flush()
        tracker.log_artifact(run_plot(tracker.client, tracker.run_id, run_dir / "plots" / "run.png"), "plots")
        tracker.set_tags({"stage": "finished"})
        tracker.end("FINISHED")
        return final
    except KeyboardInterrupt:
        tracker.end("KILLED")
        raise
    except Exception:
        tracker.end("FAILED")
        raise


def run_stages(agent, offline, cfg: Config, ctx: RunContext, resume: dict | None) -> dict[str, float]:
    """Offline pre-training, then online fine-tuning, each from its checkpoint when resuming."""
    stage = resume["stage"] if resume else None
    final: dict[str, float] = {}
    if cfg.algo.pretrain and cfg.schedule.offline_steps and stage in (None, "offline"):
        ctx.tracker.set_tags({"stage": "offline"})
        final.update(pretrain(agent, offline, cfg.buffer.batch_size, cfg.schedule.offline_steps,
                              cfg.algo.calibrated and cfg.algo.calibrate_offline, ctx,
                              resume["offline"] if stage == "offline" else None))
    elif stage == "online":
        final.update(resume["offline_final"])
    if cfg.schedule.online_steps:
        ctx.tracker.set_tags({"stage": "online"})
        ctx.payload["offline_final"] = final.copy()
        online = TransitionBuffer(cfg.buffer.online_capacity, agent.obs_dim, agent.act_dim, agent.device)
        sampler = MixedSampler(offline, online, cfg.buffer.batch_size, cfg.mixing_ratio)
        final.update(finetune(agent, sampler, cfg, cfg.seed, ctx, resume["online"] if stage == "online" else None,
                              resume["rng"] if stage == "online" else None))
    return final
