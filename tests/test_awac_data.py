"""AWAC's offpolicy_hand_data files (the Cal-QL paper's Adroit data), read as the authors' get_hand_dataset_with_mc_calculation
reads them, on small files written in exactly their format."""
import numpy as np
import pytest

from conftest import SMOKE_ANY_ENV, compose
from o2o.config import validate
from o2o.data.checks import ADROIT_LAYOUT, layout_error
from o2o.errors import DatasetError

OBS, ACT = 39, 28  # AdroitHandDoor-v1


def door_obs(rng, n):
    """Observations that keep the door's layout identity (palm - handle at 35:38)."""
    obs = rng.uniform(-1, 1, size=(n, OBS))
    d, a, b = ADROIT_LAYOUT["AdroitHandDoor-v1"]
    obs[:, d:d + 3] = obs[:, a:a + 3] - obs[:, b:b + 3]
    return obs


def demo(rng, rewards, n):
    """A demonstration as AWAC stores it: dict observations, rewards possibly one longer than the terminals."""
    obs, nxt = door_obs(rng, n), door_obs(rng, n)
    return {"observations": [{"state_observation": o, "desired_goal": np.zeros(3)} for o in obs],
            "next_observations": [{"state_observation": o, "desired_goal": np.zeros(3)} for o in nxt],
            "actions": rng.uniform(-1.5, 1.5, size=(n, ACT)), "rewards": np.asarray(rewards, dtype=np.float64),
            "terminals": np.zeros(n, dtype=bool), "agent_infos": [{}] * n, "env_infos": [{}] * n}


def bc(rng, rewards):
    n = len(rewards)
    return {"observations": door_obs(rng, n), "next_observations": door_obs(rng, n),
            "actions": rng.uniform(-1.5, 1.5, size=(n, ACT)), "rewards": np.asarray(rewards, np.float64)[:, None],
            "terminals": np.zeros((n, 1), dtype=bool), "agent_infos": [{}] * n, "env_infos": [{}] * n}


def write_awac(folder, demos, rollouts):
    folder.mkdir(parents=True, exist_ok=True)
    for name, trajectories in (("door2_sparse.npy", demos), ("door_bc_sparse4.npy", rollouts)):
        array = np.empty(len(trajectories), dtype=object)
        array[:] = trajectories
        np.save(folder / name, array, allow_pickle=True)


@pytest.fixture
def awac_folder(tmp_path):
    rng = np.random.default_rng(0)
    demos = [demo(rng, [-1, -1, 0, 0, -1, -1], 5),  # 5 steps, one reward too many: cut after step 3 -> 4 kept
             demo(rng, [-1, -1, -1], 3)]  # never succeeds: dropped
    rollouts = [bc(rng, [-1, 0, -1, -1]),  # cut after step 1 -> 2 kept
                bc(rng, [0, 0])]  # 2 kept, both terminal
    root = tmp_path / "awac"
    write_awac(root / "demonstrations" / "offpolicy_hand_data", demos, rollouts)
    return root, demos, rollouts


def door_cfg(path):
    return validate(compose(["env=adroit_door", "env.dataset.id=null", f"env.dataset.path={path}"])).env


def test_the_awac_files_load_as_the_authors_load_them(awac_folder):
    from o2o.data.checks import ACTION_CLIP
    from o2o.data.dataset import load_offline_data

    root, demos, rollouts = awac_folder
    data = load_offline_data(door_cfg(root), (OBS,), (ACT,), binary_from_success=True)
    assert len(data) == 4 + 2 + 2  # 3 trajectories; 5 segments, as every success step ends one (the authors' dones)
    assert data.num_episodes == 5
    assert data.rewards.tolist() == [-1, -1, 0, 0, -1, 0, 0, 0]
    assert data.terminals.tolist() == [False, False, True, True, False, True, True, True]  # success steps only
    expected_obs = np.concatenate([[o["state_observation"] for o in demos[0]["observations"][:4]],
                                   rollouts[0]["observations"][:2], rollouts[1]["observations"]])
    np.testing.assert_allclose(data.observations, expected_obs.astype(np.float32))
    expected_next = np.concatenate([[o["state_observation"] for o in demos[0]["next_observations"][:4]],
                                    rollouts[0]["next_observations"][:2], rollouts[1]["next_observations"]])
    np.testing.assert_allclose(data.next_observations, expected_next.astype(np.float32))  # the files', not shifted
    expected_actions = np.concatenate([demos[0]["actions"][:4], rollouts[0]["actions"][:2], rollouts[1]["actions"]])
    np.testing.assert_allclose(data.actions, np.clip(expected_actions, -ACTION_CLIP, ACTION_CLIP).astype(np.float32))
    assert np.abs(data.actions).max() <= 0.99999 + 1e-7
    assert data.source.startswith("awac:") and "door" in data.source


def test_the_awac_returns_are_the_authors_formula(awac_folder):
    """Cal-QL's reward transform (10r + 5 on Adroit) then returns-to-go reset at the success terminals."""
    from o2o.data.dataset import load_offline_data
    from o2o.returns import label_rewards

    root, _, _ = awac_folder
    cfg = validate(compose(["env=adroit_door", "env.dataset.id=null", f"env.dataset.path={root}", "algo=calql"]))
    data = load_offline_data(cfg.env, (OBS,), (ACT,), binary_from_success=True)
    rewards, v_ref = label_rewards(data.rewards, data.episode_ends, cfg.domain, cfg.algo)
    g = cfg.algo.gamma
    assert rewards.tolist() == [-5, -5, 5, 5, -5, 5, 5, 5]
    expected = [-5 + g * (-5 + g * 5), -5 + g * 5, 5, 5, -5 + g * 5, 5, 5, 5]  # done at every success step
    np.testing.assert_allclose(v_ref, expected, rtol=1e-6)


def test_the_files_are_found_in_the_folder_itself_too(tmp_path, awac_folder):
    from o2o.data.awac import load_awac

    root, demos, rollouts = awac_folder
    flat = tmp_path / "flat"
    write_awac(flat, demos, rollouts)
    a, b = load_awac(str(root), "AdroitHandDoor-v1"), load_awac(str(flat), "AdroitHandDoor-v1")
    assert len(a) == len(b) == 5 + 3 + 4 + 2  # as stored, before the Adroit rule cuts them
    assert a.metadata == {"awac_demonstrations": 2, "awac_bc_rollouts": 2}


def test_missing_or_foreign_awac_files_stop_with_one_line(tmp_path, awac_folder):
    from o2o.data.awac import load_awac

    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no door2_sparse.npy and door_bc_sparse4.npy"):
        load_awac(str(tmp_path / "empty"), "AdroitHandDoor-v1")
    root, _, _ = awac_folder
    with pytest.raises(DatasetError, match="exist for .* only, not AdroitHandHammer-v1"):
        load_awac(str(root), "AdroitHandHammer-v1")
    rng = np.random.default_rng(1)
    write_awac(tmp_path / "dense", [demo(rng, [0.3, 1.2], 2)], [bc(rng, [-1, 0])])
    with pytest.raises(DatasetError, match="rewards other than -1 and 0"):
        load_awac(str(tmp_path / "dense"), "AdroitHandDoor-v1")


def test_observations_in_another_layout_are_refused(tmp_path):
    from o2o.data.dataset import load_offline_data

    rng = np.random.default_rng(2)
    rollout = bc(rng, [-1, 0])
    rollout["observations"] = rollout["observations"][:, ::-1].copy()  # another order of the same numbers
    write_awac(tmp_path / "reordered", [demo(rng, [-1, 0], 2)], [rollout])
    with pytest.raises(DatasetError, match="not laid out as AdroitHandDoor-v1's"):
        load_offline_data(door_cfg(tmp_path / "reordered"), (OBS,), (ACT,), binary_from_success=True)


@pytest.mark.parametrize("gym_id", sorted(ADROIT_LAYOUT))
def test_the_layout_identity_holds_in_each_env(gym_id):
    from o2o.envs import make_env

    env_cfg = validate(compose([f"env=adroit_{gym_id[len('AdroitHand'):-3].lower()}"])).env
    assert env_cfg.gym_id == gym_id
    env = make_env(env_cfg)
    obs = [env.reset(seed=0)[0]]
    for _ in range(5):
        obs.append(env.step(env.action_space.sample())[0])
    env.close()
    assert layout_error(np.asarray(obs), gym_id) < 1e-6
    assert layout_error(np.asarray(obs)[:, ::-1], gym_id) > 1e-2  # and it would see another order


def test_a_run_trains_on_the_awac_files(tmp_path, awac_folder):
    from o2o import run

    root, _, _ = awac_folder
    final = run(env="adroit_door", algo="calql", run_dir=str(tmp_path / "run"),
                overrides=[*SMOKE_ANY_ENV, "env.dataset.id=null", f"env.dataset.path={root}", "schedule.online_steps=0",
                           "schedule.offline_steps=10", "domain.eval_episodes=1", "mlflow_experiment=o2o-awac",
                           "calibration_batch=8", "mlflow.log_models=false", "buffer.batch_size=4"])  # 8 transitions
    assert "offline/success_rate" in final


def test_the_loader_says_what_the_adroit_rule_removed(awac_folder, caplog):
    import logging

    from o2o.data.dataset import load_offline_data

    root, _, _ = awac_folder
    with caplog.at_level(logging.INFO, logger="o2o"):
        load_offline_data(door_cfg(root), (OBS,), (ACT,), binary_from_success=True)
    assert "the Adroit binary rule kept 8 of 14 transitions: 3 of 4 episodes reach success" in caplog.text


class _RunsCode:
    """A pickled object whose unpickling would run a shell command (how a malicious data file runs code)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("as_npy", [True, False])
def test_an_awac_file_that_would_run_code_is_refused_and_runs_nothing(tmp_path, as_npy):
    import pickle

    from o2o.data.awac import load_awac

    rng = np.random.default_rng(0)
    marker = tmp_path / "ran"
    folder = tmp_path / "awac"
    write_awac(folder, [demo(rng, [-1, 0], 2)], [bc(rng, [-1, 0])])
    demos = [{**demo(rng, [-1, 0], 2), "env_infos": [_RunsCode(marker)]}]
    if as_npy:
        array = np.empty(1, dtype=object)
        array[:] = demos
        np.save(folder / "door2_sparse.npy", array, allow_pickle=True)
    else:  # a raw pickle under the .npy name
        (folder / "door2_sparse.npy").write_bytes(pickle.dumps(demos))
    with pytest.raises(DatasetError, match="system is not part of AWAC's trajectory files; refusing to load it"):
        load_awac(str(folder), "AdroitHandDoor-v1")
    assert not marker.exists()


@pytest.mark.parametrize("content, reason", [
    ("truncated", "cannot be read as AWAC's pickled trajectory array"),
    ("wrong keys", "holds something else, not AWAC's trajectories"),
    ("ints", "holds an array of int64, not AWAC's trajectories"),
    ("floats", "holds an array of float64, not AWAC's trajectories"),
    ("object ints", "holds something else, not AWAC's trajectories"),
    ("text values", "trajectory 0 is not in AWAC's format"),
    ("flat actions", "trajectory 0 is not in AWAC's format: its observations and actions must be one row per step"),
])
def test_a_file_in_another_format_stops_with_one_line(tmp_path, content, reason):
    from o2o.data.awac import load_awac

    rng = np.random.default_rng(0)
    folder = tmp_path / "awac"
    write_awac(folder, [demo(rng, [-1, 0], 2)], [bc(rng, [-1, 0])])
    path = folder / "door2_sparse.npy"
    if content == "truncated":
        path.write_bytes(path.read_bytes()[:300])
    elif content == "wrong keys":
        write_awac(folder, [{"obs": [1.0], "acts": [0.0]}], [bc(rng, [-1, 0])])
    elif content == "ints":
        np.save(path, np.arange(10))
    elif content == "floats":
        np.save(path, np.zeros((3, 4)))
    elif content == "object ints":
        np.save(path, np.array([1, 2, 3], dtype=object), allow_pickle=True)
    elif content == "text values":
        write_awac(folder, [{**demo(rng, [-1, 0], 2), "actions": ["a", "b"]}], [bc(rng, [-1, 0])])
    else:
        write_awac(folder, [{**demo(rng, [-1, 0], 2), "actions": np.zeros(2)}], [bc(rng, [-1, 0])])
    with pytest.raises(DatasetError, match=reason) as err:
        load_awac(str(folder), "AdroitHandDoor-v1")
    assert "\n" not in str(err.value)
