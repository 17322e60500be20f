"""Datasets the project collects itself, cached as local Minari datasets.

``pointmaze_waypoints``: a scripted controller that follows the shortest path
of maze cells to the goal, with Gaussian action noise. Reference scores are
measured the way Minari does it: mean return of a uniform random policy
(min) and of the noiseless controller (max).
"""
from __future__ import annotations

import logging
import os
import shutil
import warnings
from collections import deque
from pathlib import Path
from typing import Callable

import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm

from o2o.config import EnvConfig
from o2o.data.minari import minari_root
from o2o.errors import DatasetError
from o2o.rollout import rollout

log = logging.getLogger(__name__)


class WaypointController:
    """PD control towards the next cell centre on the shortest path to the goal."""

    def __init__(self, maze, kp: float = 10.0, kd: float = -1.0):
        self.maze, self.kp, self.kd = maze, kp, kd
        self.grid = np.asarray(maze.maze_map)
        self._next_cell: dict = {}
        self._goal_cell = None

    def _plan(self, goal_cell: tuple) -> None:
        """Breadth-first search from the goal: for each free cell, its neighbour one step closer."""
        self._next_cell = {goal_cell: goal_cell}
        queue = deque([goal_cell])
        while queue:
            cell = queue.popleft()
            for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                nb = (cell[0] + dr, cell[1] + dc)
                if (0 <= nb[0] < self.grid.shape[0] and 0 <= nb[1] < self.grid.shape[1]
                        and self.grid[nb] != 1 and nb not in self._next_cell):
                    self._next_cell[nb] = cell
                    queue.append(nb)
        self._goal_cell = goal_cell

    def __call__(self, obs: dict) -> np.ndarray:
        pos, vel, goal = obs["observation"][:2], obs["observation"][2:], obs["desired_goal"]
        goal_cell = tuple(int(v) for v in self.maze.cell_xy_to_rowcol(goal))
        if goal_cell != self._goal_cell:
            self._plan(goal_cell)
        cell = tuple(int(v) for v in self.maze.cell_xy_to_rowcol(pos))
        nxt = self._next_cell.get(cell, goal_cell)
        target = goal if cell == goal_cell else self.maze.cell_rowcol_to_xy(np.array(nxt))
        action = self.kp * (np.asarray(target) - pos) + self.kd * vel
        return np.clip(action, -1.0, 1.0).astype(np.float32)


def _mean_return(env: gym.Env, policy, episodes: int, seed: int) -> float:
    return float(np.mean([rollout(env, policy, seed=seed + i).rewards.sum() for i in range(episodes)]))


def collect_pointmaze_waypoints(cfg: EnvConfig, reference_episodes: int = 20) -> None:
    import minari
    from minari.data_collector import EpisodeBuffer

    from o2o.envs import register_robotics

    register_robotics()
    kwargs = dict(cfg.gym_kwargs, max_episode_steps=cfg.max_episode_steps)
    env = gym.make(cfg.gym_id, **kwargs)
    controller = WaypointController(env.unwrapped.maze)
    rng = np.random.default_rng(cfg.dataset.collector.seed)

    def noisy(obs):
        noise = rng.normal(0.0, cfg.dataset.collector.noise, size=env.action_space.shape)
        return np.clip(controller(obs) + noise, -1.0, 1.0).astype(np.float32)

    buffers, steps, episode = [], 0, 0
    with tqdm(total=cfg.dataset.collector.steps, desc=f"collect {cfg.dataset.id}", disable=None) as bar:
        while steps < cfg.dataset.collector.steps:
            seed = cfg.dataset.collector.seed * 1_000_003 + episode
            run = rollout(env, noisy, seed=seed)
            buffers.append(EpisodeBuffer(
                id=episode, seed=seed, observations=run.stacked_observations(np.float64), actions=run.actions,
                rewards=run.rewards.tolist(), terminations=run.terminations.tolist(),
                truncations=run.truncations.tolist(), infos={"success": run.success}))
            steps += len(run)
            episode += 1
            bar.update(len(run))

    random_policy = lambda obs: env.action_space.sample()  # noqa: E731
    env.action_space.seed(cfg.dataset.collector.seed)
    ref_min = _mean_return(env, random_policy, reference_episodes, seed=10_000_000)
    ref_max = _mean_return(env, controller, reference_episodes, seed=10_000_000)
    success_rate = np.mean([any(b.infos["success"]) for b in buffers])
    description = (f"Collected by o2o's pointmaze_waypoints collector: BFS waypoints over maze cells, PD control, "
                   f"Gaussian action noise std {cfg.dataset.collector.noise}, seed {cfg.dataset.collector.seed}, "
                   f"{steps} steps in {episode} episodes, success rate {success_rate:.3f}. "
                   f"ref_min_score: uniform random policy, ref_max_score: noiseless controller, "
                   f"{reference_episodes} episodes each.")
    check_room_for(buffers, Path(minari_root()), cfg.dataset.id)
    with warnings.catch_warnings():  # Minari asks for a code permalink and an e-mail address
        warnings.simplefilter("ignore", UserWarning)
        minari.create_dataset_from_buffers(
            dataset_id=cfg.dataset.id, buffer=buffers, env=env.spec, eval_env=env.spec,
            algorithm_name="o2o-pointmaze-waypoints", author="o2o", ref_min_score=ref_min, ref_max_score=ref_max,
            description=description)
    log.info("collected %s: %d steps, %d episodes, success rate %.3f, ref scores %.3f / %.3f",
             cfg.dataset.id, steps, episode, success_rate, ref_min, ref_max)
    env.close()


COLLECTORS = {"pointmaze_waypoints": collect_pointmaze_waypoints}


STAGING_PREFIX = ".o2o-staging-"
# Minari's HDF5 file beyond its arrays, measured on the smoke dataset (1529 steps in 24 episodes: 128 KB of arrays,
# 722 KB of file, about 25 KB per episode): twice both, for chunking and metadata of other shapes
HDF5_BYTES_PER_EPISODE = 2 * 25 * 1024
HDF5_ARRAY_FACTOR = 2


def check_room_for(buffers: list, folder: Path, dataset_id: str) -> None:
    """Refuse to write a dataset onto a disk without room for it: h5py crashes the process (SIGSEGV) when a write
    finds the disk full, which no handler can turn into a message."""
    import shutil

    arrays = sum(np.asarray(v).nbytes for b in buffers for v in (b.observations, b.actions, b.rewards,
                                                                 b.terminations, b.truncations, *b.infos.values()))
    need = arrays * HDF5_ARRAY_FACTOR + len(buffers) * HDF5_BYTES_PER_EPISODE + 2**20
    existing = next(p for p in (folder, *folder.parents) if p.exists())  # Minari creates the folder when it writes
    free = shutil.disk_usage(existing).free
    if need > free:
        raise DatasetError(f"{dataset_id} needs about {need / 2**20:.1f} MiB, and {free / 2**20:.1f} MiB are free "
                           f"on the disk of {existing}: free space, or set MINARI_DATASETS_PATH to a folder on a larger "
                           "disk")


def remove_stale_staging(root: Path) -> None:
    """Staging folders of writers that are gone (killed mid-write): named by their process id, removed when no
    process of that id lives."""
    for folder in root.glob(f"{STAGING_PREFIX}*"):
        pid = folder.name[len(STAGING_PREFIX):]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:  # alive, another user's
            pass


def write_minari_atomically(dataset_id: str, write: Callable[[], None]) -> None:
    """Run ``write`` (which creates ``dataset_id`` with Minari) against a staging folder beside the Minari root,
    then move the dataset into place in one rename: a kill never leaves a half-written dataset where loading looks."""
    root = Path(minari_root())
    remove_stale_staging(root)
    staging = root / f"{STAGING_PREFIX}{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    saved = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(staging)
    try:
        write()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if saved is None:
            os.environ.pop("MINARI_DATASETS_PATH")
        else:
            os.environ["MINARI_DATASETS_PATH"] = saved
    target = root / dataset_id
    for part in Path(dataset_id).parents:  # Minari's namespace records, where missing
        meta = staging / part / "namespace_metadata.json"
        if str(part) != "." and meta.exists() and not (root / part / meta.name).exists():
            (root / part).mkdir(parents=True, exist_ok=True)
            shutil.copy2(meta, root / part / meta.name)
    shutil.rmtree(target, ignore_errors=True)  # a partial leftover of an older interrupted write
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging / dataset_id, target)
    shutil.rmtree(staging, ignore_errors=True)


COLLECTOR_RECORD = "o2o_collector.json"  # beside a collected dataset's data/: the collector params it was built with


def collector_params(cfg: EnvConfig) -> dict:
    c = cfg.dataset.collector
    return {"name": c.name, "steps": int(c.steps), "noise": float(c.noise), "seed": int(c.seed)}


def collect_dataset(cfg: EnvConfig) -> None:
    """Collect the configured dataset, written atomically with the record of its collector params."""
    import json

    name = cfg.dataset.collector.name
    if name not in COLLECTORS:
        raise DatasetError(f"unknown env.dataset.collector.name {name!r}; known: {', '.join(COLLECTORS)}")

    def write() -> None:
        COLLECTORS[name](cfg)
        record = Path(minari_root()) / cfg.dataset.id / COLLECTOR_RECORD  # inside the staging folder: moved with it
        record.write_text(json.dumps(collector_params(cfg), sort_keys=True))

    log.info("collecting %s: %d env steps with %s, once (later runs read it from %s)", cfg.dataset.id,
             cfg.dataset.collector.steps, name, minari_root())
    write_minari_atomically(cfg.dataset.id, write)


def check_collected_with(cfg: EnvConfig) -> None:
    """A cached collected dataset serves a run only if it was built with the run's collector params."""
    import json

    record = Path(minari_root()) / cfg.dataset.id / COLLECTOR_RECORD
    recorded = json.loads(record.read_text()) if record.is_file() else None
    wanted = collector_params(cfg)
    if recorded != wanted:
        built = ("records no collector params (built by an older version)" if recorded is None else
                 "was collected with " + " ".join(f"{k}={recorded.get(k)}" for k in sorted(wanted)))
        raise DatasetError(f"dataset {cfg.dataset.id} in {record.parent} {built}; this run asks for "
                           + " ".join(f"{k}={v}" for k, v in sorted(wanted.items()))
                           + ": set env.dataset.id to a new id for these params, or delete that folder to rebuild it")
