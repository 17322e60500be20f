"""Minari datasets: found locally, downloaded when a network exists, locked while a collector builds one, and read
as flat transitions (through o2o.data.minari_hdf5 for HDF5 files, else Minari's own episode iterator)."""
from __future__ import annotations

import contextlib
import fcntl
import os
from typing import Optional

import numpy as np

from o2o.config import EnvConfig
from o2o.data.checks import check_recorded_env
from o2o.data.minari_hdf5 import concatenate_episodes, read_minari_hdf5
from o2o.data.offline_data import OfflineData, float_or_none
from o2o.errors import DatasetError


def minari_root() -> str:
    return os.environ.get("MINARI_DATASETS_PATH", os.path.join(os.path.expanduser("~"), ".minari", "datasets"))

def minari_is_local(dataset_id: str) -> bool:
    """A complete local copy: its data file and metadata (a folder without them is a partial leftover)."""
    data = os.path.join(minari_root(), dataset_id, "data")
    return all(os.path.isfile(os.path.join(data, name)) for name in ("main_data.hdf5", "metadata.json"))

def minari_is_partial(dataset_id: str) -> bool:
    return os.path.isdir(os.path.join(minari_root(), dataset_id)) and not minari_is_local(dataset_id)

def _offline_network() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")

ADROIT_TASKS = ("door", "pen", "relocate", "hammer")

def _missing_message(dataset_id: str, reason: str) -> str:
    parts = dataset_id.split("/")
    offline_route = ""
    if len(parts) == 3 and parts[0] == "D4RL" and parts[1] in ADROIT_TASKS:
        offline_route = (f" Without network, build Adroit data from the DAPG assets (`o2o-data build-adroit --assets "
                         f"DIR`) and use it with env.dataset.id=o2o/{parts[1]}/expert-v0"
                         + (" (door also: o2o/door/cloned-v0, o2o/door/human-v0)." if parts[1] == "door" else "."))
    return (f"Minari dataset '{dataset_id}' is not available locally (looked in {os.path.join(minari_root(), dataset_id)}; "
            f"set MINARI_DATASETS_PATH to look elsewhere) and {reason}. "
            f"Download it on a machine with network (`minari download {dataset_id}`) and copy it there, "
            "or point env.dataset.path at a D4RL-format HDF5 file." + offline_route)

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
    meta = dict(dataset.storage.metadata)
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
    if isinstance(observations, dict):
        return np.concatenate([np.asarray(observations[k], dtype=np.float32).reshape(len(observations[k]), -1)
                               for k in keys], axis=1)
    return np.asarray(observations, dtype=np.float32).reshape(len(observations), -1)
