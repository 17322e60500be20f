"""Each env option runs the task its dataset records: the recorded env spec, AntMaze's x, y, Kitchen's tasks."""
import json
import subprocess

import gymnasium as gym
import numpy as np
import pytest

from conftest import ROOT, compose
from o2o.config import validate
from o2o.data.checks import check_recorded_env
from o2o.envs import SuccessFromTasks, make_env
from o2o.errors import DatasetError

SPECS = {k: v for k, v in json.loads((ROOT / "tests" / "fixtures" / "minari_env_specs.json").read_text()).items()
         if not k.startswith("_")}
ENVS = sorted(p.stem for p in (ROOT / "conf" / "env").glob("*.yaml"))


@pytest.mark.parametrize("env", ENVS)
def test_env_option_agrees_with_its_datasets_recorded_env(env):
    cfg = validate(compose([f"env={env}", *(["env.dataset.collector.steps=1500"] if env.startswith("pointmaze") else [])])).env
    dataset = cfg.dataset.id
    if cfg.dataset.ogbench:  # OGBench's files record no env: its registration and its dataset names are the spec
        import ogbench  # noqa: F401

        spec = gym.spec(cfg.gym_id)
        assert cfg.max_episode_steps == spec.max_episode_steps and not cfg.gym_kwargs
        assert cfg.dataset.ogbench == cfg.gym_id.split("-singletask")[0] + "-play-v0"
        return
    if cfg.dataset.collector is not None:  # this project's own data: the spec its collector recorded
        import minari

        from o2o.data.dataset import _collect_if_missing
        from o2o.data.minari import recorded_env_spec

        _collect_if_missing(cfg)
        spec = recorded_env_spec(minari.load_dataset(dataset).storage.metadata)
        assert spec is not None and spec["id"] == cfg.gym_id
        check_recorded_env(spec, cfg, dataset)
        return
    check_recorded_env(SPECS[dataset], cfg, dataset)  # raises on any disagreement


def test_a_horizon_that_differs_from_the_recorded_one_stops_with_one_line():
    cfg = validate(compose(["env=kitchen_partial", "env.max_episode_steps=280"])).env
    with pytest.raises(DatasetError) as err:
        check_recorded_env(SPECS["D4RL/kitchen/partial-v2"], cfg, "D4RL/kitchen/partial-v2")
    message = str(err.value)
    assert "\n" not in message and "450" in message and "280" in message and "env.max_episode_steps=450" in message


def test_a_kwarg_left_at_the_envs_default_is_compared_too():
    cfg = validate(compose(["env=kitchen_mixed"])).env
    del cfg.gym_kwargs["remove_task_when_completed"]  # FrankaKitchen's default is true, the data's false
    with pytest.raises(DatasetError, match="remove_task_when_completed=false.*runs remove_task_when_completed=true"):
        check_recorded_env(SPECS["D4RL/kitchen/mixed-v2"], cfg, "D4RL/kitchen/mixed-v2")


def test_a_local_minari_dataset_recorded_elsewhere_is_refused_before_any_work(main_py, tmp_path):
    """End to end: a dataset recorded in FrankaKitchen-v1 at 450 steps, run with a 280-step env option."""
    import minari
    from minari.data_collector import EpisodeBuffer

    from o2o.envs import register_robotics

    register_robotics()
    kwargs = {"tasks_to_complete": ["microwave", "kettle", "light switch", "slide cabinet"],
              "remove_task_when_completed": False, "terminate_on_tasks_completed": False}
    env = gym.make("FrankaKitchen-v1", max_episode_steps=450, **kwargs)
    obs, _ = env.reset(seed=0)
    steps = [obs]
    actions = []
    for _ in range(3):
        actions.append(env.action_space.sample())
        steps.append(env.step(actions[-1])[0])
    observations = {k: np.asarray([np.asarray(s[k]) if not isinstance(s[k], dict) else 0 for s in steps])
                    for k in ("observation",)}
    observations["achieved_goal"] = {t: np.asarray([s["achieved_goal"][t] for s in steps]) for t in kwargs["tasks_to_complete"]}
    observations["desired_goal"] = {t: np.asarray([s["desired_goal"][t] for s in steps]) for t in kwargs["tasks_to_complete"]}
    minari.create_dataset_from_buffers(
        "o2o-test/kitchen/spec-v0", [EpisodeBuffer(id=0, observations=observations, actions=np.asarray(actions),
                                                   rewards=[0.0] * 3, terminations=[False] * 3,
                                                   truncations=[False, False, True], infos={})],
        env=env.spec, algorithm_name="test", author="o2o", author_email="o2o@example.org",
        code_permalink="https://example.org", description="spec test")
    env.close()
    proc = subprocess.run(main_py + ["env=kitchen_partial", "env.dataset.id=o2o-test/kitchen/spec-v0",
                                     "env.max_episode_steps=280", f"hydra.run.dir={tmp_path}/run"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "max_episode_steps 450" in error[0] and "Traceback" not in proc.stderr


def test_antmaze_observation_starts_with_the_ants_x_y():
    cfg = validate(compose(["env=antmaze_umaze"]))
    env = make_env(cfg.env, seed=0)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (29,)  # D4RL's AntMaze observation: no goal in it
    for _ in range(5):
        obs, *_ = env.step(env.action_space.sample())
        qpos = env.unwrapped.ant_env.data.qpos
        np.testing.assert_allclose(obs[:2], qpos[:2], rtol=1e-6)  # torso x, y from the simulator
        np.testing.assert_allclose(obs[2], qpos[2], rtol=1e-6)  # then the torso height
    env.close()


class _Kitchen(gym.Env):
    """Stands in for FrankaKitchen: four goal tasks; info lists the tasks completed so far."""

    observation_space = gym.spaces.Box(-1, 1, (1,))
    action_space = gym.spaces.Box(-1, 1, (1,))

    def __init__(self, completed):
        self.goal, self.completed = {t: None for t in ("microwave", "kettle", "light switch", "slide cabinet")}, completed

    def reset(self, *, seed=None, options=None):
        return np.zeros(1, np.float32), {}

    def step(self, action):
        info = {"episode_task_completions": list(self.completed), "tasks_to_complete": list(self.goal)}
        return np.zeros(1, np.float32), float(len(self.completed)), False, False, info


@pytest.mark.parametrize("completed, solved, success", [
    (["microwave", "kettle", "light switch"], 0.75, False),
    (["microwave", "kettle", "light switch", "slide cabinet"], 1.0, True),
    (["microwave", "bottom burner"], 0.25, False),  # a task outside the option's four does not count
])
def test_kitchen_tasks_solved_and_success_with_completed_tasks_kept_in_the_list(completed, solved, success):
    env = SuccessFromTasks(_Kitchen(completed))
    env.reset()
    *_, info = env.step(np.zeros(1))
    assert info["tasks_solved"] == solved and info["success"] is success


def test_kitchen_options_run_their_datasets_tasks():
    partial = validate(compose(["env=kitchen_partial"])).env
    assert partial.gym_kwargs["tasks_to_complete"] == ["microwave", "kettle", "light switch", "slide cabinet"]
    assert validate(compose(["env=kitchen_mixed"])).env.gym_kwargs["tasks_to_complete"][2] == "bottom burner"
    env = make_env(partial, seed=0)
    assert env.spec.max_episode_steps == 450 and not env.unwrapped.remove_task_when_completed
    env.close()


def test_pen_episodes_last_100_steps_in_the_env_and_the_built_data():
    from o2o.data.build.adroit import HORIZON, make_adroit

    cfg = validate(compose(["env=adroit_pen"]))
    assert make_env(cfg.env).spec.max_episode_steps == 100
    assert HORIZON["pen"] == 100 and make_adroit("pen").spec.max_episode_steps == 100


def test_collecting_a_dataset_says_so_when_it_starts(tmp_path, monkeypatch, caplog):
    """Collection takes seconds to minutes: a line says what is collected, how much, and where it will stay."""
    import logging

    from o2o.data.dataset import _collect_if_missing

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    cfg = validate(compose(["env.dataset.collector.steps=300"])).env
    with caplog.at_level(logging.INFO, logger="o2o.data.build.collectors"):
        _collect_if_missing(cfg)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("collecting ")]
    assert lines == [f"collecting {cfg.dataset.id}: 300 env steps with pointmaze_waypoints, once (later runs read it "
                     f"from {tmp_path / 'minari'})"]
