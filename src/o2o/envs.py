"""Environment construction: the same observation layout and reward rules as the data."""
from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from o2o.config import DomainConfig, EnvConfig
from o2o.errors import ConfigError


def is_image_space(space) -> bool:
    """An observation space of uint8 frames (H, W, C): kept as images, never flattened to floats."""
    return isinstance(space, gym.spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3


def flatten_observation(obs: Any, keys: list[str]) -> np.ndarray:
    """Concatenate the chosen keys of a dict observation (or pass an array through)."""
    if not keys:
        return np.asarray(obs, dtype=np.float32)
    return np.concatenate([np.asarray(obs[k], dtype=np.float32).reshape(-1) for k in keys])


class FlatObservation(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """Dict observations -> one float32 vector, keys in the configured order. Image observations (uint8 frames
    (H, W, C)) pass through as they are."""

    def __init__(self, env: gym.Env, keys: list[str]):
        gym.utils.RecordConstructorArgs.__init__(self, keys=list(keys))
        gym.ObservationWrapper.__init__(self, env)
        self.keys = list(keys)
        space = env.observation_space
        self.frames = is_image_space(space)
        if isinstance(space, gym.spaces.Box) and len(space.shape) == 3 and not self.frames:
            raise ConfigError(f"{env.spec.id if env.spec else 'the env'}'s observations are {space.dtype} arrays "
                              f"{space.shape}: image observations are uint8 frames (H, W, C); convert them in the env")
        if self.frames:
            if self.keys:
                raise ConfigError(f"env.obs_keys {self.keys} name dict keys, and {env.spec.id if env.spec else 'the env'}'s "
                                  "observations are images: leave env.obs_keys empty")
            return
        available = list(space.spaces) if isinstance(space, gym.spaces.Dict) else []
        unknown = [k for k in self.keys if k not in available]
        if available and not self.keys:
            raise ConfigError(f"env.obs_keys is empty, but {env.spec.id if env.spec else 'the env'}'s observation is a "
                              f"dict (keys: {', '.join(available)}): list the keys the agent sees, in order")
        if unknown:
            raise ConfigError(f"env.obs_keys {unknown} are not in {env.spec.id if env.spec else 'the env'}'s "
                              f"observation (keys: {', '.join(available) or 'none, it is an array'})")
        sample = flatten_observation(env.observation_space.sample(), self.keys)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=sample.shape, dtype=np.float32)

    def observation(self, observation: Any) -> np.ndarray:
        return observation if self.frames else flatten_observation(observation, self.keys)


class BinarySuccessReward(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """The Cal-QL Adroit setting: reward 0 on success and -1 otherwise; the task's own reward stays in
    ``info["task_reward"]``."""

    def __init__(self, env: gym.Env):
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.Wrapper.__init__(self, env)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        info["task_reward"] = float(reward)
        return obs, (0.0 if info.get("success", False) else -1.0), terminated, truncated, info


class EndOnSuccess(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """The first success ends the episode (terminal): the authors' Adroit sampler (nakamotoo/Cal-QL,
    JaxCQL/sampler.py) and D4RL's AntMaze evaluation env (``eval``: done within 0.5 of the goal)."""

    def __init__(self, env: gym.Env):
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.Wrapper.__init__(self, env)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated or bool(info.get("success", False)), truncated, info


class SuccessFromTasks(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Franka Kitchen: ``tasks_solved`` = fraction of the configured tasks completed so far in the episode;
    success = all of them; ``tasks_at_goal`` = the fraction in their goal state at this step (the authors' score at
    an episode's last step).

    Read from ``episode_task_completions``, which counts every task once completed whether or not the env
    removes completed tasks from ``tasks_to_complete`` (the D4RL data keeps them: remove_task_when_completed
    false).
    """

    def __init__(self, env: gym.Env):
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.Wrapper.__init__(self, env)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        goal = self.env.unwrapped.goal
        done = [task for task in info.get("episode_task_completions", []) if task in goal]
        info["tasks_solved"] = len(done) / len(goal)
        info["success"] = len(done) == len(goal)
        # in their goal state now (with remove_task_when_completed false, the step's completions: what the reward counts)
        info["tasks_at_goal"] = len([t for t in info.get("step_task_completions", []) if t in goal]) / len(goal)
        return obs, reward, terminated, truncated, info


OGBENCH_PREFIXES = ("cube-", "scene-", "puzzle-", "visual-")  # ids the ogbench package registers on import

_ADROIT_DENSE_NOTICE: list[str] = []  # Gymnasium-Robotics' import-time notice, kept for the runs it concerns


def register_robotics() -> None:
    """Gymnasium-Robotics' envs. Its import prints a notice about the Adroit envs' dense rewards
    (farama_notifications) on every run; it is held back here and shown by :func:`make_env` for the dense Adroit
    options only, the runs it concerns."""
    import sys

    if "gymnasium_robotics" not in sys.modules:
        try:
            from farama_notifications import notifications

            held = notifications.pop("gymnasium_robotics", {})
            _ADROIT_DENSE_NOTICE.extend(sorted(set(held.values())))
        except ImportError:
            pass
    import gymnasium_robotics

    gym.register_envs(gymnasium_robotics)
    _fix_joint_type_checks()


def _fix_joint_type_checks() -> None:
    """FrankaKitchen-v1 fails at reset with newer mujoco (3.12+, 4.x).

    gymnasium-robotics' joint helpers test ``joint_type in (mjJNT_HINGE, ...)``
    with a numpy integer, which mujoco's enums no longer compare equal to. The
    helpers are replaced, only when that comparison fails, by ones comparing ints.
    """
    import mujoco
    from gymnasium_robotics.utils import mujoco_utils

    if np.int32(int(mujoco.mjtJoint.mjJNT_HINGE)) in (mujoco.mjtJoint.mjJNT_HINGE,):
        return
    free, ball = int(mujoco.mjtJoint.mjJNT_FREE), int(mujoco.mjtJoint.mjJNT_BALL)
    qpos_dims, qvel_dims = {free: 7, ball: 4}, {free: 6, ball: 3}

    def joint_slice(model, name, address, dims):
        joint_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, name)
        assert joint_id != -1, f"Joint with name '{name}' is not part of the model!"
        start = int(getattr(model, address)[joint_id])
        return slice(start, start + dims.get(int(model.jnt_type[joint_id]), 1))

    def get_joint_qpos(model, data, name):
        return data.qpos[joint_slice(model, name, "jnt_qposadr", qpos_dims)].copy()

    def get_joint_qvel(model, data, name):
        return data.qvel[joint_slice(model, name, "jnt_dofadr", qvel_dims)].copy()

    def set_joint_qpos(model, data, name, value):
        data.qpos[joint_slice(model, name, "jnt_qposadr", qpos_dims)] = value

    def set_joint_qvel(model, data, name, value):
        data.qvel[joint_slice(model, name, "jnt_dofadr", qvel_dims)] = value

    for fn in (get_joint_qpos, get_joint_qvel, set_joint_qpos, set_joint_qvel):
        setattr(mujoco_utils, fn.__name__, fn)


def acts_in_unit_box(space) -> bool:
    """Whether actions are a Box in [-1, 1], the range every policy here acts in (a tanh)."""
    return isinstance(space, gym.spaces.Box) and bool(np.all(space.low == -1.0) and np.all(space.high == 1.0))


def registered_id(gym_id: str) -> str:
    """The env's registered id. Gymnasium's ``module:EnvId`` imports ``module``, which registers the env: here that
    module is imported (found in the folder the command runs from, as ``python -m`` finds it, or on PYTHONPATH) and
    ``EnvId`` returned; a plain id is returned as it is."""
    import importlib
    import os
    import sys

    module, _, name = gym_id.rpartition(":")
    if not module:
        return name
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        importlib.import_module(module)
    except Exception as err:  # not found, or failing at import
        raise ConfigError(f"env.gym_id names the module {module!r}, which cannot be imported ({type(err).__name__}: "
                          f"{err}): run from the folder that holds it, or add its folder to PYTHONPATH") from None
    return name


def make_env(cfg: EnvConfig, domain: DomainConfig | None = None, *, seed: int | None = None) -> gym.Env:
    """Build the configured env with a flat float32 observation (or uint8 frames), under the domain's episode rules
    if given (binary reward, end at success): training and evaluation envs alike."""
    register_robotics()
    if cfg.gym_id.startswith(OGBENCH_PREFIXES):
        import ogbench  # noqa: F401  registers its envs
    if cfg.gym_id.startswith("AdroitHand") and cfg.name.endswith("_dense") and _ADROIT_DENSE_NOTICE:
        import logging

        logging.getLogger("o2o").warning("Gymnasium-Robotics: %s", _ADROIT_DENSE_NOTICE.pop())
    kwargs = dict(cfg.gym_kwargs)
    if cfg.max_episode_steps is not None:
        kwargs["max_episode_steps"] = cfg.max_episode_steps
    try:
        env = gym.make(registered_id(cfg.gym_id), **kwargs)
    except gym.error.Error as err:  # unknown id or version
        own = ("; an env of your own is named with the module that registers it, module:EnvId "
               "(env.gym_id=my_envs:MyEnv-v0)" if isinstance(err, (gym.error.NameNotFound, gym.error.NamespaceNotFound)) and ":" not in cfg.gym_id
               else "")
        raise ConfigError(f"env.gym_id={cfg.gym_id} cannot be made: {err}{own}") from None
    except TypeError as err:  # a kwarg the env does not take
        raise ConfigError(f"env.gym_kwargs do not fit {cfg.gym_id}: {err}") from None
    env = FlatObservation(env, cfg.obs_keys)
    if cfg.reward_shift:
        env = gym.wrappers.TransformReward(env, lambda r: r + cfg.reward_shift)
    if cfg.gym_id.startswith("FrankaKitchen"):
        env = SuccessFromTasks(env)
    if domain is not None and domain.binary_from_success:
        env = BinarySuccessReward(env)
    if domain is not None and domain.end_on_success:
        env = EndOnSuccess(env)
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env
