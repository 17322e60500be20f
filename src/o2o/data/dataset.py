"""The offline data of a run: read from its source, checked against the env, and labelled for the domain.

Each source has its reader, and every reader returns an :class:`~o2o.data.offline_data.OfflineData`:

- a Minari dataset, ``env.dataset.id`` (o2o.data.minari), built first by its collector where the env option
  names one (o2o.data.build.collectors);
- a D4RL-format HDF5 file, ``env.dataset.path`` (o2o.data.d4rl);
- a folder of AWAC's Adroit files, ``env.dataset.path`` (o2o.data.awac): the Cal-QL paper's own Adroit data;
- an OGBench file, ``env.dataset.ogbench`` (its name) or ``env.dataset.path`` (a ``.npz``) (o2o.data.ogbench).

A new source is a module beside these with a reader of the same shape, chosen in :func:`read_source`; the checks
in o2o.data.checks then apply to it as to every other.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Optional

import numpy as np

from o2o.config import EnvConfig
from o2o.data import ogbench
from o2o.data.awac import is_awac_folder, load_awac
from o2o.data.checks import (ADROIT_LAYOUT, check_adroit_layout, check_finite, check_matches_env,
                             check_reference_scores, clip_actions)
from o2o.data.d4rl import d4rl_reference_scores, load_d4rl_hdf5
from o2o.data.minari import collection_lock, fetch_minari, load_minari, minari_is_local
from o2o.data.offline_data import OfflineData, apply_binary_success, episode_slices, float_or_none
from o2o.errors import DatasetError

log = logging.getLogger("o2o")


def read_source(cfg: EnvConfig) -> OfflineData:
    """The configured dataset as stored, from whichever source the env option names."""
    if _is_ogbench(cfg):
        path = ogbench.fetch(cfg.dataset.ogbench, cfg.dataset.download) if cfg.dataset.ogbench else Path(cfg.dataset.path)
        return ogbench.load(path, cfg.gym_id)
    if cfg.dataset.path and is_awac_folder(cfg.dataset.path):
        return load_awac(cfg.dataset.path, cfg.gym_id)
    if cfg.dataset.path:
        return load_d4rl_hdf5(cfg.dataset.path, cfg.max_episode_steps)
    _collect_if_missing(cfg)
    return load_minari(cfg.dataset.id, cfg.obs_keys, download=cfg.dataset.download, env_cfg=cfg)


def load_offline_data(cfg: EnvConfig, observation_shape: tuple, action_shape: tuple,
                      binary_from_success: bool = False) -> OfflineData:
    """Load the configured dataset and check that it fits the env; build it first if a collector is set.

    ``binary_from_success`` (the domain's reward rule) turns it into the binary-reward data.
    """
    data = read_source(cfg)
    if cfg.reward_shift:
        data = replace(data, rewards=(data.rewards + cfg.reward_shift).astype(np.float32))
    if len(data) == 0:
        raise DatasetError(f"{data.source} holds no transitions (D4RL's reading drops the last step of an episode "
                           "that never ends): choose another dataset")
    if cfg.max_episode_steps is not None and len(data) > cfg.max_episode_steps and not (
            data.terminals.any() or data.timeouts.any()):  # one episode longer than the env allows: ends unmarked
        raise DatasetError(f"{data.source}: none of its {len(data)} transitions ends an episode (no terminal, no "
                           f"timeout), so they would be one episode, longer than env.max_episode_steps="
                           f"{cfg.max_episode_steps}: mark each episode's last step (terminals for a true end, "
                           "timeouts for a cut)")
    check_reference_scores(data.ref_min_score, data.ref_max_score, data.source)
    check_matches_env(data, cfg, observation_shape, action_shape)
    check_finite(data)
    if cfg.gym_id in ADROIT_LAYOUT:
        check_adroit_layout(data, cfg, _env_observation(cfg))
    data = clip_actions(data)
    if binary_from_success:
        before = len(data)
        episodes = episode_slices(data.episode_ends)
        succeeding = sum(1 for e in episodes if data.success is not None and data.success[e].any())
        data = apply_binary_success(data)
        log.info("%s: the Adroit binary rule kept %d of %d transitions: %d of %d episodes reach success and are cut "
                 "after their last success (success steps terminal), the others dropped", data.source, len(data),
                 before, succeeding, len(episodes))
        if len(data) == 0:
            raise DatasetError(f"{data.source}: no episode reaches task success, so the binary-reward data is empty")
    return data


def dataset_reference_scores(cfg: EnvConfig) -> tuple[Optional[float], Optional[float]]:
    """The dataset's reference scores from its metadata alone, without reading its transitions.

    Used by algorithms that never touch the offline data, so that their
    normalized scores use the same references as the offline algorithms'.
    A remote dataset is not downloaded for this: (None, None) then.
    """
    if _is_ogbench(cfg):
        return None, None  # OGBench's files carry none: scored by success
    if cfg.dataset.path and is_awac_folder(cfg.dataset.path):
        return None, None  # AWAC's files carry none: the env option's
    if cfg.dataset.path:
        scores = d4rl_reference_scores(cfg.dataset.path)
    else:
        _collect_if_missing(cfg)
        if not minari_is_local(cfg.dataset.id):
            return None, None
        meta = fetch_minari(cfg.dataset.id, download=False).storage.metadata
        scores = float_or_none(meta.get("ref_min_score")), float_or_none(meta.get("ref_max_score"))
    check_reference_scores(*scores, cfg.dataset.path or cfg.dataset.id)
    return scores


def _is_ogbench(cfg: EnvConfig) -> bool:
    return bool(cfg.dataset.ogbench) or bool(cfg.dataset.path and ogbench.is_ogbench_file(cfg.dataset.path))


def _env_observation(cfg: EnvConfig):
    """The env's first observation, for the layout check."""
    from o2o.envs import make_env

    env = make_env(cfg)
    obs = env.reset(seed=0)[0]
    env.close()
    return obs


def _collect_if_missing(cfg: EnvConfig) -> None:
    """Datasets with a collector are built on first use (parallel jobs wait for the first one) and reused only by
    runs with the same collector params."""
    if cfg.dataset.collector is None:
        return
    from o2o.data.build.collectors import check_collected_with, collect_dataset

    if not minari_is_local(cfg.dataset.id):
        with collection_lock():
            if not minari_is_local(cfg.dataset.id):  # missing, or a leftover of an older interrupted write: rebuilt
                collect_dataset(cfg)
    check_collected_with(cfg)
