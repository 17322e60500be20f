"""D4RL-format HDF5 files (``env.dataset.path``): the arrays ``d4rl.qlearning_dataset`` reads, with its rules."""
from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Optional

import numpy as np

from o2o.data.checks import check_frames_fit
from o2o.data.offline_data import OfflineData, float_or_none
from o2o.errors import DatasetError

log = logging.getLogger(__name__)


def load_d4rl_hdf5(path: str, max_episode_steps: Optional[int] = None) -> OfflineData:
    """A D4RL-format HDF5 file (observations, actions, rewards, terminals, timeouts, ...).

    Without ``next_observations`` the next observation is the following row
    and the last step of every episode is dropped, as ``d4rl.qlearning_dataset`` does.
    A file without ``timeouts`` (D4RL's v0 datasets) is cut every ``max_episode_steps`` (the run's
    ``env.max_episode_steps``, which may differ from D4RL's registered horizon) as that function cuts it; with
    ``next_observations`` in the file the counted last steps stay, as truncations, where that function skips them.
    """
    try:
        return _read_d4rl_hdf5(path, max_episode_steps)
    except (OSError, KeyError, ValueError) as err:  # not HDF5, truncated, empty, unreadable arrays
        raise DatasetError(f"{path} cannot be read as a D4RL HDF5 file ({type(err).__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else 'no detail'}): check the file, or download it again") from None


def check_is_file(path: str) -> None:
    """``path`` is a regular file, or the line says what it is instead (h5py would block on a FIFO and read
    /dev/zero for ever)."""
    import stat

    if not os.path.lexists(path):
        raise DatasetError(f"D4RL HDF5 file '{path}' does not exist: fix env.dataset.path "
                           "or use a Minari id in env.dataset.id")
    try:
        mode = os.stat(path).st_mode
    except OSError as err:  # a symlink loop, a dangling link, no permission on the way
        raise DatasetError(f"D4RL HDF5 file '{path}' cannot be reached ({err.strerror}): fix env.dataset.path") from None
    if not stat.S_ISREG(mode):
        kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
        raise DatasetError(f"env.dataset.path '{path}' is {kind}, not an HDF5 file: name the dataset's file")


def d4rl_counted_timeouts(terminals: np.ndarray, max_episode_steps: int) -> np.ndarray:
    """The cuts ``d4rl.qlearning_dataset`` makes in a file without ``timeouts``: a step is final when its episode
    counter reaches ``max_episode_steps - 1``; the counter restarts at 0 after a final step and at 1 after a
    terminal one (D4RL counts the terminal step into the next episode; kept, since that is how such files were read)."""
    timeouts = np.zeros(len(terminals), bool)
    step = 0
    for i, terminal in enumerate(terminals):
        if step == max_episode_steps - 1:
            timeouts[i], step = True, 0
            continue
        step = 1 if terminal else step + 1
    return timeouts


def _read_d4rl_hdf5(path: str, max_episode_steps: Optional[int] = None) -> OfflineData:
    """A D4RL-format HDF5 file (observations, actions, rewards, terminals, timeouts, ...).

    Without ``next_observations`` the next observation is the following row
    and the last step of every episode is dropped, as ``d4rl.qlearning_dataset`` does.
    """
    import h5py

    check_is_file(path)
    with h5py.File(path, "r") as f:
        missing = [k for k in ("observations", "actions", "rewards", "terminals") if k not in f]
        if missing:
            raise DatasetError(f"{path} is not a D4RL dataset: it lacks {', '.join(missing)}")
        _check_arrays(f, path)
        if f["observations"].ndim == 4:  # frames: they must fit in memory before they are read
            check_frames_fit(path, f["observations"].shape, f["observations"].dtype)
        obs = _observations(f["observations"])
        n = len(obs)
        terminals = _flags(f["terminals"][:], path, "terminals")
        if "timeouts" in f:
            timeouts = _flags(f["timeouts"][:], path, "timeouts")
        elif max_episode_steps:
            timeouts = d4rl_counted_timeouts(terminals, max_episode_steps)
            log.info("hdf5:%s has no timeouts: cut every env.max_episode_steps=%d steps as d4rl.qlearning_dataset "
                     "cuts such files (%d cuts)", path, max_episode_steps, int(timeouts.sum()))
        else:
            timeouts = np.zeros(n, bool)
        success = None
        for key in ("infos/success", "infos/goal_achieved"):
            if key in f:
                success = _flags(f[key][:], path, key)
        data = OfflineData(observations=obs, actions=f["actions"][:].astype(np.float32),
                           rewards=f["rewards"][:].astype(np.float32), next_observations=obs,
                           terminals=terminals, timeouts=timeouts, success=success, source=f"hdf5:{path}",
                           ref_min_score=float_or_none(f.attrs.get("ref_min_score")),
                           ref_max_score=float_or_none(f.attrs.get("ref_max_score")))
        if "next_observations" in f:
            return replace(data, next_observations=_observations(f["next_observations"]))
    next_obs = np.concatenate([obs[1:], obs[-1:]])
    keep = ~data.timeouts
    keep[-1] = bool(data.terminals[-1])
    # the step before a dropped timeout step now ends its episode
    timeouts_shifted = np.concatenate([data.timeouts[1:], [True]]) & ~data.terminals
    return replace(data, next_observations=next_obs, timeouts=timeouts_shifted).select(keep)


# D4RL's layout (d4rl.qlearning_dataset): one row per step, observations and actions (N, dim), the rest (N,)
MATRICES = ("observations", "actions", "next_observations")
FRAME_KEYS = ("observations", "next_observations")  # may hold uint8 images instead of float vectors
VECTORS = ("rewards", "terminals", "timeouts", "infos/success", "infos/goal_achieved")


def _observations(array) -> np.ndarray:
    """Float32 vectors, or uint8 frames kept as they are."""
    values = array[:]
    return values if values.dtype == np.uint8 and values.ndim == 4 else values.astype(np.float32)


def _check_arrays(f, path: str) -> None:
    """Every array D4RL reads is one dataset of the same number of rows, of its rank; a file built otherwise
    (rewards of shape (N, 1), observations stored as a group of keys, arrays of unequal lengths) stops here."""
    import h5py

    lengths = {}
    for key in (*MATRICES, *VECTORS):
        if key not in f:
            continue
        if not isinstance(f[key], h5py.Dataset):
            raise DatasetError(f"{path}: {key} is a group of {sorted(f[key].keys())[:5]}, not one array; D4RL stores "
                               f"{key} as one array with a row per step: flatten it when building the file")
        rank = 2 if key in MATRICES else 1
        frames = key in FRAME_KEYS and f[key].ndim == 4 and f[key].dtype == np.uint8  # images (N, H, W, C)
        if f[key].ndim != rank and not frames:
            raise DatasetError(f"{path}: {key} has shape {f[key].shape}; D4RL stores it as "
                               f"{'(N, dim)' if rank == 2 else '(N,)'}, one row per step (images: (N, H, W, C) uint8): "
                               "fix the file")
        lengths[key] = f[key].shape[0]
        kinds = "f" if key in MATRICES else "biuf"  # observations and actions are real vectors; flags may be ints
        if f[key].dtype.kind not in kinds and not frames:
            raise DatasetError(f"{path}: {key} is stored as {f[key].dtype}; D4RL stores "
                               f"{'float32' if key in MATRICES else 'numbers'}: convert it when building the file")
    if len(set(lengths.values())) > 1:
        raise DatasetError(f"{path}: its arrays differ in length ({', '.join(f'{k} {n}' for k, n in lengths.items())}); "
                           "every array holds one row per step: fix the file")
    if lengths["observations"] == 0:
        raise DatasetError(f"{path} holds no steps: choose another dataset")
    if "next_observations" in f and (f["next_observations"].shape[1:] != f["observations"].shape[1:]
                                     or f["next_observations"].dtype.kind != f["observations"].dtype.kind):
        def describe(array) -> str:
            return f"{array.shape[1]} wide" if array.ndim == 2 else f"{array.dtype} frames {array.shape[1:]}"

        raise DatasetError(f"{path}: next_observations are {describe(f['next_observations'])}, observations "
                           f"{describe(f['observations'])}: both are the env's observation; fix the file")
    if lengths["observations"] > 1 and (np.asarray(f["terminals"][:]) == 1).all():
        raise DatasetError(f"{path}: every one of its {lengths['observations']} steps is terminal, so no episode is "
                           "longer than one step (a flag array inverted, or filled with ones?): fix the file")


def _flags(values: np.ndarray, path: str, name: str) -> np.ndarray:
    """A per-step flag array: 0 / 1 (or booleans) only; anything else (0.5, -1) would silently become True."""
    values = np.asarray(values)
    if values.dtype != bool and not np.isin(values, (0, 1)).all():
        bad = values[~np.isin(values, (0, 1))]
        raise DatasetError(f"{path}: {name} holds values other than 0 and 1 (e.g. {bad.flat[0]!r}, {bad.size} of them): "
                           "a flag array must be 0 or 1; fix the file")
    return values.astype(bool).reshape(-1)


def d4rl_reference_scores(path: str) -> tuple[Optional[float], Optional[float]]:
    """The file's ``ref_min_score`` and ``ref_max_score`` attributes, without reading its arrays."""
    import h5py

    if not os.path.isfile(path):
        return None, None
    with h5py.File(path, "r") as f:
        return float_or_none(f.attrs.get("ref_min_score")), float_or_none(f.attrs.get("ref_max_score"))
