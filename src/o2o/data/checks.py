"""What every data source is checked for before training: the env's shapes, finite values, the action clip, and
(where a dataset records it) the env it was recorded in."""
from __future__ import annotations

import os
from dataclasses import replace

import numpy as np

from o2o.config import EnvConfig
from o2o.data.offline_data import OfflineData
from o2o.errors import DatasetError

# Dataset actions are clipped to +-(1 - 1e-5) so a tanh policy's log-probability of them stays finite, as
# every reference does: nakamotoo/Cal-QL (clip_action=0.99999), ikostrikov/rlpd and IQL (clip_to_eps, 1e-5).
ACTION_CLIP = 1.0 - 1e-5


def clip_actions(data: OfflineData) -> OfflineData:
    """Dataset actions inside the tanh policy's open range (``ACTION_CLIP``); values outside [-1, 1] are said (the
    Adroit human demonstrations have some, up to 1.37; data on another scale would have many)."""
    outside = np.abs(data.actions) > 1.0
    if outside.any():
        import logging

        logging.getLogger("o2o").info("%s: %.2g%% of the action values lie outside [-1, 1] (up to %.3g), clipped to "
                                      "+-%s as the references clip", data.source, 100 * outside.mean(),
                                      float(np.abs(data.actions).max()), ACTION_CLIP)
    return replace(data, actions=np.clip(data.actions, -ACTION_CLIP, ACTION_CLIP))


def check_finite(data: OfflineData) -> None:
    """NaN or inf in the data would train silently into NaN weights: stop with the field and the count."""
    for name in ("observations", "actions", "rewards", "next_observations"):
        values = getattr(data, name)
        if not np.issubdtype(values.dtype, np.floating):  # frames (uint8) hold only finite values
            continue
        bad = int(np.count_nonzero(~np.isfinite(values.reshape(len(values), -1)).all(axis=1)))
        if bad:
            raise DatasetError(f"{data.source}: {bad} transitions with non-finite values (NaN or inf) in {name}; "
                               "clean the dataset or choose another one")


def check_matches_env(data: OfflineData, cfg: EnvConfig, observation_shape: tuple, action_shape: tuple) -> None:
    got_obs, got_act = data.observations.shape[1:], data.actions.shape[1:]
    if len(observation_shape) == 3 and data.observations.dtype != np.uint8:
        raise DatasetError(f"dataset {data.source} holds {data.observations.dtype} observations and env {cfg.gym_id} "
                           "gives uint8 frames: choose the dataset of frames recorded in this env")
    if tuple(got_obs) != tuple(observation_shape) or tuple(got_act) != tuple(action_shape):
        raise DatasetError(
            f"dataset {data.source} does not match env {cfg.gym_id} (env={cfg.name}): dataset observations "
            f"{tuple(got_obs)} and actions {tuple(got_act)}, env observations {tuple(observation_shape)} and "
            f"actions {tuple(action_shape)}. Choose the dataset recorded in this env (env.dataset.id / "
            "env.dataset.path) or fix env.obs_keys.")


IGNORED_KWARGS = ("render_mode",)  # how an env is shown, not which task it is


def effective_env_kwargs(gym_id: str, gym_kwargs: dict, keys) -> dict:
    """The kwargs the configured env really runs with, for ``keys``: the config's, else the registration's,
    else the env constructor's defaults."""
    import inspect

    import gymnasium as gym
    from gymnasium.envs.registration import load_env_creator

    from o2o.envs import register_robotics, registered_id

    register_robotics()
    spec = gym.spec(registered_id(gym_id))
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
    from o2o.envs import registered_id

    if recorded.get("id") and recorded["id"] != registered_id(cfg.gym_id):
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


# Parts of an Adroit observation that are differences of two other parts by construction, (d, a, b):
# obs[d:d+3] == obs[a:a+3] - obs[b:b+3]. From each env's _get_obs (gymnasium_robotics/envs/adroit_hand/adroit_*.py,
# the layout of mj_envs' v0 envs): door palm - handle, pen object orientation - desired orientation, relocate
# object - target = (palm - target) - (palm - object).
ADROIT_LAYOUT = {"AdroitHandDoor-v1": (35, 29, 32), "AdroitHandPen-v1": (42, 33, 36), "AdroitHandRelocate-v1": (36, 33, 30)}


LAYOUT_TOLERANCE = 1e-3  # float32 storage of float64 positions of order 1


def layout_error(observations: np.ndarray, gym_id: str) -> float:
    """The largest violation of the env's layout identity over the rows (0 when it holds exactly)."""
    d, a, b = ADROIT_LAYOUT[gym_id]
    obs = np.asarray(observations, dtype=np.float64)
    return float(np.abs(obs[:, d:d + 3] - (obs[:, a:a + 3] - obs[:, b:b + 3])).max(initial=0.0))


def check_adroit_layout(data: OfflineData, cfg: EnvConfig, env_observation: np.ndarray) -> None:
    """The data's observations are laid out as the env's: the identity holds in both (a dataset recorded with another
    ordering or another env version breaks it)."""
    if cfg.gym_id not in ADROIT_LAYOUT:
        return
    d, a, b = ADROIT_LAYOUT[cfg.gym_id]
    if layout_error(env_observation[None], cfg.gym_id) > LAYOUT_TOLERANCE:
        raise DatasetError(f"{cfg.gym_id}'s own observation breaks obs[{d}:{d + 3}] = obs[{a}:{a + 3}] - "
                           f"obs[{b}:{b + 3}]: this Gymnasium-Robotics version changed the layout the data was "
                           "recorded in; install the version in pyproject.toml")
    error = layout_error(data.observations, cfg.gym_id)
    if error > LAYOUT_TOLERANCE:
        raise DatasetError(f"{data.source}: observations are not laid out as {cfg.gym_id}'s (obs[{d}:{d + 3}] should "
                           f"be obs[{a}:{a + 3}] - obs[{b}:{b + 3}]; off by up to {error:.3g}): the data was recorded "
                           "in another env or another observation order; choose the data of this env")


def check_reference_scores(ref_min, ref_max, source: str) -> None:
    """A dataset's reference scores, where it records them: finite, and the maximum above the minimum (reversed or NaN
    scores would turn every normalized return into nonsense or drop it silently)."""
    import math

    if ref_min is None and ref_max is None:
        return
    if ref_min is None or ref_max is None or not (math.isfinite(ref_min) and math.isfinite(ref_max)) \
            or ref_max <= ref_min:
        raise DatasetError(f"{source} records reference scores min {ref_min} and max {ref_max}: they must be finite "
                           "with max above min; fix the dataset's ref_min_score / ref_max_score")


FRAME_LOAD_COPIES = 5  # frames held at once while loading: the file's, observations, next observations, the buffer's two


def free_host_memory() -> int:
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_frames_fit(source: str, shape: tuple, dtype, free_bytes: int | None = None, hint: str = "") -> None:
    """A dataset of ``shape`` (N, ...) observations that cannot be loaded in the free memory stops before loading,
    with what it needs (images: the frames are held several times while loading, FRAME_LOAD_COPIES)."""
    free = free_host_memory() if free_bytes is None else free_bytes
    need = FRAME_LOAD_COPIES * int(np.prod(shape)) * np.dtype(dtype).itemsize
    if need > free:
        raise DatasetError(f"{source}: {shape[0]} observations of {tuple(shape[1:])} {np.dtype(dtype)} need about "
                           f"{need / 2**30:.1f} GiB to load and {free / 2**30:.1f} GiB are free: "
                           f"{hint or 'use a smaller dataset'} or a machine with more memory")
