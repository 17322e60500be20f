"""Stage 1: an offline dataset as flat transition arrays with episode boundaries.

Sources: a Minari dataset (local, or downloaded when a network exists) or a
D4RL-format HDF5 file. Either way the result is an :class:`OfflineData` whose
shapes have been checked against the environment.
"""
from __future__ import annotations

import contextlib
import fcntl
import gc
import logging
import mmap
import multiprocessing
import os
from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np

from o2o.config import EnvConfig
from o2o.errors import DatasetError

log = logging.getLogger("o2o")

# Dataset actions are clipped to +-(1 - 1e-5) so a tanh policy's log-probability of them stays finite, as
# every reference does: nakamotoo/Cal-QL (clip_action=0.99999), ikostrikov/rlpd and IQL (clip_to_eps, 1e-5).
ACTION_CLIP = 1.0 - 1e-5


@dataclass
class OfflineData:
    observations: np.ndarray  # (N, obs_dim) float32
    actions: np.ndarray  # (N, act_dim) float32
    rewards: np.ndarray  # (N,) float32, as recorded (before the reward transform)
    next_observations: np.ndarray  # (N, obs_dim) float32
    terminals: np.ndarray  # (N,) bool
    timeouts: np.ndarray  # (N,) bool: episode cut without a terminal
    success: Optional[np.ndarray] = None  # (N,) bool, task success after each step
    ref_min_score: Optional[float] = None
    ref_max_score: Optional[float] = None
    source: str = ""
    metadata: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def episode_ends(self) -> np.ndarray:
        """True at the last step of every episode (terminal, timeout or end of data)."""
        ends = self.terminals | self.timeouts
        if len(ends):
            ends = ends.copy()
            ends[-1] = True
        return ends

    @property
    def num_episodes(self) -> int:
        return int(self.episode_ends.sum())

    def select(self, mask: np.ndarray) -> "OfflineData":
        keep = lambda a: None if a is None else a[mask]  # noqa: E731
        return replace(self, observations=self.observations[mask], actions=self.actions[mask],
                       rewards=self.rewards[mask], next_observations=self.next_observations[mask],
                       terminals=self.terminals[mask], timeouts=self.timeouts[mask], success=keep(self.success))


def episode_slices(ends: np.ndarray) -> list[slice]:
    stops = np.flatnonzero(ends) + 1
    starts = np.concatenate([[0], stops[:-1]])
    return [slice(int(a), int(b)) for a, b in zip(starts, stops)]


def apply_binary_success(data: OfflineData) -> OfflineData:
    """The Cal-QL authors' Adroit handling of offline data.

    Reward -1 per step and 0 on success; success steps are terminal; each
    episode is cut after its last success, so an episode that never succeeds
    keeps no steps.
    """
    if data.success is None:
        raise DatasetError(f"{data.source}: domain.binary_from_success needs per-step task success "
                           "(infos/success in Minari, infos/goal_achieved in D4RL HDF5), and this dataset has none")
    keep = np.zeros(len(data), dtype=bool)
    for episode in episode_slices(data.episode_ends):
        hits = np.flatnonzero(data.success[episode])
        if len(hits):
            keep[episode.start:episode.start + hits[-1] + 1] = True
    binary = replace(data, rewards=np.where(data.success, 0.0, -1.0).astype(np.float32),
                     terminals=data.terminals | data.success)
    return binary.select(keep)


# --------------------------------------------------------------------------- Minari


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
def _collection_lock():
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
        flat = _read_minari_hdf5(path, obs_keys, dataset.total_episodes, dataset.total_steps)
    else:  # another storage format: Minari's own episode iterator
        parts = _read_minari_episodes(dataset, obs_keys)
        if not parts["rew"]:
            raise DatasetError(f"Minari dataset '{dataset_id}' has no episodes")
        flat = _concatenate_episodes(parts)
    return OfflineData(
        **flat, ref_min_score=_float_or_none(meta.get("ref_min_score")), ref_max_score=_float_or_none(meta.get("ref_max_score")),
        source=f"minari:{dataset_id}", metadata={k: v for k, v in meta.items() if isinstance(v, (str, int, float))},
    )


# Episodes per reading process at least: below this, starting a process costs more than it saves
MIN_EPISODES_PER_WORKER = 250


def _read_minari_hdf5(path: str, obs_keys: list[str], episodes: int, total_steps: int,
                      workers: int = 0) -> dict[str, np.ndarray]:
    """Minari's HDF5 file as flat transitions, read with h5py's low-level API: per episode only the arrays the
    agent needs (not every info key, as Minari's iterator decodes), each read straight into an array.

    HDF5 costs ~30 us per dataset opened and ~45 us per read on door-sized episodes whatever the file driver
    or chunk cache (measured with ``scripts/bench_load.py``'s file), so the episodes are split over ``workers``
    forked processes (0: the usable cores). Each flattens its share, reports its length, and copies it into
    arrays in anonymous shared memory at the offset the parent sends back: the parent copies nothing."""
    import h5py

    with h5py.File(path, "r") as f:  # success flags where the first and the last episode record them
        with_success = all("infos" in f[f"episode_{i}"] and "success" in f[f"episode_{i}/infos"]
                           for i in (0, episodes - 1))
    if not workers:
        from o2o.runtime import usable_cores

        workers = usable_cores()
    workers = max(1, min(workers, episodes // MIN_EPISODES_PER_WORKER))
    if workers == 1 or "fork" not in multiprocessing.get_all_start_methods():
        return _concatenate_episodes(_read_episode_range(path, obs_keys, 0, episodes, with_success))
    first = _concatenate_episodes(_read_episode_range(path, obs_keys, 0, 1, with_success))
    out = {name: _shared_array((total_steps, *array.shape[1:]), array.dtype)
           for name, array in first.items() if array is not None}
    context = multiprocessing.get_context("fork")
    bounds = np.linspace(0, episodes, workers + 1).astype(int)
    pipes, procs = [], []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        parent_end, child_end = context.Pipe()
        proc = context.Process(target=_reading_process, daemon=True,
                               args=(path, obs_keys, int(lo), int(hi), with_success, out, child_end))
        proc.start()
        child_end.close()
        pipes.append(parent_end)
        procs.append(proc)
    try:
        counts = [_answer(pipe) for pipe in pipes]
        if sum(counts) != total_steps:  # the metadata is wrong: the arrays are the wrong size, read it again
            log.warning("%s: the episodes hold %d steps, the metadata says %d; reading in one process",
                        path, sum(counts), total_steps)
            return _concatenate_episodes(_read_episode_range(path, obs_keys, 0, episodes, with_success))
        for pipe, offset in zip(pipes, np.concatenate([[0], np.cumsum(counts)[:-1]])):
            pipe.send(int(offset))
        for pipe in pipes:
            _answer(pipe)
    finally:
        for pipe in pipes:  # a process still waiting for its offset (another one failed) is told to stop
            with contextlib.suppress(OSError):
                pipe.send(None)
            pipe.close()
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()
    return {name: out.get(name) for name in first}


def _shared_array(shape: tuple, dtype) -> np.ndarray:
    """An array in anonymous shared memory: forked processes write into it, the parent sees their writes."""
    count = int(np.prod(shape))
    return np.frombuffer(mmap.mmap(-1, max(1, count * np.dtype(dtype).itemsize)), dtype, count).reshape(shape)


def _answer(pipe):
    message = pipe.recv()
    if isinstance(message, str):
        raise DatasetError(f"reading the dataset failed in a reading process: {message}")
    return message


def _reading_process(path: str, obs_keys: list[str], first: int, last: int, with_success: bool, out: dict,
                     pipe) -> None:
    """Episodes [first, last): flattened, their length sent, then copied into ``out`` at the offset received."""
    gc.disable()  # a collection would walk (and copy, page by page) the whole heap inherited from the parent
    try:
        flat = _concatenate_episodes(_read_episode_range(path, obs_keys, first, last, with_success))
        pipe.send(len(flat["rewards"]))
        offset = pipe.recv()
        if offset is None:
            return
        for name, array in out.items():
            array[offset: offset + len(flat[name])] = flat[name]
        pipe.send(0)
    except Exception as error:  # noqa: BLE001 - the parent raises it
        with contextlib.suppress(OSError):
            pipe.send(f"{type(error).__name__}: {error}")


def _read_episode_range(path: str, obs_keys: list[str], first: int, last: int,
                        with_success: bool) -> dict[str, list]:
    import h5py

    def read(group, name: bytes) -> np.ndarray:
        dataset = h5py.h5d.open(group, name)
        out = np.empty(dataset.shape, dataset.dtype)
        dataset.read(h5py.h5s.ALL, h5py.h5s.ALL, out)
        return out

    parts: dict[str, list] = {k: [] for k in ("obs", "act", "rew", "term", "trunc", "success")}
    keys = [f"observations/{k}".encode() for k in obs_keys] or [b"observations"]
    with h5py.File(path, "r") as f:
        for i in range(first, last):
            ep = h5py.h5g.open(f.id, b"episode_%d" % i)
            obs = [read(ep, k) for k in keys]
            parts["obs"].append(obs[0].reshape(len(obs[0]), -1).astype(np.float32, copy=False) if len(obs) == 1 else
                                np.concatenate([o.reshape(len(o), -1) for o in obs], axis=1, dtype=np.float32))
            for part, name in (("act", b"actions"), ("rew", b"rewards"), ("term", b"terminations"),
                               ("trunc", b"truncations")):
                parts[part].append(read(ep, name))
            if with_success:
                parts["success"].append(read(ep, b"infos/success"))
    return parts


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


def _concatenate_episodes(parts: dict[str, list]) -> dict[str, np.ndarray]:
    """Per-episode arrays (observations one longer than actions) -> flat transitions."""
    lengths = np.array([len(r) for r in parts["rew"]])
    obs = np.concatenate(parts["obs"])  # sum(lengths) + episodes rows
    row_ends = np.cumsum(lengths + 1)
    is_last = np.zeros(len(obs), bool)
    is_last[row_ends - 1] = True  # the final observation of each episode starts no transition
    is_first = np.zeros(len(obs), bool)
    is_first[np.concatenate([[0], row_ends[:-1]])] = True
    terminations = np.concatenate(parts["term"]).astype(bool)
    truncations = np.concatenate(parts["trunc"]).astype(bool)
    truncations[np.cumsum(lengths) - 1] |= ~terminations[np.cumsum(lengths) - 1]  # every episode ends at its last step
    success = None
    if len(parts["success"]) == len(lengths):  # info arrays have one entry per step, or one more (the reset's)
        success = np.concatenate([np.asarray(s, bool)[-n:] for s, n in zip(parts["success"], lengths)])
    return {"observations": obs[~is_last], "next_observations": obs[~is_first],
            "actions": np.concatenate(parts["act"]).astype(np.float32, copy=False),
            "rewards": np.concatenate(parts["rew"]).astype(np.float32, copy=False),
            "terminals": terminations, "timeouts": truncations, "success": success}


IGNORED_KWARGS = ("render_mode",)  # how an env is shown, not which task it is


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


def effective_env_kwargs(gym_id: str, gym_kwargs: dict, keys) -> dict:
    """The kwargs the configured env really runs with, for ``keys``: the config's, else the registration's,
    else the env constructor's defaults."""
    import inspect

    import gymnasium as gym
    from gymnasium.envs.registration import load_env_creator

    from o2o.envs import _register_robotics

    _register_robotics()
    spec = gym.spec(gym_id)
    merged = {**spec.kwargs, **gym_kwargs}
    missing = [k for k in keys if k not in merged]
    if missing:
        entry = spec.entry_point
        entry = load_env_creator(entry) if isinstance(entry, str) else entry
        for cls in getattr(entry, "__mro__", [entry]):
            try:
                params = inspect.signature(cls.__init__ if inspect.isclass(cls) else cls).parameters
            except (TypeError, ValueError):
                continue
            for k in missing:
                if k in params and params[k].default is not inspect.Parameter.empty and k not in merged:
                    merged[k] = params[k].default
    return {k: merged[k] for k in keys if k in merged}


def check_recorded_env(recorded: dict, cfg: EnvConfig, source: str) -> None:
    """Stop with one line when the env option runs another task than the dataset records (id, horizon, kwargs)."""
    import json

    def same(a, b) -> bool:
        return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)

    fix = "set the env option to the dataset's value, or choose the dataset recorded in this env"
    if recorded.get("id") and recorded["id"] != cfg.gym_id:
        raise DatasetError(f"{source} records env id {recorded['id']!r}, env {cfg.name} runs {cfg.gym_id!r}: "
                           f"set env.gym_id={recorded['id']} or {fix}")
    steps = recorded.get("max_episode_steps")
    if steps is not None and cfg.max_episode_steps is not None and int(steps) != int(cfg.max_episode_steps):
        raise DatasetError(f"{source} records max_episode_steps {int(steps)}, env {cfg.name} runs "
                           f"{cfg.max_episode_steps}: set env.max_episode_steps={int(steps)} or {fix}")
    kwargs = {k: v for k, v in (recorded.get("kwargs") or {}).items() if k not in IGNORED_KWARGS}
    ours = effective_env_kwargs(cfg.gym_id, dict(cfg.gym_kwargs), list(kwargs))
    for key, value in kwargs.items():
        if key in ours and not same(ours[key], value):
            raise DatasetError(f"{source} records {key}={json.dumps(value, default=str)}, env {cfg.name} runs "
                               f"{key}={json.dumps(ours[key], default=str)}: set env.gym_kwargs.{key} to the "
                               f"recorded value or {fix}")


def _flatten_batch(observations, keys: list[str]) -> np.ndarray:
    if isinstance(observations, dict):
        return np.concatenate([np.asarray(observations[k], dtype=np.float32).reshape(len(observations[k]), -1)
                               for k in keys], axis=1)
    return np.asarray(observations, dtype=np.float32).reshape(len(observations), -1)


def _float_or_none(value) -> Optional[float]:
    return None if value is None else float(value)


# --------------------------------------------------------------------------- D4RL HDF5


def load_d4rl_hdf5(path: str) -> OfflineData:
    """A D4RL-format HDF5 file (observations, actions, rewards, terminals, timeouts, ...).

    Without ``next_observations`` the next observation is the following row
    and the last step of every episode is dropped, as ``d4rl.qlearning_dataset`` does.
    """
    try:
        return _read_d4rl_hdf5(path)
    except (OSError, KeyError, ValueError) as err:  # not HDF5, truncated, empty, unreadable arrays
        raise DatasetError(f"{path} cannot be read as a D4RL HDF5 file ({type(err).__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else 'no detail'}): check the file, or download it again") from None


def _read_d4rl_hdf5(path: str) -> OfflineData:
    """A D4RL-format HDF5 file (observations, actions, rewards, terminals, timeouts, ...).

    Without ``next_observations`` the next observation is the following row
    and the last step of every episode is dropped, as ``d4rl.qlearning_dataset`` does.
    """
    import h5py

    if not os.path.isfile(path):
        raise DatasetError(f"D4RL HDF5 file '{path}' does not exist: fix env.dataset.path "
                           "or use a Minari id in env.dataset.id")
    with h5py.File(path, "r") as f:
        missing = [k for k in ("observations", "actions", "rewards", "terminals") if k not in f]
        if missing:
            raise DatasetError(f"{path} is not a D4RL dataset: it lacks {', '.join(missing)}")
        obs = f["observations"][:].astype(np.float32)
        n = len(obs)
        terminals = f["terminals"][:].astype(bool)
        timeouts = f["timeouts"][:].astype(bool) if "timeouts" in f else np.zeros(n, bool)
        success = None
        for key in ("infos/success", "infos/goal_achieved"):
            if key in f:
                success = f[key][:].astype(bool)
        data = OfflineData(observations=obs, actions=f["actions"][:].astype(np.float32),
                           rewards=f["rewards"][:].astype(np.float32), next_observations=obs,
                           terminals=terminals, timeouts=timeouts, success=success, source=f"hdf5:{path}",
                           ref_min_score=_float_or_none(f.attrs.get("ref_min_score")),
                           ref_max_score=_float_or_none(f.attrs.get("ref_max_score")))
        if "next_observations" in f:
            return replace(data, next_observations=f["next_observations"][:].astype(np.float32))
    next_obs = np.concatenate([obs[1:], obs[-1:]])
    keep = ~data.timeouts
    keep[-1] = bool(data.terminals[-1])
    # the step before a dropped timeout step now ends its episode
    timeouts_shifted = np.concatenate([data.timeouts[1:], [True]]) & ~data.terminals
    return replace(data, next_observations=next_obs, timeouts=timeouts_shifted).select(keep)


# --------------------------------------------------------------------------- entry point


def load_offline_data(cfg: EnvConfig, observation_shape: tuple, action_shape: tuple,
                      binary_from_success: bool = False) -> OfflineData:
    """Load the configured dataset and check that it fits the env; build it first if a collector is set.

    ``binary_from_success`` (the domain's reward rule) turns it into the binary-reward data.
    """
    if cfg.dataset.path:
        data = load_d4rl_hdf5(cfg.dataset.path)
    else:
        _collect_if_missing(cfg)
        data = load_minari(cfg.dataset.id, cfg.obs_keys, download=cfg.dataset.download, env_cfg=cfg)
    check_matches_env(data, cfg, observation_shape, action_shape)
    check_finite(data)
    data = replace(data, actions=np.clip(data.actions, -ACTION_CLIP, ACTION_CLIP))
    if binary_from_success:
        data = apply_binary_success(data)
        if len(data) == 0:
            raise DatasetError(f"{data.source}: no episode reaches task success, so the binary-reward data is empty")
    return data


def dataset_reference_scores(cfg: EnvConfig) -> tuple[Optional[float], Optional[float]]:
    """The dataset's reference scores from its metadata alone, without reading its transitions.

    Used by algorithms that never touch the offline data, so that their
    normalized scores use the same references as the offline algorithms'.
    A remote dataset is not downloaded for this: (None, None) then.
    """
    if cfg.dataset.path:
        import h5py

        if not os.path.isfile(cfg.dataset.path):
            return None, None
        with h5py.File(cfg.dataset.path, "r") as f:
            return _float_or_none(f.attrs.get("ref_min_score")), _float_or_none(f.attrs.get("ref_max_score"))
    _collect_if_missing(cfg)
    if not minari_is_local(cfg.dataset.id):
        return None, None
    meta = fetch_minari(cfg.dataset.id, download=False).storage.metadata
    return _float_or_none(meta.get("ref_min_score")), _float_or_none(meta.get("ref_max_score"))


def _collect_if_missing(cfg: EnvConfig) -> None:
    """Datasets with a collector are built on first use; parallel jobs wait for the first one."""
    if cfg.dataset.collector is not None and not minari_is_local(cfg.dataset.id):
        from o2o.data.build.collectors import collect_dataset

        with _collection_lock():
            if not minari_is_local(cfg.dataset.id):  # missing, or a leftover of an older interrupted write: rebuilt
                collect_dataset(cfg)


def check_finite(data: OfflineData) -> None:
    """NaN or inf in the data would train silently into NaN weights: stop with the field and the count."""
    for name in ("observations", "actions", "rewards", "next_observations"):
        values = getattr(data, name)
        bad = int(np.count_nonzero(~np.isfinite(values.reshape(len(values), -1)).all(axis=1)))
        if bad:
            raise DatasetError(f"{data.source}: {bad} transitions with non-finite values (NaN or inf) in {name}; "
                               "clean the dataset or choose another one")


def check_matches_env(data: OfflineData, cfg: EnvConfig, observation_shape: tuple, action_shape: tuple) -> None:
    got_obs, got_act = data.observations.shape[1:], data.actions.shape[1:]
    if tuple(got_obs) != tuple(observation_shape) or tuple(got_act) != tuple(action_shape):
        raise DatasetError(
            f"dataset {data.source} does not match env {cfg.gym_id} (env={cfg.name}): dataset observations "
            f"{tuple(got_obs)} and actions {tuple(got_act)}, env observations {tuple(observation_shape)} and "
            f"actions {tuple(action_shape)}. Choose the dataset recorded in this env (env.dataset.id / "
            "env.dataset.path) or fix env.obs_keys.")
