"""OGBench's manipulation tasks: its file format read by hand-counted cases, the single-task relabelling against
OGBench's own pipeline and env, the oracle builder, the download path up to the call, and the env options."""
import json
import shutil
import urllib.error

import gymnasium as gym
import numpy as np
import pytest

from conftest import compose
from o2o.config import validate
from o2o.data import ogbench
from o2o.errors import DatasetError

STATE_ENV = "cube-single-singletask-v0"


def cube_target():
    import ogbench as _  # noqa: F401  registers the envs

    env = gym.make(STATE_ENV)
    env.reset(seed=0)
    target = env.unwrapped._data.mocap_pos.copy()[0]
    env.close()
    return target


def write_file(path, cube_at_goal_rows, rows=8, trajectory_ends=(3, 7)):
    """Two OGBench trajectories of four rows: qpos puts the cube at the task's goal on the given rows."""
    rng = np.random.default_rng(0)
    qpos = np.zeros((rows, 21), np.float32)
    qpos[:, 14:17] = cube_target() + np.array([0.2, 0.0, 0.0])  # away from the goal
    for row in cube_at_goal_rows:
        qpos[row, 14:17] = cube_target()
    terminals = np.zeros(rows, bool)
    terminals[list(trajectory_ends)] = True
    observations = np.arange(rows * 28, dtype=np.float32).reshape(rows, 28)
    np.savez(path, observations=observations, actions=rng.uniform(-1, 1, (rows, 5)).astype(np.float32),
             terminals=terminals, qpos=qpos, qvel=np.zeros((rows, 20), np.float32))
    return observations


def test_the_reader_counts_transitions_rewards_and_episodes_as_done_by_hand(tmp_path):
    path = tmp_path / "two.npz"
    observations = write_file(path, cube_at_goal_rows=[2, 5, 6])
    data = ogbench.load(path, STATE_ENV)
    # each trajectory's last row has no next state: rows 0-2 and 4-6 remain
    assert len(data) == 6
    np.testing.assert_array_equal(data.observations, observations[[0, 1, 2, 4, 5, 6]])
    np.testing.assert_array_equal(data.next_observations, observations[[1, 2, 3, 5, 6, 7]])
    assert data.rewards.tolist() == [-1, -1, 0, -1, 0, 0]  # the state before the step: 0 where the cube is at its goal
    assert data.terminals.tolist() == [False, False, True, False, True, True]  # success ends an episode
    assert data.timeouts.tolist() == [False] * 6  # both trajectories end on a success here
    assert data.num_episodes == 3 and data.success.tolist() == data.terminals.tolist()
    write_file(path, cube_at_goal_rows=[1])
    again = ogbench.load(path, STATE_ENV)
    assert again.rewards.tolist() == [-1, 0, -1, -1, -1, -1] and again.timeouts.tolist() == [0, 0, 1, 0, 0, 1]
    with pytest.raises(DatasetError, match="single-task variant"):
        ogbench.load(path, "cube-single-v0")


def test_the_relabelling_is_ogbenchs_own_and_agrees_with_the_env(tmp_path):
    import ogbench as og

    path = tmp_path / "cube-single-play-v0.npz"
    write_file(path, cube_at_goal_rows=[1, 2, 6])
    shutil.copy(path, tmp_path / "cube-single-play-v0-val.npz")  # OGBench's pipeline reads the validation file too
    _, theirs, _ = og.make_env_and_datasets("cube-single-play-singletask-v0", dataset_path=str(path))
    ours = ogbench.load(path, STATE_ENV)
    np.testing.assert_array_equal(ours.rewards, theirs["rewards"])
    np.testing.assert_array_equal(ours.terminals, theirs["masks"] == 0)
    np.testing.assert_array_equal(ours.next_observations, theirs["next_observations"])

    env = gym.make(STATE_ENV)
    env.reset(seed=0)
    qpos = np.load(path)["qpos"]
    for row, expected in ((0, -1.0), (1, 0.0)):  # the env's reward and end of episode from the same states
        env.unwrapped.set_state(qpos[row].astype(np.float64), np.zeros(20))
        env.unwrapped._success = None
        env.unwrapped.post_step()  # the env computes its success flag after each physics step
        _, reward, terminated, _, info = env.step(np.zeros(5))
        assert reward == expected and terminated == (expected == 0.0) and info["success"] == (expected == 0.0)
    env.close()


def test_the_builder_follows_ogbenchs_recipe_on_a_few_episodes(tmp_path):
    path = ogbench.build_dataset("cube-single", "play", episodes=2, episode_steps=25, seed=3, out_dir=tmp_path,
                                 progress=False)
    assert path.name == "cube-single-play-2x25-v0.npz"  # a smaller build says so in its name
    with np.load(path) as f:
        assert f["observations"].shape == (50, 28) and f["actions"].shape == (50, 5) and f["qpos"].shape == (50, 21)
        assert np.flatnonzero(f["terminals"]).tolist() == [24, 49] and f["terminals"].dtype == bool
        assert np.abs(f["actions"]).max() <= 1.0
        recipe = json.loads(str(f[ogbench.RECIPE_KEY]))
    assert recipe["episodes"] == 2 and recipe["ogbench_episodes"] == 1000 and recipe["noise"] == 0.1
    assert recipe["o2o-data"][:3] == ["build-ogbench", "--env", "cube-single"]
    data = ogbench.load(path, STATE_ENV)
    assert len(data) == 48 and data.metadata["o2o_recipe"] == recipe
    again = ogbench.build_dataset("cube-single", "play", episodes=2, episode_steps=25, seed=3, out_dir=tmp_path / "b",
                                  progress=False)
    with np.load(path) as a, np.load(again) as b:  # seeded: the same data again
        np.testing.assert_array_equal(a["actions"], b["actions"])

    noisy = ogbench.build_dataset("puzzle-3x3", "noisy", episodes=1, episode_steps=10, out_dir=tmp_path,
                                  progress=False)
    with np.load(noisy) as f:
        assert f["button_states"].shape == (10, 9) and f["button_states"].dtype == np.int64
        assert json.loads(str(f[ogbench.RECIPE_KEY]))["p_random_action"] == 0.2  # commands.sh: puzzle's noisy data


def test_the_build_command_a_missing_dataset_names_builds_that_dataset(monkeypatch):
    import o2o.data.build.cli as cli

    parsed = {}

    def capture(env, dataset_type, visual, episodes, steps, seed, out_dir=None, overwrite=False):
        parsed.update(env=env, type=dataset_type, visual=visual, episodes=episodes, steps=steps)
        raise SystemExit(0)

    monkeypatch.setattr(cli.ogbench, "build_dataset", capture)
    for env, dataset_type, visual, episodes, steps in (("cube-single", "play", False, 1000, 1001),
                                                        ("scene", "noisy", True, 1000, 1001),
                                                        ("puzzle-3x3", "play", False, 100, 1001),
                                                        ("cube-double", "noisy", True, 20, 50)):
        name = ogbench.dataset_name(("visual-" if visual else "") + env, dataset_type, episodes, steps)
        command = ogbench.build_command(name).split()
        assert command[:2] == ["o2o-data", "build-ogbench"]
        with pytest.raises(SystemExit):
            cli.main(command[1:])
        assert parsed == dict(env=env, type=dataset_type, visual=visual, episodes=episodes, steps=steps), name
    assert "--env ENV" in ogbench.build_command("someone-elses-v3")


def test_visual_data_are_built_and_read_as_uint8_frames(tmp_path):
    path = ogbench.build_dataset("cube-single", "play", visual=True, episodes=1, episode_steps=4, out_dir=tmp_path,
                                 progress=False, env_kwargs={"width": 16, "height": 16})
    data = ogbench.load(path, "visual-cube-single-singletask-v0")
    assert data.observations.dtype == np.uint8 and data.observations.shape == (3, 16, 16, 3)
    assert data.next_observations.shape == (3, 16, 16, 3)


def test_the_download_path_goes_to_ogbenchs_server_and_stops_with_one_line_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("OGBENCH_DATASETS_PATH", str(tmp_path))
    with pytest.raises(DatasetError, match="o2o-data build-ogbench --env cube-single --type play\\)"):
        ogbench.fetch("cube-single-play-v0", download=False)
    asked = []

    def no_network(url, *args, **kwargs):
        asked.append(url)
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr("urllib.request.urlopen", no_network)
    with pytest.raises(DatasetError, match="could not be downloaded"):
        ogbench.fetch("cube-single-play-v0", download=True)
    assert asked == [f"{ogbench.ONLINE_SOURCE}/cube-single-play-v0.npz"]  # OGBench's own download, reached
    assert not list(tmp_path.iterdir())  # nothing half-written
    (tmp_path / "cube-single-play-v0.npz").write_bytes(b"")
    assert ogbench.fetch("cube-single-play-v0", download=True) == tmp_path / "cube-single-play-v0.npz"


@pytest.mark.parametrize("env", ["ogbench_cube_single", "ogbench_cube_double", "ogbench_scene", "ogbench_puzzle_3x3",
                                 "ogbench_visual_cube_single", "ogbench_visual_scene", "visual_pick_place"])
def test_the_env_options_compose_with_their_recipe(env):
    cfg = validate(compose([f"env={env}", "algo=calql"]))
    visual = "visual" in env
    assert (cfg.encoder.name == "impala_small") == visual and cfg.env.gym_id.endswith("singletask-v0")
    assert cfg.domain.metric == "success_rate" and cfg.domain.end_on_success
    if env == "visual_pick_place":
        assert cfg.algo.backup_actions == 4 and cfg.algo.n_actions == 10 and cfg.env.reward_shift == 1.0
    else:
        assert cfg.algo.cql_weight == 5.0 and cfg.algo.critic_hidden == [512] * 3  # andypeng05/wsrl add_ogbench: ogbench_cql
    # OGBench's and FQL's visual runs: 500k offline updates, evaluation every 100k; states: FQL's 1M and 1M
    assert (cfg.schedule.offline_steps, cfg.schedule.online_steps) == ((500_000,) * 2 if visual else (1_000_000,) * 2)
    assert cfg.schedule.eval_interval_offline == cfg.schedule.eval_interval_online == 100_000


def test_rlpd_on_ogbench_is_fqls_sac_with_one_summed_step():
    cfg = validate(compose(["env=ogbench_cube_single", "algo=rlpd"]))
    assert cfg.algo.ensemble_size == 2 and cfg.algo.utd_ratio == 1 and cfg.algo.actor_update_interval == 1
    assert not cfg.algo.actor_after_critic  # fql agents/sac.py: critic, actor and temperature losses in one step
    assert validate(compose(["env=adroit_door", "algo=rlpd"])).algo.actor_after_critic  # rlpd's sac_learner order


def test_the_paper_reward_is_ogbenchs_plus_one_in_the_env_and_the_data(tmp_path):
    from o2o.data.dataset import load_offline_data
    from o2o.envs import make_env

    path = tmp_path / "two.npz"
    write_file(path, cube_at_goal_rows=[2])
    cfg = validate(compose(["env=visual_pick_place", f"env.gym_id={STATE_ENV}", "encoder=none",  # the state twin
                            "env.dataset.ogbench=null", f"env.dataset.path={path}"]))
    env = make_env(cfg.env, cfg.domain, seed=0)
    _, reward, *_ = env.step(np.zeros(5))
    assert reward == 0.0  # OGBench's -1: not placed
    data = load_offline_data(cfg.env, (28,), (5,))
    assert data.rewards.tolist() == [0, 0, 1, 0, 0, 0]
