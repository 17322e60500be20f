"""Every env option composes, builds its env, resets and steps, with its dataset's shapes."""
import warnings

import numpy as np
import pytest

from conftest import ROOT, compose
from o2o.config import validate
from o2o.envs import make_env

# (observation, action) sizes of each env's dataset, from the Minari / D4RL formats
DATASET_SHAPES = {
    "adroit_door": (39, 28), "adroit_pen": (45, 24), "adroit_relocate": (39, 30), "adroit_hammer": (46, 26),
    **{f"antmaze_{m}": (29, 8) for m in ("umaze", "umaze_diverse", "medium_play", "medium_diverse",
                                           "large_play", "large_diverse")},
    "kitchen_partial": (59, 9), "kitchen_mixed": (59, 9), "kitchen_complete": (59, 9),
    "halfcheetah": (17, 6), "hopper": (11, 3), "walker2d": (17, 6), "pointmaze_umaze": (6, 2),
    "pointmaze_medium": (6, 2),
    # OGBench's single-task envs: states, and 64x64 RGB frames for the visual ones
    "ogbench_cube_single": (28, 5), "ogbench_cube_double": (37, 5), "ogbench_scene": (40, 5),
    "ogbench_puzzle_3x3": (55, 5),
    **{f"ogbench_visual_{t}": ((64, 64, 3), 5) for t in ("cube_single", "cube_double", "scene", "puzzle_3x3")},
    "visual_pick_place": ((64, 64, 3), 5),
}
ENVS = sorted(p.stem for p in (ROOT / "conf" / "env").glob("*.yaml"))


def test_every_env_option_has_known_dataset_shapes():
    assert {e.removesuffix("_dense") for e in ENVS} == set(DATASET_SHAPES)


@pytest.mark.parametrize("env_name", ENVS)
def test_env_option_builds_resets_and_steps(env_name):
    cfg = validate(compose([f"env={env_name}"]))
    if env_name.startswith("ogbench_visual_"):  # rendered twins of tested state options; visual_pick_place is built
        import gymnasium as gym
        import ogbench  # noqa: F401

        kwargs = gym.spec(cfg.env.gym_id).kwargs
        assert (kwargs["ob_type"], kwargs["width"], kwargs["height"]) == ("pixels", 64, 64)
        assert gym.spec(cfg.env.gym_id.removeprefix("visual-")).id in [
            validate(compose([f"env={e}"])).env.gym_id for e in ENVS if e.startswith("ogbench_") and "visual" not in e]
        assert cfg.encoder.name == "impala_small"
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env = make_env(cfg.env, seed=0)
        obs, _ = env.reset(seed=0)
        for _ in range(3):
            obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    obs_shape, act_dim = DATASET_SHAPES[env_name.removesuffix("_dense")]
    frames = isinstance(obs_shape, tuple)
    assert obs.shape == (obs_shape if frames else (obs_shape,)) and obs.dtype == (np.uint8 if frames else np.float32)
    assert (cfg.encoder.name != "none") == frames  # an env option of frames picks its encoder
    assert env.action_space.shape == (act_dim,)
    assert np.isfinite(reward)
    assert ("success" in info) == (env_name not in ("halfcheetah", "hopper", "walker2d"))
    normalized = "normalized_return" in (cfg.domain.metric, *cfg.domain.extra_metrics)
    assert cfg.env.ref_min_score is not None or cfg.env.dataset.collector or not normalized
    env.close()


def test_binary_reward_on_the_adroit_env():
    cfg = validate(compose(["env=adroit_door"]))
    env = make_env(cfg.env, cfg.domain, seed=0)
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step(env.action_space.sample())
    assert reward == -1.0 and not terminated and "task_reward" in info  # no success yet: -1, the dense reward kept


def test_domain_presets():
    ant = validate(compose(["env=antmaze_large_diverse"]))
    assert ant.algo.lagrange and ant.algo.target_action_gap == 0.8 and ant.algo.critic_hidden == [256] * 4
    assert (ant.algo.reward_scale, ant.algo.reward_bias) == (10.0, -5.0)
    for algo in ("cql", "calql"):  # PointMaze follows the AntMaze recipe, Lagrange CQL included
        maze = validate(compose(["env=pointmaze_umaze", f"algo={algo}"])).algo
        assert (maze.lagrange, maze.cql_weight, maze.target_action_gap) == (True, ant.algo.cql_weight, 0.8)
    kitchen = validate(compose(["env=kitchen_mixed"]))
    assert not kitchen.algo.importance_sampling and kitchen.algo.mixing_ratio == 0.25
    assert validate(compose(["env=adroit_pen"])).schedule.online_steps == 200_000
    assert validate(compose(["env=adroit_door"])).schedule.online_steps == 1_000_000
    iql = validate(compose(["env=antmaze_umaze", "algo=iql"]))
    assert (iql.algo.expectile, iql.algo.awr_temperature) == (0.9, 10.0)
    iql = validate(compose(["env=adroit_door", "algo=iql"]))
    assert (iql.algo.expectile, iql.algo.awr_temperature) == (0.7, 0.5)  # kitchen_config.py, the README's Adroit config
    iql = validate(compose(["env=kitchen_partial", "algo=iql"]))
    assert (iql.algo.expectile, iql.algo.awr_temperature) == (0.7, 0.5)


def test_the_adroit_dense_notice_shows_only_for_the_dense_adroit_options():
    """Gymnasium-Robotics prints its dense-reward notice at import; here only a dense Adroit run shows it."""
    import subprocess
    import sys

    from conftest import ROOT

    code = ("import sys; sys.path.insert(0, {src!r})\n"
            "from conftest import compose\n"
            "from o2o.config import validate\n"
            "from o2o.envs import make_env\n"
            "make_env(validate(compose(['env={env}'])).env)\n")
    for env, shown in (("pointmaze_umaze", False), ("adroit_door", False), ("adroit_door_dense", True)):
        done = subprocess.run([sys.executable, "-c", code.format(src=str(ROOT / "src"), env=env)], capture_output=True,
                              text=True, cwd=ROOT / "tests", timeout=120)
        assert done.returncode == 0, done.stderr[-1000:]
        assert ("reward functions were updated" in done.stderr + done.stdout) == shown, (env, done.stderr)


def test_an_unknown_gym_id_says_how_an_env_of_ones_own_is_named_and_a_wrong_version_does_not():
    from o2o.errors import ConfigError

    hint = "an env of your own is named with the module that registers it, module:EnvId"
    with pytest.raises(ConfigError, match="cannot be made: Environment `LineReach` doesn't exist") as bare:
        make_env(validate(compose(["env.gym_id=LineReach-v0"])).env)
    assert str(bare.value).endswith(hint + " (env.gym_id=my_envs:MyEnv-v0)")
    with pytest.raises(ConfigError, match="Environment version `v99` for environment `PointMaze_UMaze`") as version:
        make_env(validate(compose(["env.gym_id=PointMaze_UMaze-v99"])).env)
    assert hint not in str(version.value)


def test_the_success_probe_leaves_the_global_random_streams_as_seeded():
    """An env that draws from numpy's or Python's global stream (OGBench's multi-task reset does) must not shift the
    run's: the probe restores both."""
    import random

    import gymnasium as gym

    from o2o.pipeline import check_success_info

    class Drawing(gym.Env):
        observation_space = gym.spaces.Box(-1, 1, (2,), np.float32)
        action_space = gym.spaces.Box(-1, 1, (2,), np.float32)

        def reset(self, seed=None, options=None):
            np.random.rand(), random.random()
            return np.zeros(2, np.float32), {}

        def step(self, action):
            np.random.rand(), random.random()
            return np.zeros(2, np.float32), 0.0, False, False, {"success": False}

    np.random.seed(3)
    random.seed(3)
    expected = np.random.rand(), random.random()
    np.random.seed(3)
    random.seed(3)
    check_success_info(Drawing(), validate(compose([])))
    assert (np.random.rand(), random.random()) == expected
