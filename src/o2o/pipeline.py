"""config -> dataset -> reference returns -> offline pre-training -> online fine-tuning -> evaluation.

:func:`run_pipeline` reads as the list of those steps; each step is a small
function below it.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from omegaconf import OmegaConf

from o2o import metrics as M, mlflow_view
from o2o.agents.core import ActorCritic, ObservationStats
from o2o.agents.registry import agent_class
from o2o.agents.encoders import PixelObservation
from o2o.buffers import MixedSampler, TransitionBuffer, episode_next_actions, transition_bytes
from o2o.checkpoints import FINAL, Checkpoints, Preempted, restore_rng
from o2o.config import Config, doubtful_settings, planned_updates
from o2o.data.dataset import dataset_reference_scores, load_offline_data
from o2o.data.offline_data import OfflineData, episode_slices
from o2o.envs import acts_in_unit_box, make_env
from o2o.errors import ConfigError, DatasetError, Diverged, disk_full
from o2o.lineage import (DATA_DIGEST, OFFLINE_CONTEXT, ONLINE_CONTEXT, log_dataset, offline_dataset, offline_digest,
                         online_dataset)
from o2o.policy_model import POLICY, PRETRAINED_POLICY, RETRAINED_POLICY, log_policy, policy_metadata
from o2o.report import run_plot, setting_tag
from o2o.returns import label_rewards
from o2o.exploration import make_bonus
from o2o.reference import LearnedReference, QuantileReference, reference_error
from o2o.run_state import (FINAL_STAGE, MACHINES_TAG, OFFLINE_STAGE, ONLINE_STAGE, RETRAIN_STAGE, RunState,
                          add_machine)
from o2o.runtime import THREADS_REASON_TAG, THREADS_TAG, ThreadGovernor, choose_compile, machine, setup_runtime
from o2o.stages.calibration import CalibrationProbe
from o2o.stages.common import Learner, RunContext, relabelled
from o2o.stages.evaluate import Evaluator
from o2o.stages.offline import pretrain
from o2o.stages.online import bound_exploring_targets, finetune
from o2o.stages.retrain import retrain, retrain_during_finetuning
from o2o.tracking import (PARENT_RUN_ENV, PRESET_TAG, SETTING_TAG, Tracker, check_store, default_tracking_uri, flatten,
                          open_store, param_values, store_not_made)

log = logging.getLogger("o2o")

RUN_ID_FILE = "mlflow_run_id"
PER_DOMAIN_TAG = "per_domain"  # which per-domain values the run used and their file (o2o.config_sources)
RESOLVED_CONFIG = "resolved_config.yaml"
CALIBRATION_BATCH_USED_TAG = "calibration_batch_used"  # the calibration probe's size


RUN_CLAIM = ".o2o-run.lock"
_claims: dict[str, object] = {}  # run folder -> its open, locked claim file, for this process's life


def holds_claim(run_dir: Path) -> bool:
    """Whether this process holds the claim on ``run_dir`` (claim_run_dir)."""
    return str(run_dir.resolve()) in _claims


def in_use(run_dir: Path, handle, instead: str = "give this job its own hydra.run.dir") -> ConfigError:
    """The refusal for a run folder whose claim file (``handle``, open) another process holds; it names that one."""
    handle.seek(0)
    holder = handle.read().strip() or "another process"
    return ConfigError(f"run folder {run_dir} is in use by {holder}: wait for it to end, or {instead}")


def refuse_a_claimed_sweep_dir(sweep_dir: Path) -> None:
    """Before a sweep starts in an existing sweep folder (the same command again, continuing it): stop when a job
    folder in it is held by a process still running, which Hydra would otherwise write over (its ``.hydra/``, the
    sweep's ``multirun.yaml``) before that job's claim refuses it."""
    for claim in sorted(sweep_dir.rglob(RUN_CLAIM)):  # job folders at any depth (a nested hydra.sweep.subdir)
        refuse_a_claimed_run_dir(claim.parent, instead="give this sweep its own hydra.sweep.dir")


def refuse_a_claimed_run_dir(run_dir: Path, instead: str = "give this job its own hydra.run.dir") -> None:
    """Before Hydra writes its records into an existing run folder: stop when another process holds its claim (its
    job's ``.hydra/`` stays as that job wrote it). The claim is only tested, never kept."""
    import fcntl

    if str(run_dir.resolve()) in _claims:  # this process's own (a rerun through the Python API)
        return
    try:
        handle = open(run_dir / RUN_CLAIM)  # read only: a folder without a claim file is not claimed
    except OSError:
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise in_use(run_dir, handle, instead) from None
        except OSError:  # no locks on this file system: claim_run_dir says so
            return


def claim_run_dir(run_dir: Path):
    """An exclusive claim on the run folder (an flock on a file in it, released when the process ends however it
    ends): a second job pointed at the same folder while the first runs stops with one line instead of writing
    into the same checkpoints and MLflow run. The same process may claim it again (a rerun through the Python API)."""
    import fcntl

    key = str(run_dir.resolve())
    if key in _claims:
        return _claims[key]
    handle = open(run_dir / RUN_CLAIM, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        refusal = in_use(run_dir, handle)
        handle.close()
        raise refusal from None
    except OSError as err:  # a file system without locks (NFS without lockd): run, unclaimed, and say so
        log.warning("run folder %s cannot be locked (%s): nothing stops a second job from using it at once",
                    run_dir, err)
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()}")
    handle.flush()
    _claims[key] = handle
    return handle


def run_pipeline(cfg: Config, run_dir: str | Path, resolved: dict | None = None,
                 tags: dict | None = None, summary: bool = True, warnings: Sequence[str] = ()) -> dict[str, float]:
    """Run every stage of one job and log it to MLflow; returns the final metrics.

    A run directory that holds a checkpoint resumes from it, in the same
    MLflow run; one that holds a finished run returns its final metrics.
    ``warnings`` are the caller's doubts about the config, logged with this
    module's own where work starts (not again for a finished run).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    claim_run_dir(run_dir)  # held until this process ends: one job per run folder
    resolved = resolved if resolved is not None else OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    checkpoints = Checkpoints(run_dir)
    resume = load_resume_state(checkpoints, resolved, run_dir)
    check_linked_run(run_dir)
    if resume is not None and resume.finished:
        final = complete_finished(resume, checkpoints, cfg, run_dir)
        if summary:
            print_summary(cfg, final, run_dir, resume.run_id, (tags or {}).get(PER_DOMAIN_TAG))
        return final
    if resume is None and not (run_dir / RUN_ID_FILE).exists():
        done = finished_elsewhere(resolved, (tags or {}).get("overrides", ""), run_dir)
        if done is not None:
            return done
    for doubt in (*warnings, *doubtful_settings(cfg)):
        log.warning("%s", doubt)
    runtime = setup_runtime(cfg, started_precision=resume.precision if resume is not None else None)
    device = runtime.device
    check_store(default_tracking_uri())
    data = load_data(cfg)  # before MLflow: a missing or mismatched dataset stops the job before anything is written
    check_memory(cfg, data.observation, data.act_dim, len(data.offline) if data.offline is not None else 0, device)
    if data.offline is not None and cfg.buffer.batch_size > len(data.offline):
        raise DatasetError(f"buffer.batch_size={cfg.buffer.batch_size} is more than the {len(data.offline)} offline "
                           f"transitions of {data.offline.source}: lower buffer.batch_size")
    if data.offline is not None and cfg.calibration_batch > len(data.offline):
        log.warning("calibration_batch=%d is more than the %d offline transitions: the calibration batch is all of them",
                    cfg.calibration_batch, len(data.offline))
    check_same_data(run_dir, data)
    tracker = start_tracking(cfg, run_dir, resolved, data, device, {**(tags or {}), **runtime.tags()})
    preempted = False
    try:
        offline = offline_buffer(data.offline, cfg, device) if data.offline is not None else None
        tracker.set_tags({"stage": "reference_returns"})
        reference = fit_reference(offline, cfg, tracker,
                                  data.offline.recorded_episode_ends if offline is not None else None,
                                  resume is None)
        obs_stats = (ObservationStats.of(data.offline.observations)
                     if data.offline is not None and not isinstance(data.observation, PixelObservation) else None)
        agent = make_agent(cfg, data.observation, data.act_dim, device, runtime.precision, runtime.compile, obs_stats)
        evaluator = Evaluator(cfg, data.ref_min, data.ref_max)
        state = resume or RunState(config=resolved, run_id=tracker.run_id, precision=runtime.precision)
        tracker.set_tags({MACHINES_TAG: add_machine(state, machine(), resumed=resume is not None)})
        governor = None
        if not cfg.threads and device.type == "cpu":
            governor = ThreadGovernor(cfg.buffer.batch_size, cfg.algo.critic_hidden, runtime.threads,
                                      lambda n, why: tracker.set_tags({THREADS_TAG: n, THREADS_REASON_TAG: why}))
        probe = (CalibrationProbe(offline, cfg.calibration_batch, cfg.seed)
                 if offline is not None and cfg.calibration_batch else None)
        if probe is not None:  # its size: calibration_batch, or all the offline transitions where they are fewer
            tracker.set_tags({CALIBRATION_BATCH_USED_TAG: str(len(probe.batch.rewards))})
        ctx = RunContext(tracker, evaluator, cfg.schedule, checkpoints, state, progress=cfg.progress,
                         divergence_guard=cfg.divergence_guard, threads=governor, calibration=probe)
        resume_rng = None
        if resume is not None:
            agent.restore(resume.finetuned_agent if resume.stage == RETRAIN_STAGE else resume.agent)
            if resume.stage in (OFFLINE_STAGE, RETRAIN_STAGE):  # offline stages: the evaluation env is all there is
                restore_rng(resume.rng, [evaluator.env])
            else:
                resume_rng = resume.rng
        with ctx.guard:
            try:
                final = run_stages(agent, offline, cfg, ctx, resume_rng, reference)
            except Preempted as stop:
                log.warning("preempted at %s; checkpoint saved in %s", stop, checkpoints.folder)
                tracker.set_tags({"stage": "preempted"})
                tracker.end("KILLED")  # stopped from outside, as a Ctrl-C: the same command resumes it
                preempted = True
                ctx.guard.finish()  # exits (128 + the signal), after a requeue where the launcher asks for one
            finish(agent, cfg, ctx, final, run_dir)  # a stop asked for here waits for the finish: the run is complete
        if ctx.guard.requested:
            log.warning("the stop asked for came while the run was finishing: it finished (nothing to resume)")
        if summary:
            print_summary(cfg, final, run_dir, tracker.run_id, (tags or {}).get(PER_DOMAIN_TAG))
        return final
    except Diverged as err:
        tracker.set_tags({"stage": "diverged", "failure": str(err)[:5000]})
        tracker.end("FAILED")
        raise
    except BaseException as err:  # an interrupt ends the run KILLED, any other error FAILED with its reason
        if not preempted:  # a preempted run ended KILLED above; its exit is not a failure
            end_with(tracker, err)
        raise


def finished_elsewhere(resolved: dict, overrides: str, run_dir: Path) -> dict[str, float] | None:
    """A job new to this run folder whose sweep already holds its finished run (restored from the study's records
    on another machine, o2o.archive, or finished in a run folder since lost): that run's summary, nothing rerun."""
    from o2o.archive import ARCHIVED_TAG, finished_in_sweep

    uri = default_tracking_uri()
    check_store(uri)
    if store_not_made(uri):
        return None
    run = finished_in_sweep(open_store(uri), resolved, overrides)
    if run is None:
        return None
    origin = run.data.tags.get(ARCHIVED_TAG)
    log.info("%s: this sweep already holds the finished run %s%s; nothing to do", run_dir, run.info.run_id,
             f" (restored from the records of run {origin})" if origin else "")
    return {key: value for name, value in run.data.metrics.items() if (key := M.summary_of_final(name))}


def check_linked_run(run_dir: Path) -> None:
    """A run folder linked to an MLflow run continues that run: it must be in this store, and not deleted."""
    run_id_file = run_dir / RUN_ID_FILE
    if not run_id_file.exists():
        return
    uri = default_tracking_uri()
    check_store(uri)
    run_id = run_id_file.read_text().strip()
    from mlflow.exceptions import MlflowException

    try:
        run = open_store(uri).get_run(run_id)
    except MlflowException:
        raise ConfigError(f"{run_dir} continues MLflow run {run_id!r}, which the store {uri} does not hold (another "
                          "store, or deleted for good): set MLFLOW_TRACKING_URI to the store it was logged to, or give "
                          "this run its own run directory (hydra.run.dir=...)") from None
    if run.info.lifecycle_stage == "deleted":
        raise ConfigError(f"{run_dir} continues MLflow run {run_id}, which was deleted in {uri}: restore it "
                          f"(mlflow runs restore --run-id {run_id}), or give this run its own run directory "
                          "(hydra.run.dir=...)")


def load_resume_state(checkpoints: Checkpoints, resolved: dict, run_dir: Path) -> Optional[RunState]:
    """The run directory's checkpoint, if any; it must come from the same config."""
    resume = checkpoints.load()
    recorded = run_dir / RESOLVED_CONFIG
    if resume is None and recorded.exists():  # started, no checkpoint yet: its config still binds the run dir
        try:
            before = OmegaConf.to_container(OmegaConf.load(recorded), resolve=True)
        except Exception as err:  # not YAML, or interpolations that no longer resolve
            raise ConfigError(f"{recorded} cannot be read ({type(err).__name__}), so what this run dir was started "
                              "with is unknown: restore the file, or give this run its own run directory "
                              "(hydra.run.dir=...)") from None
        if before != resolved:
            raise ConfigError(f"{run_dir} holds a run started with another config ({config_difference(before, resolved)})"
                              ": rerun it with the same overrides, or give this one its own run directory "
                              "(hydra.run.dir=...)")
        return None
    if resume is None:
        return None
    if resume.config != resolved:
        if resume.finished and set(differing_keys(resume.config, resolved)) <= set(RUNNING_KEYS):
            log.info("%s holds this job's finished run, run with other %s (how a job runs, not what it computes): "
                     "nothing to do", run_dir, config_difference(resume.config, resolved))
            return resume
        raise ConfigError(f"{run_dir} holds a run with another config ({config_difference(resume.config, resolved)}): "
                          "resume it with the same overrides, or give this one its own run directory "
                          "(hydra.run.dir=...)")
    if not resume.finished:
        log.info("resuming %s from its %s checkpoint (%d gradient steps)", run_dir, resume.stage,
                 resume.agent["grad_steps"])
    return resume


# How a job runs, not what it computes: a finished run in its folder matches its job whatever they were; an
# unfinished one resumes only with the values its MLflow params hold. (The MLflow keys stay compared: a finish
# killed half-way is completed with the job's config. o2o.archive matches a sweep's restored runs without them.)
RUNNING_KEYS = ("threads", "progress", "device")


def differing_keys(recorded: dict, given: dict) -> list[str]:
    """The (dotted) keys two resolved configs differ in, one side's absent key included."""
    before, now = flatten(recorded), flatten(given)
    return sorted(k for k in before.keys() | now.keys() if k not in before or k not in now or before[k] != now[k])


def config_difference(recorded: dict, given: dict, shown: int = 3) -> str:
    """The keys two resolved configs differ in, each with the run's value and the one given now."""
    before, now = flatten(recorded), flatten(given)
    keys = differing_keys(recorded, given)
    parts = [f"{k}: {before.get(k, 'absent')} in the run, {now.get(k, 'absent')} now" for k in keys[:shown]]
    return "; ".join(parts) + (f"; and {len(keys) - shown} more" if len(keys) > shown else "")


def free_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def mlp_parameters(widths: list[int]) -> int:
    return sum((a + 1) * b for a, b in zip(widths[:-1], widths[1:]))


def update_memory_lower_bound(cfg: Config, observation: "int | PixelObservation", act_dim: int) -> int:
    """Bytes an update needs at least (float32): the critics, their targets and the actor with gradients and Adam's
    two moments, and one batch through every critic layer (CQL's sampled actions multiply this; not counted; nor are
    an image encoder's weights and activations)."""
    algo = cfg.algo
    obs_dim = observation.features if isinstance(observation, PixelObservation) else observation
    critic = algo.ensemble_size * mlp_parameters([obs_dim + act_dim, *algo.critic_hidden, 1])
    actor = mlp_parameters([obs_dim, *algo.actor_hidden, 2 * act_dim])
    weights = critic * 2 + actor + 3 * (critic + actor)  # + targets; grads, Adam m and v of what is trained
    batch = cfg.buffer.batch_size
    activations = batch * (algo.ensemble_size * sum(algo.critic_hidden) + sum(algo.actor_hidden))
    return 4 * (weights + activations) + batch * stored_bytes(observation, act_dim, algo.reads_next_actions)


def stored_bytes(observation: "int | PixelObservation", act_dim: int, next_actions: bool) -> int:
    """Bytes of one transition in a TransitionBuffer: float rows, and uint8 frames where observations are images."""
    if isinstance(observation, PixelObservation):
        return transition_bytes(observation.flat_dim, act_dim, next_actions, frames=True)
    return transition_bytes(observation, act_dim, next_actions)


def check_memory(cfg: Config, observation: "int | PixelObservation", act_dim: int, offline_transitions: int,
                 device: torch.device) -> None:
    """The buffers are allocated whole, and the networks and one batch's activations must fit beside them: refuse
    sizes the device cannot hold before any work."""
    buffers = (online_rows(cfg) + offline_transitions) * stored_bytes(observation, act_dim, cfg.algo.reads_next_actions)
    update = update_memory_lower_bound(cfg, observation, act_dim)
    free = free_memory(device)
    if buffers > free:
        raise ConfigError(f"buffer.online_capacity={cfg.buffer.online_capacity} needs {buffers / 2**30:.1f} GiB of buffers "
                          f"({offline_transitions} offline transitions beside it), {free / 2**30:.1f} GiB are free on "
                          f"{device.type}: lower buffer.online_capacity")
    if buffers + update > free:
        raise ConfigError(f"algo.critic_hidden={list(cfg.algo.critic_hidden)}, algo.actor_hidden="
                          f"{list(cfg.algo.actor_hidden)} and buffer.batch_size={cfg.buffer.batch_size} need at least "
                          f"{update / 2**30:.1f} GiB (the networks with their Adam state and one batch's activations) "
                          f"beside {buffers / 2**30:.1f} GiB of buffers; {free / 2**30:.1f} GiB are free on "
                          f"{device.type}: use smaller networks or batches")


def online_rows(cfg: Config) -> int:
    """The online buffer's rows: its capacity, or the online steps where fewer (more rows would never be written)."""
    return min(cfg.buffer.online_capacity, max(cfg.schedule.online_steps, 1))


@dataclass
class RunData:
    offline: Optional[OfflineData]  # None when the algorithm never reads the offline data
    observation: "int | PixelObservation"  # the flat observation's size, or image frames and their encoder
    act_dim: int
    ref_min: Optional[float]
    ref_max: Optional[float]
    digest: Optional[str] = None  # the offline data's content digest (o2o.lineage.offline_digest)


def load_data(cfg: Config) -> RunData:
    """The env's shapes, the offline data (if the algorithm uses it) and the reference scores."""
    obs_shape, act_shape = env_shapes(cfg, check_info=True)
    if cfg.algo.uses_offline_data:
        data = load_offline_data(cfg.env, obs_shape, act_shape, cfg.domain.binary_from_success)
        data_min, data_max = data.ref_min_score, data.ref_max_score
    else:  # online from scratch: the dataset is only asked for its reference scores
        data = None
        data_min, data_max = dataset_reference_scores(cfg.env)
    ref_min = data_min if data_min is not None else cfg.env.ref_min_score
    ref_max = data_max if data_max is not None else cfg.env.ref_max_score
    if cfg.domain.metric == M.NORMALIZED_RETURN and (ref_min is None or ref_max is None):
        raise DatasetError(f"{cfg.env.name} is scored by D4RL's normalized return but neither its dataset nor the env "
                           "option gives reference scores: set env.ref_min_score and env.ref_max_score")
    if M.NORMALIZED_RETURN in cfg.domain.extra_metrics and (ref_min is None or ref_max is None):
        log.warning("%s: neither its dataset nor the env option gives reference scores, so its normalized_return is "
                    "logged as NaN: set env.ref_min_score and env.ref_max_score to have it", cfg.env.name)
    return RunData(data, observation_input(cfg, obs_shape), act_shape[0], ref_min, ref_max,
                   offline_digest(data) if data is not None else None)


def env_shapes(cfg: Config, check_info: bool = False) -> tuple[tuple, tuple]:
    """The observation (flat, or an image's (H, W, C)) and action shapes of the configured env; with ``check_info``,
    one whose steps do not report the success its domain reads stops here."""
    probe_env = make_env(cfg.env)
    shapes = probe_env.observation_space.shape, probe_env.action_space.shape
    try:
        space = probe_env.action_space
        if not acts_in_unit_box(space):
            raise ConfigError(f"{cfg.env.gym_id}'s actions are {space}, and every policy here acts in [-1, 1] (a "
                              "tanh): rescale the env's actions to [-1, 1] (gymnasium.wrappers.RescaleAction where "
                              "it is registered)")
        if check_info:
            check_success_info(probe_env, cfg)
    finally:
        probe_env.close()
    return shapes


def check_success_info(env, cfg: Config) -> None:
    """A domain that scores or rewards success reads ``info["success"]`` at every step, and an env that never sets
    it would score 0 everywhere without a word: one step of a random action says whether it does."""
    domain = cfg.domain
    readers = [name for name, reads in (
        (f"metric {M.SUCCESS_RATE}", M.SUCCESS_RATE in (domain.metric, *domain.extra_metrics)),
        ("binary_from_success", domain.binary_from_success), ("end_on_success", domain.end_on_success)) if reads]
    if not readers:
        return
    streams = np.random.get_state(), random.getstate()  # an env that draws from them leaves the run's as seeded
    env.reset(seed=cfg.seed)
    info = env.step(env.action_space.sample())[-1]
    np.random.set_state(streams[0])
    random.setstate(streams[1])
    if "success" not in info:
        raise ConfigError(f"{cfg.env.gym_id}'s steps report no info['success'], which domain {domain.name}'s "
                          f"{' and '.join(readers)} read: set info['success'] (a bool) at every step of the env, or "
                          f"give it a domain that reads none of them")


def observation_input(cfg: Config, obs_shape: tuple) -> "int | PixelObservation":
    """What the agent is built for: the flat observation's size, or, for an env whose observations are images
    (H, W, C), the frames with the configured encoder. Each without the other stops here."""
    if len(obs_shape) == 3:
        if cfg.encoder.name == "none":
            raise ConfigError(f"{cfg.env.name}'s observations are images {tuple(obs_shape)}: choose an image encoder "
                              "(encoder=impala_small)")
        return PixelObservation(tuple(int(n) for n in obs_shape), cfg.encoder)
    if cfg.encoder.name != "none":
        raise ConfigError(f"encoder={cfg.encoder.name} reads images, and {cfg.env.name}'s observations are flat "
                          f"{tuple(obs_shape)}: use encoder=none")
    return obs_shape[0]


def start_tracking(cfg: Config, run_dir: Path, resolved: dict, data: RunData, device: torch.device,
                   tags: dict | None) -> Tracker:
    """The run's MLflow run (continued when the run dir has one), with its params and resolved config."""
    run_id_file = run_dir / RUN_ID_FILE
    run_id = run_id_file.read_text().strip() if run_id_file.exists() else None
    end_orphans(open_store(default_tracking_uri()), cfg.mlflow_experiment, run_dir, run_id)
    run_tags = {"env": cfg.env.name, "algo": cfg.algo.name, "dataset": cfg.env.dataset.id or cfg.env.dataset.path or f"ogbench:{cfg.env.dataset.ogbench}",
                "seed": str(cfg.seed), "stage": "dataset", "device": str(device), "run_dir": str(run_dir),
                **(tags or {})}
    preset = run_tags.setdefault(PRESET_TAG, "none")
    run_tags[SETTING_TAG] = setting_tag(param_values(resolved), preset, data.digest)
    default_name = "-".join([cfg.algo.name, cfg.env.name, *([preset] if preset != "none" else []), f"s{cfg.seed}"])
    tracker = Tracker(cfg.mlflow_experiment, cfg.run_name or default_name,
                      resolved, run_tags, run_id=run_id, parent_run_id=os.environ.get(PARENT_RUN_ENV),
                      system_metrics_interval=cfg.mlflow.system_metrics_interval_s if cfg.mlflow.system_metrics else None)
    try:
        _record_run(cfg, run_dir, run_id_file, run_id, tracker, resolved, data)
        mlflow_view.publish(tracker.client, tracker.experiment_id, cfg.domain.metric,
                            mlflow_view.ui_address(tracker.uri))
    except BaseException as err:  # a run that exists in the store never stays RUNNING after its job is gone
        end_with(tracker, err)
        raise
    return tracker


def end_with(tracker: Tracker, err: BaseException) -> None:
    """The MLflow run's end when its job stops on an error: KILLED for an interrupt, else FAILED with the reason.
    A store that cannot take even that (its disk is full) keeps the run RUNNING; the next start ends it."""
    try:
        if isinstance(err, KeyboardInterrupt):
            tracker.end("KILLED")
            return
        tracker.set_tags({"failure": f"{type(err).__name__}: {err}"[:5000]})
        tracker.end("FAILED")
    except Exception as failed:
        if not disk_full(failed) and not disk_full(err):
            raise
        log.warning("the MLflow run could not be ended (%s)", str(failed).splitlines()[0][:200])


def _record_run(cfg: Config, run_dir: Path, run_id_file: Path, run_id: Optional[str], tracker: Tracker,
                resolved: dict, data: RunData) -> None:
    """The params, resolved config and dataset inputs (once), then the run folder's link to its MLflow run, written
    last: a job stopped before it leaves a run the next start marks FAILED (:func:`end_orphans`), never a linked
    run without its params."""
    logged = tracker.client.get_run(tracker.run_id).data.params if run_id is not None else {}
    if "data.ref_min_score" not in logged:
        config_path = run_dir / RESOLVED_CONFIG
        config_path.write_text(OmegaConf.to_yaml(resolved))
        tracker.log_artifact(config_path)
        tracker.log_params({"data.ref_min_score": data.ref_min, "data.ref_max_score": data.ref_max})
        if data.offline is not None:
            tracker.log_params({"data.transitions": len(data.offline), "data.episodes": data.offline.num_episodes})
    if data.offline is not None and DATA_DIGEST not in logged:  # a run started before the digest was kept gets it
        tracker.log_params({DATA_DIGEST: data.digest})
    if data.offline is not None:  # also when continuing: MLflow keeps one input per dataset and context
        log_dataset(tracker.client, tracker.run_id, offline_dataset(data.offline, cfg.env, data.digest),
                    OFFLINE_CONTEXT)
        log.info("dataset %s: %d transitions, %d episodes, reference scores %s / %s", data.offline.source,
                 len(data.offline), data.offline.num_episodes, _score(data.ref_min), _score(data.ref_max))
    run_id_file.write_text(tracker.run_id)


def check_same_data(run_dir: Path, data: RunData) -> None:
    """A run resumed on data other than it started on would mix two datasets in one run: stop, naming both digests
    (the run's param, kept since it started)."""
    run_id_file = run_dir / RUN_ID_FILE
    if data.digest is None or not run_id_file.exists():
        return
    started_on = open_store(default_tracking_uri()).get_run(run_id_file.read_text().strip()).data.params.get(DATA_DIGEST)
    if started_on is not None and started_on != data.digest:
        raise DatasetError(f"{data.offline.source}, as read now, is not the data this run started on (content digest "
                           f"{started_on}, now {data.digest}: another file, a rebuild on another machine, or a "
                           "version of this project that reads it otherwise): restore that data to resume the run, "
                           "or start another run in another folder (hydra.run.dir=...)")


def _score(value: Optional[float]) -> str:
    return "none" if value is None else f"{value:.6g}"


def end_orphans(client, experiment: str, run_dir: Path, keep: Optional[str]) -> None:
    """Runs of this run folder left RUNNING by a job that stopped before the folder recorded them (the folder's claim
    means no live job owns them) end FAILED, with the reason."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return
    folder = str(run_dir).replace("'", "\\'")
    for run in client.search_runs([exp.experiment_id], f"tags.run_dir = '{folder}' and attributes.status = 'RUNNING'"):
        if run.info.run_id != keep:
            client.set_tag(run.info.run_id, "failure", "orphaned: its job stopped before the run folder recorded it")
            client.set_terminated(run.info.run_id, "FAILED")
            log.warning("MLflow run %s of %s was left RUNNING by a stopped job; marked FAILED", run.info.run_id, run_dir)


def offline_buffer(data: OfflineData, cfg: Config, device: torch.device) -> TransitionBuffer:
    """Labelled offline transitions (transformed rewards, returns-to-go), on the device."""
    rewards, mc_returns = label_rewards(data.rewards, data.episode_ends, cfg.domain, cfg.algo, data.terminals)
    buffer = TransitionBuffer(len(data), int(np.prod(data.observations.shape[1:])), data.actions.shape[1], device,
                              cfg.algo.reads_next_actions, obs_shape=data.observations.shape[1:])
    buffer.add(data.observations, data.actions, rewards, data.next_observations, data.terminals, mc_returns,
               episode_next_actions(data.actions, data.episode_ends) if cfg.algo.reads_next_actions else None)
    return buffer


def fit_reference(offline: Optional[TransitionBuffer], cfg: Config, tracker: Tracker, episode_ends: np.ndarray,
                  log_fit: bool = True) -> Optional[LearnedReference | QuantileReference]:
    """A learned reference: with ``reference=regression|td``, a value network fitted on the offline data becomes V_ref
    (o2o.reference); its error against the Monte-Carlo returns goes to MLflow. Deterministic, so a resumed run
    fits it again (logging it once)."""
    if cfg.reference.value == "mc":
        return None
    b = offline.batch()
    if cfg.reference.value == "quantile":  # the recorded episodes' returns: V_ref at each start (a success the Adroit
        # rule made terminal starts no episode of its own)
        starts = torch.as_tensor([e.start for e in episode_slices(episode_ends)], device=offline.device)
        reference = QuantileReference(cfg.reference.tau, b.v_ref[starts].cpu().numpy())
        errors = reference_error(torch.full_like(b.v_ref, reference.threshold), b.v_ref)
        reference.attach(offline)
        if log_fit:
            tracker.log_metrics({M.reference(M.OFFLINE, k): v for k, v in errors.items() if math.isfinite(v)}, 0)
        log.info("V_ref: one threshold, the %g-quantile of the returns of %d offline episodes: %.3f",
                 cfg.reference.tau, len(starts), reference.threshold)
        return reference
    reference = LearnedReference(offline.obs_dim, cfg.reference, cfg.algo.gamma, cfg.seed, offline.device)
    errors = reference.fit(b.obs, b.rewards, b.next_obs, b.dones, b.v_ref,
                           log=tracker.log_metrics if log_fit else None)
    all_rows = torch.arange(len(offline), device=offline.device)
    offline.set_v_ref(all_rows, reference(b.obs).cpu().numpy())
    if log_fit:
        tracker.log_metrics({M.reference(M.OFFLINE, k): v for k, v in errors.items()}, cfg.reference.fit_steps)
    log.info("V_ref fitted by %s (%d steps): %s", cfg.reference.value, cfg.reference.fit_steps,
             ", ".join(f"{k}={v:.3f}" for k, v in errors.items()))
    return reference


def make_agent(cfg: Config, obs_dim: "int | PixelObservation", act_dim: int, device: torch.device, precision: str = "fp32",
               compiled: bool | None = None, obs_stats: ObservationStats | None = None) -> ActorCritic:
    """The configured algorithm's agent (its registered class, o2o.agents.registry); ``precision`` is what it
    computes in (``runtime.choose_precision``), ``compiled`` whether its update is one compiled graph (None: as
    ``compile`` decides, ``runtime.choose_compile``), ``obs_stats`` the offline data's observation statistics."""
    agent = agent_class(cfg.algo)(obs_dim, act_dim, cfg.algo, device, precision, planned_updates(cfg),
                                  obs_stats=obs_stats)
    if compiled is None:
        compiled = choose_compile(cfg.compile, device, planned_updates(cfg))[0]
    if compiled:
        agent.compile_update()  # compiles at the first update
    return agent


def run_stages(agent: ActorCritic, offline: Optional[TransitionBuffer], cfg: Config, ctx: RunContext,
               resume_rng: Optional[dict], reference: Optional[LearnedReference | QuantileReference] = None) -> dict[str, float]:
    """Offline pre-training, online fine-tuning, then (``retrain=ooo``) offline retraining, each from its
    checkpoint when resuming."""
    state = ctx.state
    final: dict[str, float] = {}
    bonus = make_bonus(cfg.exploration, agent.obs_dim, cfg.seed, agent.device)  # one for the whole run
    if cfg.algo.pretrain and cfg.schedule.offline_steps and state.stage == OFFLINE_STAGE:
        ctx.tracker.set_tags({"stage": "offline"})
        from_start = bonus if cfg.exploration.pretraining else None  # OOO's RND: from the first pre-training step
        if from_start is not None and state.offline is not None and state.offline.bonus is not None:
            from_start.load_state(state.offline.bonus)
        bound_exploring_targets(agent, cfg)
        sample = relabelled(lambda: offline.sample(cfg.buffer.batch_size), terminal_reward=cfg.exploration.terminal_reward)
        learner = Learner(agent, sample, from_start, cfg.exploration.coef or 0.0)
        final.update(pretrain(agent, learner, cfg.schedule.offline_steps, ctx))
        publish_policy(agent, cfg, ctx.tracker, PRETRAINED_POLICY)
    elif state.stage in (ONLINE_STAGE, RETRAIN_STAGE):
        final.update(state.offline_final)
    if not cfg.schedule.online_steps:
        return final
    online = TransitionBuffer(online_rows(cfg), agent.flat_obs_dim, agent.act_dim, agent.device,
                              cfg.algo.reads_next_actions, agent.pixels.shape if agent.pixels is not None else None)
    if reference is not None:
        reference.attach(online)
    def fresh_agent() -> ActorCritic:
        return make_agent(retraining_config(cfg), agent.observation, agent.act_dim, agent.device, agent.precision,
                          agent.compiled_update is not None, agent.obs_stats)

    if state.stage == RETRAIN_STAGE:  # fine-tuning is done: its buffer and summary are in the checkpoint
        online.load_state(state.online.buffer)
        final.update(state.online_final)
    else:
        ctx.tracker.set_tags({"stage": "online"})
        state.offline_final = final.copy()
        sampler = MixedSampler(offline, online, cfg.buffer.batch_size, cfg.algo.mixing_ratio)
        retrain_now = (retrain_during_finetuning(fresh_agent, offline, online, cfg, ctx)
                       if cfg.retrain.interval else None)
        final.update(finetune(agent, sampler, cfg, ctx, resume_rng, reference, bonus, retrain_now))
        log_dataset(ctx.tracker.client, ctx.tracker.run_id,
                    online_dataset(online, cfg.env.name, int(final[M.EPISODES])), ONLINE_CONTEXT)
    if cfg.retrain.steps:
        ctx.tracker.set_tags({"stage": "retrain"})
        online_final = {k: v for k, v in final.items() if k not in state.offline_final}
        summary, retrained = retrain(agent, fresh_agent, offline, online, cfg, ctx, online_final)
        final.update(summary)
        state.retrained_agent = retrained.checkpoint()
        publish_policy(retrained, cfg, ctx.tracker, RETRAINED_POLICY)
    return final


def retraining_config(cfg: Config) -> Config:
    """The config a retrained agent is built from: the run's, with CQL's calibration off for ``retrain.algorithm=cql``
    (OOO retrains with CQL, enable_calql=False)."""
    if not cfg.retrain.with_cql:
        return cfg
    return dataclasses.replace(cfg, algo=cfg.algo.conservative_retraining())


def publish_policy(agent: ActorCritic, cfg: Config, tracker: Tracker, name: str) -> None:
    """The agent's policy as an MLflow model of the run (``o2o.policy_model``); the final one may be registered."""
    if not cfg.mlflow.log_models:
        return
    env = make_env(cfg.env, seed=cfg.seed)
    example = env.reset(seed=cfg.seed)[0]
    env.close()
    log_policy(tracker.client, tracker.run_id, agent.actor, example, name, agent.grad_steps,
               policy_metadata(cfg, agent.grad_steps), cfg.mlflow.registered_model if name == POLICY else None)


def finish(agent: ActorCritic, cfg: Config, ctx: RunContext, final: dict[str, float], run_dir: Path) -> None:
    """The final checkpoint, then its publication (see :func:`publish_final`)."""
    state = ctx.state
    ctx.check_finite_parameters(agent, "final")
    state.stage, state.final, state.agent = FINAL_STAGE, final, agent.checkpoint()
    ctx.tracker.flush()  # every point in the store before final.pt exists: a rerun after final.pt logs only final/*
    ctx.checkpoints.save(state)
    publish_final(ctx.tracker, ctx.checkpoints, final, agent, cfg, run_dir)


def publish_final(tracker: Tracker, checkpoints: Checkpoints, final: dict[str, float], agent: ActorCritic,
                  cfg: Config, run_dir: Path) -> None:
    """Final metrics, the checkpoint, the policy model and plots as artifacts, the FINISHED status.

    Idempotent, so a rerun completes it when a job stopped between ``final.pt`` and the FINISHED status.
    """
    tracker.log_artifact(checkpoints.folder / FINAL, "checkpoints")
    publish_policy(agent, cfg, tracker, POLICY)
    logged = tracker.client.get_run(tracker.run_id).data.metrics  # a rerun after a stop here sends none twice
    tracker.log_metrics({M.final(k): v for k, v in final.items() if M.final(k) not in logged}, agent.grad_steps)
    tracker.flush()
    tracker.log_artifact(run_plot(tracker.client, tracker.run_id, run_dir / "plots" / "run.png"), "plots")
    tracker.set_tags({"stage": "finished"})
    tracker.end("FINISHED")


def print_summary(cfg: Config, final: dict[str, float], run_dir: Path, run_id: str,
                  per_domain: Optional[str] = None) -> None:
    """Where the run went and how to look at it, on stdout (the command line and the Python API alike)."""
    uri = default_tracking_uri()
    keys = [M.summary(phase, cfg.domain.metric) for phase in (*M.PHASES, M.RETRAIN)] + [M.CUMULATIVE_REGRET]
    scores = ", ".join(f"{k} {final[k]:.3f}" for k in keys if k in final)
    look = f"mlflow ui --backend-store-uri {uri}, then open" if not uri.startswith("http") else "open"
    experiment_id = open_store(uri).get_run(run_id).info.experiment_id
    print(f"\n{cfg.algo.name} on {cfg.env.name}, seed {cfg.seed}: {scores or 'no scores'}\n"
          + (f"  settings    {per_domain}\n" if per_domain else "") +
          f"  run folder  {run_dir}\n"
          f"  MLflow      run {run_id}, experiment {cfg.mlflow_experiment}, store {uri}\n"
          f"  look        {look} {mlflow_view.view_url(mlflow_view.ui_address(uri), experiment_id)}\n"
          f"  compare     o2o-report --experiment {cfg.mlflow_experiment}", flush=True)


def complete_finished(resume: RunState, checkpoints: Checkpoints, cfg: Config, run_dir: Path) -> dict[str, float]:
    """A run dir with ``final.pt``: publish it again if its MLflow run never reached FINISHED."""
    status = open_store(default_tracking_uri()).get_run(resume.run_id).info.status
    if status == "FINISHED":
        log.info("%s already finished; nothing to do", run_dir)
        return resume.final
    log.warning("%s: the final checkpoint exists but its MLflow run is %s; completing its finish", run_dir, status)
    tracker = Tracker(cfg.mlflow_experiment, None, {}, {}, run_id=resume.run_id)
    setup_runtime(cfg)  # seeds and threads; the policy model is exported in fp32 whatever the precision
    obs_shape, (act_dim,) = env_shapes(cfg)
    agent = make_agent(cfg, observation_input(cfg, obs_shape), act_dim, torch.device("cpu"), compiled=False)  # exported
    agent.restore(resume.agent)
    publish_final(tracker, checkpoints, resume.final, agent, cfg, run_dir)
    return resume.final
