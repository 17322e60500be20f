"""The Cal-QL paper's own Adroit data: AWAC's ``offpolicy_hand_data`` files (``env.dataset.path`` names their folder).

The paper's ``{pen,door,relocate}-binary-v0`` tasks train on the data of AWAC (Nair et al. 2020, arXiv 2006.09359):
25 human demonstrations, ``{task}2_sparse.npy``, and rollouts of a behaviour-cloned policy, ``{task}_bc_sparse4.npy``,
both with the binary reward (-1 per step, 0 on success). The Cal-QL README links the archive; the files keep their
original names and format here. Reference: nakamotoo/Cal-QL, ``JaxCQL/replay_buffer.py``,
``get_hand_dataset_with_mc_calculation``, read as the authors read it:

- both files are pickled object arrays of trajectory dicts, demonstrations first;
- the demonstrations hold dict observations (``state_observation`` is the env's observation) and rewards that may
  be one longer than their terminals (cut to the number of observations);
- the BC file holds ``[T, 1]`` rewards and terminals (squeezed);
- the files' terminals are dropped: the success steps (reward 0) become terminal, each trajectory is cut after its
  last success and a trajectory without one is dropped, and actions are clipped to +-0.99999. This module returns
  the trajectories as stored (success = reward 0, no terminals); the rest is the Adroit rule every source goes
  through (``o2o.data.offline_data.apply_binary_success`` and ``o2o.data.checks``), which does exactly that.

The observation layout is checked against the Gymnasium-Robotics env the run uses (``checks.check_adroit_layout``):
AWAC recorded its data in mj_envs' ``*-v0`` envs, whose observation Gymnasium-Robotics' ``AdroitHand*-v1`` kept.
"""
from __future__ import annotations

import os
import pickle

import numpy as np

from o2o.data.offline_data import OfflineData
from o2o.errors import DatasetError

TASKS = {"AdroitHandPen-v1": "pen", "AdroitHandDoor-v1": "door", "AdroitHandRelocate-v1": "relocate"}
DEMOS, BC_ROLLOUTS = "{task}2_sparse.npy", "{task}_bc_sparse4.npy"  # the authors' expert_demo_paths, bc_demo_paths
# where the files may lie below the folder named: AWAC's archive unpacks to demonstrations/offpolicy_hand_data/
SUBFOLDERS = ("", "offpolicy_hand_data", os.path.join("demonstrations", "offpolicy_hand_data"))


def is_awac_folder(path: str) -> bool:
    return os.path.isdir(path)


def awac_files(folder: str, gym_id: str) -> tuple[str, str]:
    """The demonstration and BC-rollout files of the env's task below ``folder``."""
    if gym_id not in TASKS:
        raise DatasetError(f"env.dataset.path {folder} is a folder of AWAC files, which exist for "
                           f"{', '.join(TASKS)} only, not {gym_id}: choose one of those envs or a D4RL HDF5 file")
    task = TASKS[gym_id]
    names = DEMOS.format(task=task), BC_ROLLOUTS.format(task=task)
    for sub in SUBFOLDERS:
        found = [os.path.join(folder, sub, name) for name in names]
        if all(os.path.isfile(f) for f in found):
            return found[0], found[1]
    raise DatasetError(f"{folder} holds no {names[0]} and {names[1]} (looked in it and in "
                       f"{', '.join(s for s in SUBFOLDERS if s)}): point env.dataset.path at the folder of AWAC's "
                       "offpolicy_hand_data files (linked from the Cal-QL README)")


def load_awac(folder: str, gym_id: str) -> OfflineData:
    """The task's demonstrations, then its BC rollouts, as flat transitions with per-trajectory ends."""
    demos_path, bc_path = awac_files(folder, gym_id)
    trajectories = []
    for path, read in ((demos_path, _demo), (bc_path, _bc)):
        for i, t in enumerate(_read(path)):
            try:
                trajectories.append(read(t, path, i))
            except (KeyError, TypeError, ValueError, IndexError) as err:  # values that are not numeric arrays
                raise DatasetError(f"{path}: trajectory {i} is not in AWAC's format ({type(err).__name__}: "
                                   f"{str(err)[:200]})") from None
    if not trajectories:
        raise DatasetError(f"{demos_path} and {bc_path} hold no trajectories")
    lengths = [len(t["rewards"]) for t in trajectories]
    ends = np.zeros(sum(lengths), dtype=bool)
    ends[np.cumsum(lengths) - 1] = True
    rewards = np.concatenate([t["rewards"] for t in trajectories]).astype(np.float32)
    if not np.isin(rewards, (-1.0, 0.0)).all():
        raise DatasetError(f"{demos_path}, {bc_path}: rewards other than -1 and 0, so not AWAC's binary (sparse) "
                           "files: use the *_sparse files")
    return OfflineData(
        observations=np.concatenate([t["observations"] for t in trajectories]).astype(np.float32),
        actions=np.concatenate([t["actions"] for t in trajectories]).astype(np.float32),
        rewards=rewards,
        next_observations=np.concatenate([t["next_observations"] for t in trajectories]).astype(np.float32),
        terminals=np.zeros(len(rewards), dtype=bool),  # the authors drop the files' terminals
        timeouts=ends, success=rewards == 0.0, source=f"awac:{os.path.dirname(demos_path)} ({TASKS[gym_id]})",
        metadata={"awac_demonstrations": sum(1 for t in trajectories if t["demo"]),
                  "awac_bc_rollouts": sum(1 for t in trajectories if not t["demo"])})


# What AWAC's files hold: an object array of trajectory dicts of lists, dicts and arrays. Unpickling may build these
# numpy types and nothing else, so a file cannot run code (a pickled object's __reduce__ names some other callable).
ALLOWED_GLOBALS = {(module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray")
                   for name in ("_reconstruct", "scalar")}
ALLOWED_GLOBALS |= {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.numeric", "_frombuffer"),
                    ("numpy._core.numeric", "_frombuffer"), ("collections", "OrderedDict")}
TRAJECTORY_KEYS = ("observations", "next_observations", "actions", "rewards")


class TrajectoryUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of AWAC's trajectory files; refusing to load it")


def _read(path: str) -> list:
    """The file's trajectories: a .npy object array (as AWAC saves them) or a plain pickle of a list, unpickled
    through :class:`TrajectoryUnpickler`; anything else stops with one line."""
    def not_awac(what: str) -> str:
        return (f"{path} holds {what}, not AWAC's trajectories (an array of dicts with {', '.join(TRAJECTORY_KEYS)}): "
                "check env.dataset.path")

    try:
        with open(path, "rb") as f:
            if f.read(6) == b"\x93NUMPY":
                f.seek(0)
                version = np.lib.format.read_magic(f)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                _, _, dtype = read_header(f)
                if not dtype.hasobject:
                    raise DatasetError(not_awac(f"an array of {dtype}"))
            else:
                f.seek(0)
            trajectories = TrajectoryUnpickler(f, encoding="latin1").load()
    except DatasetError:
        raise
    except (OSError, ValueError, EOFError, pickle.UnpicklingError, AttributeError, TypeError, IndexError) as err:
        raise DatasetError(f"{path} cannot be read as AWAC's pickled trajectory array ({type(err).__name__}: "
                           f"{str(err)[:200]})") from None
    if not isinstance(trajectories, (np.ndarray, list, tuple)) or any(
            not isinstance(t, dict) or any(k not in t for k in TRAJECTORY_KEYS) for t in trajectories):
        raise DatasetError(not_awac("something else"))
    return list(trajectories)


def _state(observations) -> np.ndarray:
    return np.asarray([o["state_observation"] if isinstance(o, dict) else o for o in observations], dtype=np.float64)


def _demo(t: dict, path: str, i: int) -> dict:
    obs, next_obs = _state(t["observations"]), _state(t["next_observations"])
    rewards = np.asarray(t["rewards"], dtype=np.float64)
    if rewards.shape != np.asarray(t["terminals"]).shape:  # the demonstrations' rewards may be one longer
        rewards = rewards[:len(obs)]
    return _checked({"observations": obs, "next_observations": next_obs, "actions": np.asarray(t["actions"], np.float64),
                     "rewards": rewards, "demo": True}, path, i)


def _bc(t: dict, path: str, i: int) -> dict:
    rewards = np.asarray(t["rewards"], np.float64)
    return _checked({"observations": np.asarray(t["observations"], np.float64),
                     "next_observations": np.asarray(t["next_observations"], np.float64),
                     "actions": np.asarray(t["actions"], np.float64),
                     "rewards": rewards.squeeze(-1) if rewards.ndim == 2 else rewards, "demo": False}, path, i)


def _checked(t: dict, path: str, i: int) -> dict:
    n = len(t["rewards"])
    if any(t[k].ndim != 2 for k in ("observations", "next_observations", "actions")) or t["rewards"].ndim != 1:
        raise DatasetError(f"{path}: trajectory {i} is not in AWAC's format: its observations and actions must be "
                           "one row per step, its rewards one value per step")
    if not n or any(len(t[k]) != n for k in ("observations", "next_observations", "actions")):
        raise DatasetError(f"{path}: trajectory {i} has {len(t['observations'])} observations, "
                           f"{len(t['actions'])} actions and {n} rewards: not AWAC's format")
    return t
