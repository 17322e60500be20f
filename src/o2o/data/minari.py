"""Minari datasets: found locally, downloaded when a network exists, locked while a collector builds one, and read
as flat transitions (through o2o.data.minari_hdf5 for HDF5 files, else Minari's own episode iterator): vectors, or
uint8 frames where the observation is an image."""
from __future__ import annotations

import contextlib
import fcntl
import os
from typing import Optional

import numpy as np

from o2o.config import EnvConfig
from o2o.data.awac import TASKS as AWAC_GYM_IDS
from o2o.data.checks import check_frames_fit, check_recorded_env
from o2o.data.minari_hdf5 import concatenate_episodes, observation_rows, read_minari_hdf5
from o2o.data.offline_data import OfflineData, float_or_none
from o2o.envs import acts_in_unit_box, is_image_space
from o2o.errors import DatasetError


OFFICIAL_NAMESPACES = ("D4RL", "mujoco")  # Minari's remote namespaces; every other one is built here (o2o-data)


def minari_root() -> str:
    root = os.environ.get("MINARI_DATASETS_PATH", os.path.join(os.path.expanduser("~"), ".minari", "datasets"))
    if not root.strip():
        raise DatasetError("MINARI_DATASETS_PATH is set but empty: unset it (~/.minari/datasets) or name a folder")
    return root


def minari_is_local(dataset_id: str) -> bool:
    """A complete local copy: its data file and metadata (a folder without them is a partial leftover)."""
    data = os.path.join(minari_root(), dataset_id, "data")
    return all(os.path.isfile(os.path.join(data, name)) for name in ("main_data.hdf5", "metadata.json"))


def minari_is_partial(dataset_id: str) -> bool:
    return os.path.isdir(os.path.join(minari_root(), dataset_id)) and not minari_is_local(dataset_id)


def _offline_network() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


ADROIT_TASKS = ("door", "pen", "relocate", "hammer")
AWAC_TASKS = tuple(AWAC_GYM_IDS.values())  # the Adroit tasks the paper trains on AWAC's files


def _missing_message(dataset_id: str, reason: str) -> str:
    """Why the dataset cannot be had, and every route to it, each with its command."""
    parts = dataset_id.split("/")
    here = os.path.join(minari_root(), dataset_id)
    routes = [f"download it where there is network (`minari download {dataset_id}`) and copy the folder to {here} "
              "(or set MINARI_DATASETS_PATH)"]
    if len(parts) == 3 and parts[0] == "D4RL" and parts[1] in ADROIT_TASKS:
        task = parts[1]
        if task in AWAC_TASKS:
            routes.append("train on the paper's own data, AWAC's files (linked from the Cal-QL README): "
                          "`env.dataset.id=null env.dataset.path=DIR`")
        built = f"o2o/{task}/cloned-v0" if task == "door" else f"o2o/{task}/expert-v0"
        routes.append(f"build it offline from the hand_dapg repository's files (`o2o-data build-adroit --assets "
                      f"HAND_DAPG_DIR --tasks {task}`), then `env.dataset.id={built}`")
    else:
        routes.append("point env.dataset.path at a D4RL-format HDF5 file (`env.dataset.id=null env.dataset.path=FILE`)")
    numbered = "; ".join(f"({i}) {r}" for i, r in enumerate(routes, 1))
    return f"Minari dataset '{dataset_id}' is not in {here} and {reason}. Routes: {numbered}."


HUB_TIMEOUT_S = 5.0  # one connection attempt; a reachable hub answers a TCP connect in well under a second


def hub_unreachable() -> str | None:
    """None when the Hugging Face hub Minari downloads from accepts a connection, else why not. One attempt, so
    that a machine without network learns it at once instead of through huggingface_hub's retries."""
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    url = urlsplit(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=HUB_TIMEOUT_S).close()
    except OSError as err:
        return f"the hub at {constants.ENDPOINT} cannot be reached ({type(err).__name__}: {err.strerror or err})"
    return None


def fetch_minari(dataset_id: str, download: bool):
    """Open a local Minari dataset, downloading it first if allowed and possible."""
    import minari

    if minari_is_partial(dataset_id):
        raise DatasetError(f"Minari dataset '{dataset_id}' at {os.path.join(minari_root(), dataset_id)} is incomplete "
                           "(an interrupted download or write): delete that folder and run again")
    if not minari_is_local(dataset_id):
        if not download:
            raise DatasetError(_missing_message(dataset_id, "env.dataset.download is false"))
        if _offline_network():
            raise DatasetError(_missing_message(dataset_id, "HF_HUB_OFFLINE=1 forbids a download"))
        unreachable = hub_unreachable()
        if unreachable:
            raise DatasetError(_missing_message(dataset_id, unreachable))
        try:
            minari.download_dataset(dataset_id)
        except Exception as err:  # no network, unknown id, hub error
            raise DatasetError(_missing_message(dataset_id, f"the download failed ({type(err).__name__}: {err})")) from err
    return minari.load_dataset(dataset_id)


@contextlib.contextmanager


def collection_lock():
    os.makedirs(minari_root(), exist_ok=True)
    with open(os.path.join(minari_root(), ".o2o-collect.lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load_minari(dataset_id: str, obs_keys: list[str], download: bool = True,
                env_cfg: Optional[EnvConfig] = None) -> OfflineData:
    """A Minari dataset as flat transitions; with ``env_cfg``, first checked against the env it records."""
    dataset = fetch_minari(dataset_id, download)
    recorded = recorded_env_spec(dict(dataset.storage.metadata))
    if env_cfg is not None and recorded is not None:
        check_recorded_env(recorded, env_cfg, f"Minari dataset '{dataset_id}'")
    actions = dataset.action_space
    if env_cfg is not None and hasattr(actions, "low") and not acts_in_unit_box(actions):
        raise DatasetError(f"Minari dataset '{dataset_id}' records its actions in {actions}, and every policy here "
                           "acts in [-1, 1] (as its env must): record the data with actions rescaled to [-1, 1]")
    meta = dict(dataset.storage.metadata)
    space = dataset.observation_space
    if not obs_keys and is_image_space(space):  # frames: they must fit in memory before they are read
        check_frames_fit(f"Minari dataset '{dataset_id}'", (dataset.total_steps, *space.shape), space.dtype,
                         hint="build a smaller one")
    path = os.path.join(minari_root(), dataset_id, "data", "main_data.hdf5")
    if meta.get("data_format", "hdf5") == "hdf5" and os.path.isfile(path):
        if not dataset.total_episodes:
            raise DatasetError(f"Minari dataset '{dataset_id}' has no episodes")
        flat = read_minari_hdf5(path, obs_keys, dataset.total_episodes, dataset.total_steps)
    else:  # another storage format: Minari's own episode iterator
        parts = _read_minari_episodes(dataset, obs_keys)
        if not parts["rew"]:
            raise DatasetError(f"Minari dataset '{dataset_id}' has no episodes")
        flat = concatenate_episodes(parts)
    return OfflineData(
        **flat, ref_min_score=float_or_none(meta.get("ref_min_score")), ref_max_score=float_or_none(meta.get("ref_max_score")),
        source=f"minari:{dataset_id}", metadata={k: v for k, v in meta.items() if isinstance(v, (str, int, float))},
    )


def _read_minari_episodes(dataset, obs_keys: list[str]) -> dict[str, list]:
    parts: dict[str, list] = {k: [] for k in ("obs", "act", "rew", "term", "trunc", "success")}
    for episode in dataset.iterate_episodes():
        parts["obs"].append(_flatten_batch(episode.observations, obs_keys))
        for key, value in (("act", episode.actions), ("rew", episode.rewards), ("term", episode.terminations),
                           ("trunc", episode.truncations)):
            parts[key].append(np.asarray(value))
        if (episode.infos or {}).get("success") is not None:
            parts["success"].append(np.asarray(episode.infos["success"]))
    return parts


def recorded_env_spec(metadata: dict) -> Optional[dict]:
    """The env a Minari dataset records for evaluation (``eval_env_spec``), else the one that generated it."""
    import json

    for key in ("eval_env_spec", "env_spec"):
        raw = metadata.get(key)
        if isinstance(raw, str) and raw:
            try:
                return json.loads(raw)
            except json.JSONDecodeError:
                continue
    return None


def _flatten_batch(observations, keys: list[str]) -> np.ndarray:
    arrays = [np.asarray(observations[k]) for k in keys] if isinstance(observations, dict) else [np.asarray(observations)]
    return observation_rows(arrays, frames_allowed=not keys)
