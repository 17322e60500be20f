"""OGBench's manipulation datasets (Park et al. 2024, seohongpark/ogbench; the ``ogbench`` package): read from
OGBench's own files, downloaded by OGBench's own function, or built here with the package's scripted oracles.

**Files.** ``<name>.npz`` in OGBench's folder (``OGBENCH_DATASETS_PATH``, else OGBench's ``~/.ogbench/data``),
with OGBench's keys: ``observations`` (float32 states, or uint8 frames (H, W, C) for ``visual-*``), ``actions``,
``terminals`` (the last step of each recorded trajectory), ``qpos``, ``qvel`` and ``button_states`` (scene and
puzzle). They are read by ``ogbench.load_dataset`` (its non-compact form: next observations by shifting, each
trajectory's last state dropped).

**Rewards.** A single-task env (``*-singletask[-taskN]-v0``) fixes one of the five evaluation goals; the data is
relabelled for it by OGBench's own ``relabel_dataset`` (ogbench/relabel_utils.py): reward = the number of the
task's objects at their goal minus their count (so 0 exactly at success), mask 0 where all are. Both are of the
state *before* the step (OGBench 1.2's ``success_timing='pre'``, which its single-task envs use too). Here a
success step is terminal (the env ends the episode there; OGBench's mask bootstraps nothing there) and success is
recorded per step; the recorded trajectories go on after a success (OGBench's data never stop at a goal), so one
trajectory can hold several episodes.

**Building.** :func:`build_dataset` follows OGBench's ``data_gen_scripts/generate_manipspace.py`` and
``commands.sh``: the env in ``data_collection`` mode without terminating at goals, trajectories of 1001 steps,
the plan oracles with noise 0.1 and smoothing 0.5 (``play``) or the Markov oracles with a per-episode noise scale
drawn in [0, 0.1] and random actions at rate ``p_random_action`` (``noisy``: 0.1, puzzle 0.2), a new target when
the oracle is done, scene's health check. OGBench collects 1000 training trajectories (and 100 for validation,
not built here); fewer are the only change this machine may need, and the file's ``o2o_recipe`` says how it was
built. OGBench's script leaves its random streams unseeded; here ``--seed`` seeds them.
"""
from __future__ import annotations

import json
import logging
import os
import zipfile
from pathlib import Path

import numpy as np

from o2o.data.checks import check_frames_fit
from o2o.data.offline_data import OfflineData
from o2o.errors import DatasetError

log = logging.getLogger("o2o")

ONLINE_SOURCE = "https://rail.eecs.berkeley.edu/datasets/ogbench"  # ogbench.utils.DATASET_URL
RECIPE_KEY = "o2o_recipe"  # a JSON string in a file built here; OGBench's reader ignores it
TASK_ENVS = ("cube-single", "cube-double", "scene", "puzzle-3x3")
OGBENCH_EPISODES, OGBENCH_EPISODE_STEPS = 1000, 1001  # commands.sh: --num_episodes=1000 --max_episode_steps=1001
P_RANDOM_ACTION = {"puzzle-3x3": 0.2}  # commands.sh, noisy datasets; 0.1 for the others


def ogbench_dir() -> Path:
    return Path(os.environ.get("OGBENCH_DATASETS_PATH") or os.path.expanduser("~/.ogbench/data"))


def dataset_file(name: str) -> Path:
    return ogbench_dir() / f"{name}.npz"


def is_ogbench_file(path: str) -> bool:
    return str(path).endswith(".npz")


def fetch(name: str, download: bool) -> Path:
    """The local file of OGBench dataset ``name``; downloaded by OGBench's own function when asked and missing."""
    path = dataset_file(name)
    if path.is_file():
        return path
    if not download:
        raise DatasetError(f"OGBench dataset {name} is not in {path.parent}: build it here ({build_command(name)}), "
                           f"or download it where there is network ({ONLINE_SOURCE}/{name}.npz) and "
                           f"copy it there (or set OGBENCH_DATASETS_PATH), or set env.dataset.download=true")
    import ogbench

    try:
        ogbench.download_datasets([name], str(path.parent))
    except OSError as err:  # no network, unknown name (HTTP 404)
        raise DatasetError(f"OGBench dataset {name} could not be downloaded from {ONLINE_SOURCE} ({err}): build it "
                           f"here ({build_command(name)}) or copy the file to {path}") from None
    return path


def npz_shapes(path: Path) -> dict[str, tuple[tuple, np.dtype]]:
    """Each array's shape and dtype, read from the file's headers without loading it (and without pickles)."""
    shapes = {}
    with zipfile.ZipFile(path) as archive:
        for member in archive.namelist():
            with archive.open(member) as handle:
                version = np.lib.format.read_magic(handle)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read_header(handle)
                shapes[member.removesuffix(".npy")] = (shape, dtype)
    return shapes


def required_arrays(gym_id: str) -> tuple[str, ...]:
    """What ``ogbench.utils.load_dataset`` and ``relabel_dataset`` read for this env: the transitions, and the
    simulator state the single-task reward is computed from (the scene's and puzzle's buttons too)."""
    task = state_env_id(gym_id)
    state = {"puzzle-": ("button_states",), "scene-": ("qpos", "button_states")}
    return ("observations", "actions", "terminals") + next(
        (arrays for prefix, arrays in state.items() if task.startswith(prefix)), ("qpos",))


def check_arrays(path: Path, gym_id: str) -> None:
    """An .npz file that lacks an array this env's relabelling reads, or holds Python objects (a pickle, never
    loaded), stops before loading with the file's name."""
    try:
        shapes = npz_shapes(path)
    except (zipfile.BadZipFile, ValueError, OSError) as err:
        raise DatasetError(f"{path} is not an OGBench .npz file ({err}): build it again or copy it again") from None
    pickled = sorted(k for k, (_, dtype) in shapes.items() if dtype.hasobject)
    if pickled:
        raise DatasetError(f"{path} stores {', '.join(pickled)} as Python objects, which are never loaded (loading "
                           "them could run code): save plain numeric arrays")
    missing = [k for k in required_arrays(gym_id) if k not in shapes]
    if missing:
        raise DatasetError(f"{path} lacks {', '.join(missing)}, which OGBench's loader reads for {gym_id} (keys: "
                           f"{', '.join(sorted(shapes))}): build it with o2o-data build-ogbench, or add them")


def check_fits_memory(path: Path, free_bytes: int | None = None) -> None:
    """A dataset of frames that cannot be loaded here stops before loading, with what it needs."""
    try:
        shapes = npz_shapes(path)
    except (zipfile.BadZipFile, ValueError, OSError) as err:
        raise DatasetError(f"{path} is not an OGBench .npz file ({err}): build it again or copy it again") from None
    if "observations" not in shapes:
        raise DatasetError(f"{path} holds no observations (keys: {', '.join(shapes)}): not an OGBench dataset")
    shape, dtype = shapes["observations"]
    check_frames_fit(path.name, shape, dtype, free_bytes, "build a smaller one (o2o-data build-ogbench --episodes N)")


def state_env_id(gym_id: str) -> str:
    """The state-observation twin of a visual env (same task and goals, no rendering)."""
    return gym_id.removeprefix("visual-")


def load(path: Path, gym_id: str, free_bytes: int | None = None) -> OfflineData:
    """An OGBench file as transitions, relabelled for the single-task env ``gym_id`` (module docstring); a file
    that cannot be loaded in ``free_bytes`` (None: the host's free memory) stops first."""
    import gymnasium as gym
    import ogbench  # noqa: F401  registers the envs
    from ogbench.relabel_utils import relabel_dataset
    from ogbench.utils import load_dataset

    spec = gym.registry.get(gym_id)
    if spec is None or not str(spec.entry_point).startswith("ogbench."):
        raise DatasetError(f"{path.name}: an .npz dataset is read in OGBench's format, for OGBench's single-task envs, "
                           f"and env.gym_id={gym_id} is not one: give a D4RL HDF5 file (env.dataset.path=FILE.hdf5) or "
                           "a Minari dataset (env.dataset.id)")
    if "singletask" not in gym_id:
        raise DatasetError(f"env.gym_id={gym_id} is a goal-conditioned OGBench env, which gives no task reward: use "
                           "its single-task variant (*-singletask-v0 or *-singletask-taskN-v0)")
    check_fits_memory(path, free_bytes)
    check_arrays(path, gym_id)
    visual = gym_id.startswith("visual-")
    data = load_dataset(str(path), ob_dtype=np.uint8 if visual else np.float32, compact_dataset=False, add_info=True)
    env = gym.make(state_env_id(gym_id))
    try:
        relabel_dataset(state_env_id(gym_id), env, data)
    finally:
        env.close()
    success = data["masks"] == 0.0
    trajectory_ends = data["terminals"] > 0.5
    metadata = {"ogbench_file": str(path)}
    with np.load(path, allow_pickle=False) as archive:
        if RECIPE_KEY in archive.files:
            metadata["o2o_recipe"] = json.loads(str(archive[RECIPE_KEY]))
    return OfflineData(
        observations=data["observations"], actions=data["actions"], rewards=data["rewards"],
        next_observations=data["next_observations"], terminals=success, timeouts=trajectory_ends & ~success,
        success=success, source=f"ogbench:{path.name}", metadata=metadata)


# ---------------------------------------------------------------------------------------------------- building


def dataset_name(env: str, dataset_type: str, episodes: int, episode_steps: int) -> str:
    """OGBench's name for its recipe (``cube-single-play-v0``); a smaller build says its size in the name."""
    if (episodes, episode_steps) == (OGBENCH_EPISODES, OGBENCH_EPISODE_STEPS):
        return f"{env}-{dataset_type}-v0"
    return f"{env}-{dataset_type}-{episodes}x{episode_steps}-v0"


def build_command(name: str) -> str:
    """The ``o2o-data`` command that builds the dataset ``name`` here (OGBench's names, and this builder's smaller
    ones: :func:`dataset_name`); for a name of neither form, the command's general shape."""
    import re

    match = re.fullmatch(r"(visual-)?(" + "|".join(TASK_ENVS) + r")-(play|noisy)(?:-(\d+)x(\d+))?-v0", name)
    if match is None:
        return "o2o-data build-ogbench --env ENV [--type play|noisy] [--visual] [--episodes N]"
    visual, env, dataset_type, episodes, steps = match.groups()
    command = f"o2o-data build-ogbench --env {env} --type {dataset_type}" + (" --visual" if visual else "")
    if episodes:
        command += f" --episodes {episodes} --episode-steps {steps}"
    return command


def _oracles(env, task_env: str, dataset_type: str, noise: float, noise_smoothing: float, min_norm: float) -> dict:
    from ogbench.manipspace.oracles.markov.button_markov import ButtonMarkovOracle
    from ogbench.manipspace.oracles.markov.cube_markov import CubeMarkovOracle
    from ogbench.manipspace.oracles.markov.drawer_markov import DrawerMarkovOracle
    from ogbench.manipspace.oracles.markov.window_markov import WindowMarkovOracle
    from ogbench.manipspace.oracles.plan.button_plan import ButtonPlanOracle
    from ogbench.manipspace.oracles.plan.cube_plan import CubePlanOracle
    from ogbench.manipspace.oracles.plan.drawer_plan import DrawerPlanOracle
    from ogbench.manipspace.oracles.plan.window_plan import WindowPlanOracle

    plan = dict(env=env, noise=noise, noise_smoothing=noise_smoothing)
    markov = dict(env=env, min_norm=min_norm)
    if task_env.startswith("cube"):
        return {"cube": CubePlanOracle(**plan) if dataset_type == "play" else CubeMarkovOracle(**markov)}
    if task_env == "scene":
        if dataset_type == "play":
            return {"cube": CubePlanOracle(**plan), "button": ButtonPlanOracle(**plan),
                    "drawer": DrawerPlanOracle(**plan), "window": WindowPlanOracle(**plan)}
        return {"cube": CubeMarkovOracle(**markov, max_step=100), "button": ButtonMarkovOracle(**markov),
                "drawer": DrawerMarkovOracle(**markov), "window": WindowMarkovOracle(**markov)}
    return {"button": ButtonPlanOracle(**plan, gripper_always_closed=True) if dataset_type == "play"
            else ButtonMarkovOracle(**markov, gripper_always_closed=True)}


def _stack_probability(task_env: str) -> float:
    if "single" in task_env:
        return 0.0
    if "double" in task_env:
        return float(np.random.uniform(0.0, 0.25))
    return 0.5


def _healthy_scene(qpos: np.ndarray) -> bool:
    """generate_manipspace.py's scene check: the cube never too far right, nor too far left outside the drawer."""
    cube = qpos[:, 14:17]
    return not ((cube[:, 1] >= 0.29).any() or ((cube[:, 1] <= -0.3) & ((cube[:, 2] < 0.06) | (cube[:, 2] > 0.08))).any())


def build_dataset(task_env: str, dataset_type: str = "play", visual: bool = False, episodes: int = OGBENCH_EPISODES,
                  episode_steps: int = OGBENCH_EPISODE_STEPS, seed: int = 0, noise: float = 0.1,
                  noise_smoothing: float = 0.5, min_norm: float = 0.4, p_random_action: float | None = None,
                  out_dir: Path | None = None, overwrite: bool = False, progress: bool = True,
                  env_kwargs: dict | None = None, name: str | None = None) -> Path:
    """Collect an OGBench dataset with the package's oracles, as ``generate_manipspace.py`` does (module
    docstring), into OGBench's file format; returns the file. ``env_kwargs``: the env's own (a visual env's
    ``width``/``height``), ``name``: the file's, instead of OGBench's."""
    import gymnasium as gym
    import ogbench  # noqa: F401
    from tqdm.auto import tqdm

    if task_env not in TASK_ENVS:
        raise DatasetError(f"build-ogbench builds {', '.join(TASK_ENVS)}, not {task_env}")
    if dataset_type not in ("play", "noisy"):
        raise DatasetError(f"OGBench's dataset types are play and noisy, not {dataset_type}")
    if p_random_action is None:
        p_random_action = P_RANDOM_ACTION.get(task_env, 0.1) if dataset_type == "noisy" else 0.0
    env_id = f"{'visual-' if visual else ''}{task_env}-v0"
    name = name or dataset_name(f"{'visual-' if visual else ''}{task_env}", dataset_type, episodes, episode_steps)
    path = (out_dir or ogbench_dir()) / f"{name}.npz"
    if path.exists() and not overwrite:
        log.info("%s exists; kept (overwrite to build it again)", path)
        return path
    np.random.seed(seed)
    env = gym.make(env_id, terminate_at_goal=False, mode="data_collection", max_episode_steps=episode_steps,
                   **(env_kwargs or {}))
    env.action_space.seed(seed)
    oracles = _oracles(env, task_env, dataset_type, noise, noise_smoothing, min_norm)
    keys = ["observations", "actions", "terminals", "qpos", "qvel"]
    if hasattr(env.unwrapped, "_cur_button_states"):
        keys.append("button_states")
    columns: dict[str, list] = {k: [] for k in keys}
    first_reset = True
    for _ in tqdm(range(episodes), desc=f"build {name}", disable=not progress):
        while True:
            ob, info = env.reset(seed=seed) if first_reset else env.reset()
            first_reset = False
            p_stack = _stack_probability(task_env)
            xi = np.random.uniform(0, noise) if dataset_type == "noisy" else 0.0
            agent = oracles[info["privileged/target_task"]]
            agent.reset(ob, info)
            episode: dict[str, list] = {k: [] for k in keys}
            done = False
            while not done:
                if np.random.rand() < p_random_action:
                    action = env.action_space.sample()
                else:
                    action = np.array(agent.select_action(ob, info))
                    if dataset_type == "noisy":
                        action = action + np.random.normal(0, [xi, xi, xi, xi * 3, xi * 10], action.shape)
                action = np.clip(action, -1, 1)
                next_ob, _, terminated, truncated, info = env.step(action)
                done = terminated or truncated
                if agent.done:
                    agent_ob, agent_info = env.unwrapped.set_new_target(p_stack=p_stack)
                    agent = oracles[agent_info["privileged/target_task"]]
                    agent.reset(agent_ob, agent_info)
                for key, value in (("observations", ob), ("actions", action), ("terminals", done),
                                   ("qpos", info["prev_qpos"]), ("qvel", info["prev_qvel"])):
                    episode[key].append(value)
                if "button_states" in episode:
                    episode["button_states"].append(info["prev_button_states"])
                ob = next_ob
            if task_env != "scene" or _healthy_scene(np.asarray(episode["qpos"])):
                break
        for key in keys:
            columns[key].extend(episode[key])
    env.close()
    dtypes = {"terminals": bool, "button_states": np.int64, "observations": np.uint8 if visual else np.float32}
    arrays = {k: np.asarray(v, dtype=dtypes.get(k, np.float32)) for k, v in columns.items()}
    recipe = {"o2o-data": ["build-ogbench", "--env", task_env, "--type", dataset_type, *(["--visual"] if visual else []),
                           "--episodes", str(episodes), "--episode-steps", str(episode_steps), "--seed", str(seed)],
              "ogbench_recipe": "data_gen_scripts/generate_manipspace.py (commands.sh)", "noise": noise,
              "noise_smoothing": noise_smoothing, "min_norm": min_norm, "p_random_action": p_random_action,
              "episodes": episodes, "episode_steps": episode_steps, "ogbench_episodes": OGBENCH_EPISODES,
              "env_kwargs": dict(env_kwargs or {}),
              "ogbench_version": _ogbench_version()}
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.partial.npz")
    np.savez_compressed(staging, **arrays, **{RECIPE_KEY: np.array(json.dumps(recipe))})
    os.replace(staging, path)  # a complete file or none
    log.info("built %s: %d trajectories, %d steps", path, episodes, len(arrays["actions"]))
    return path


def _ogbench_version() -> str:
    from importlib.metadata import version

    return version("ogbench")
