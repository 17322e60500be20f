import h5py
import numpy as np
import pytest

from conftest import compose
from o2o.config import validate
from o2o.data.checks import check_matches_env
from o2o.data.d4rl import load_d4rl_hdf5
from o2o.data.minari import fetch_minari
from o2o.data.offline_data import OfflineData, apply_binary_success
from o2o.errors import DatasetError


def write_d4rl(path, n=6, with_next=False):
    with h5py.File(path, "w") as f:
        f["observations"] = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
        f["actions"] = np.zeros((n, 1), np.float32)
        f["rewards"] = np.arange(n, dtype=np.float32)
        f["terminals"] = np.array([0, 1, 0, 0, 0, 0][:n], bool)
        f["timeouts"] = np.array([0, 0, 0, 1, 0, 0][:n], bool)
        f["infos/goal_achieved"] = np.array([0, 1, 0, 0, 1, 0][:n], bool)
        if with_next:
            f["next_observations"] = f["observations"][:] + 100
    return str(path)


def test_d4rl_hdf5_without_next_observations_follows_qlearning_dataset(tmp_path):
    data = load_d4rl_hdf5(write_d4rl(tmp_path / "d.hdf5"))
    # the timeout step 3 and the final step 5 have no next observation and are dropped
    np.testing.assert_array_equal(data.rewards, [0, 1, 2, 4])
    np.testing.assert_array_equal(data.next_observations[:, 0], [2, 4, 6, 10])
    np.testing.assert_array_equal(data.episode_ends, [False, True, True, True])
    np.testing.assert_array_equal(data.success, [False, True, False, True])


def test_d4rl_hdf5_with_next_observations_keeps_every_step(tmp_path):
    data = load_d4rl_hdf5(write_d4rl(tmp_path / "d.hdf5", with_next=True))
    assert len(data) == 6 and data.next_observations[0, 0] == 100


def test_d4rl_hdf5_without_timeouts_is_cut_as_qlearning_dataset_cuts_it(tmp_path):
    from o2o.data.dataset import read_source

    path = tmp_path / "v0.hdf5"
    with h5py.File(path, "w") as f:  # D4RL's v0 layout: no timeouts array
        f["observations"] = np.arange(20, dtype=np.float32).reshape(10, 2)
        f["actions"] = np.zeros((10, 2), np.float32)
        f["rewards"] = np.arange(10, dtype=np.float32)
        f["terminals"] = np.array([0, 0, 1, 0, 0, 0, 0, 0, 0, 0], bool)
    # qlearning_dataset with env._max_episode_steps = 4: its counter is 1 after the terminal step 2 (it counts that
    # step into the next episode), reaches 3 at step 5, restarts at 0 and reaches 3 again at step 9; both final
    # steps are skipped, and so is the file's last row
    data = load_d4rl_hdf5(str(path), max_episode_steps=4)
    np.testing.assert_array_equal(data.rewards, [0, 1, 2, 3, 4, 6, 7, 8])
    np.testing.assert_array_equal(data.next_observations[:, 0], [2, 4, 6, 8, 10, 14, 16, 18])
    np.testing.assert_array_equal(data.episode_ends, [False, False, True, False, True, False, False, True])
    assert not load_d4rl_hdf5(str(path)).timeouts.any()  # no horizon given: no cut
    cfg = validate(compose(["env.dataset.id=null", f"env.dataset.path={path}", "env.max_episode_steps=4"])).env
    np.testing.assert_array_equal(read_source(cfg).rewards, data.rewards)  # the run reads it with its env's horizon


def test_missing_hdf5_names_the_path(tmp_path):
    with pytest.raises(DatasetError, match="nowhere.hdf5"):
        load_d4rl_hdf5(str(tmp_path / "nowhere.hdf5"))


def test_binary_success_truncates_after_last_success_and_drops_failures():
    n = 7
    data = OfflineData(observations=np.zeros((n, 1), np.float32), actions=np.zeros((n, 1), np.float32),
                       rewards=np.full(n, 3.0, np.float32), next_observations=np.zeros((n, 1), np.float32),
                       terminals=np.zeros(n, bool), timeouts=np.array([0, 0, 0, 1, 0, 0, 1], bool),
                       success=np.array([0, 1, 0, 0, 0, 0, 0], bool))
    out = apply_binary_success(data)
    # episode 1 (steps 0-3) is cut after its success at step 1; episode 2 never succeeds and is dropped
    np.testing.assert_array_equal(out.rewards, [-1.0, 0.0])
    np.testing.assert_array_equal(out.terminals, [False, True])


def test_missing_minari_dataset_offline_gives_one_clear_message(monkeypatch):
    import minari

    calls = []
    monkeypatch.setattr(minari, "download_dataset", lambda *a, **k: calls.append(a))
    with pytest.raises(DatasetError) as err:
        fetch_minari("D4RL/door/cloned-v2", download=True)
    text = str(err.value)
    assert "D4RL/door/cloned-v2" in text and "HF_HUB_OFFLINE" in text and "minari download" in text
    assert calls == []  # no download attempt, no retry loop


def test_missing_minari_dataset_is_downloaded_when_network_is_allowed(monkeypatch):
    import minari

    calls = []

    def fake_download(dataset_id, *args, **kwargs):
        calls.append(dataset_id)
        raise ConnectionError("no route to host")

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("o2o.data.minari.hub_unreachable", lambda: None)  # a machine with network
    monkeypatch.setattr(minari, "download_dataset", fake_download)
    with pytest.raises(DatasetError, match="download failed"):
        fetch_minari("D4RL/door/cloned-v2", download=True)
    assert calls == ["D4RL/door/cloned-v2"]


def test_dataset_that_does_not_match_the_env_is_refused():
    cfg = validate(compose(["env=adroit_door"]))
    data = OfflineData(np.zeros((3, 6), np.float32), np.zeros((3, 2), np.float32), np.zeros(3, np.float32),
                       np.zeros((3, 6), np.float32), np.zeros(3, bool), np.zeros(3, bool), source="minari:x")
    with pytest.raises(DatasetError, match="does not match env AdroitHandDoor-v1"):
        check_matches_env(data, cfg.env, (39,), (28,))


def test_pointmaze_dataset_is_collected_once_and_loads_with_env_shapes():
    from o2o.data.dataset import load_offline_data
    from o2o.envs import make_env

    cfg = validate(compose(["env.dataset.collector.steps=1500"]))
    env = make_env(cfg.env)
    data = load_offline_data(cfg.env, env.observation_space.shape, env.action_space.shape)
    assert len(data) >= 1500 and data.observations.shape[1] == 6
    assert data.success is not None and data.success.any()
    assert data.ref_min_score is not None and data.ref_max_score > data.ref_min_score
    # within an episode next_obs is the following obs
    ends = data.episode_ends
    np.testing.assert_array_equal(data.next_observations[:-1][~ends[:-1]], data.observations[1:][~ends[:-1]])
    again = load_offline_data(cfg.env, env.observation_space.shape, env.action_space.shape)
    np.testing.assert_array_equal(again.observations, data.observations)


def test_the_collector_writes_its_dataset_in_one_rename_and_rebuilds_a_partial_leftover(monkeypatch, tmp_path):
    from o2o.data import minari as dataset
    from o2o.data.build import collectors
    from o2o.data.dataset import load_offline_data
    from o2o.data.minari import minari_is_local
    from o2o.envs import make_env

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    cfg = validate(compose(["env.dataset.collector.steps=600"]))
    env = make_env(cfg.env)
    real = collectors.COLLECTORS["pointmaze_waypoints"]

    def killed(env_cfg):
        real(env_cfg)  # written in full to the staging folder...
        raise KeyboardInterrupt  # ...then killed before the move

    monkeypatch.setitem(collectors.COLLECTORS, "pointmaze_waypoints", killed)
    with pytest.raises(KeyboardInterrupt):
        load_offline_data(cfg.env, env.observation_space.shape, env.action_space.shape)
    assert not minari_is_local(cfg.env.dataset.id) and not (tmp_path / cfg.env.dataset.id).exists()
    # an older, non-atomic write left a half-written folder: the collector's dataset is rebuilt
    (tmp_path / cfg.env.dataset.id / "data").mkdir(parents=True)
    (tmp_path / cfg.env.dataset.id / "data" / "main_data.hdf5").write_bytes(b"half")
    monkeypatch.setitem(collectors.COLLECTORS, "pointmaze_waypoints", real)
    data = load_offline_data(cfg.env, env.observation_space.shape, env.action_space.shape)
    assert len(data) >= 600 and minari_is_local(cfg.env.dataset.id)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".o2o-staging")]
    assert dataset.minari_is_partial(cfg.env.dataset.id) is False


def test_a_partial_downloaded_dataset_names_the_folder_to_delete(monkeypatch, tmp_path):
    from o2o.data.minari import fetch_minari

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    (tmp_path / "D4RL" / "door" / "cloned-v2" / "data").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"is incomplete \(an interrupted download or write\): delete that folder"):
        fetch_minari("D4RL/door/cloned-v2", download=True)


def _fetch_in_a_fresh_process(tmp_path, endpoint):
    import os
    import subprocess
    import sys
    import time

    code = ("from o2o.data.minari import fetch_minari\n"
            "try:\n    fetch_minari('D4RL/door/cloned-v2', download=True)\n"
            "except Exception as err:\n    print(type(err).__name__, err)\n")
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0", "MINARI_DATASETS_PATH": str(tmp_path)}
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    return done.stdout, done.stderr, time.monotonic() - start


def test_an_unreachable_hub_is_one_line_at_once_with_every_route(tmp_path):
    """No network (a closed local port): one attempt, no retries, and the three routes with their commands."""
    out, err, seconds = _fetch_in_a_fresh_process(tmp_path, "http://127.0.0.1:9")
    assert out.startswith("DatasetError") and "cannot be reached" in out and out.count("\n") == 1, out
    assert "minari download D4RL/door/cloned-v2" in out and "env.dataset.id=null env.dataset.path=DIR" in out
    assert "o2o-data build-adroit --assets HAND_DAPG_DIR --tasks door" in out and "env.dataset.id=o2o/door/cloned-v0" in out
    assert "Retry" not in err and "retry" not in err.lower(), err
    assert seconds < 20, seconds  # the interpreter and imports; the retry storm took 50 s


def test_a_reachable_hub_that_fails_goes_through_the_real_hub_client(tmp_path):
    """A hub that answers but serves nothing (a local HTTP server answering 404): the real huggingface_hub client
    and the real download call run, and their failure is one clear error (a missing client can never pass)."""
    import http.server
    import threading

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(404)
            self.end_headers()

        do_HEAD = do_GET

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out, _, _ = _fetch_in_a_fresh_process(tmp_path, f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
    assert out.startswith("DatasetError") and "the download failed (" in out, out
    assert "not installed" not in out and "ImportError" not in out, out
    assert "o2o-data build-adroit" in out  # the offline route for Adroit


@pytest.mark.parametrize("dict_obs", [True, False])
def test_the_direct_hdf5_reader_gives_what_minaris_episode_iterator_gives(tmp_path, monkeypatch, dict_obs):
    """load_minari reads Minari's HDF5 file itself (for speed); the transitions must be Minari's, to the bit."""
    import warnings

    import gymnasium as gym
    import minari
    from minari.data_collector import EpisodeBuffer

    from o2o.data.minari import _read_minari_episodes, load_minari
    from o2o.data.minari_hdf5 import concatenate_episodes, read_minari_hdf5

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    rng = np.random.default_rng(0)

    def observations(n):
        if dict_obs:
            return {"observation": rng.normal(size=(n, 4)).astype(np.float32),
                    "desired_goal": rng.normal(size=(n, 2)).astype(np.float32)}
        return rng.normal(size=(n, 5)).astype(np.float32)

    lengths = [3, 1, 5]
    buffers = [EpisodeBuffer(id=i, observations=observations(n + 1), actions=rng.uniform(-1, 1, (n, 2)).astype(np.float32),
                             rewards=list(rng.normal(size=n)), terminations=[False] * (n - 1) + [i == 1],
                             truncations=[False] * n, infos={"success": rng.random(n + 1) < 0.5})
               for i, n in enumerate(lengths)]
    if dict_obs:
        space = gym.spaces.Dict({"observation": gym.spaces.Box(-np.inf, np.inf, (4,)),
                                 "desired_goal": gym.spaces.Box(-np.inf, np.inf, (2,))})
    else:
        space = gym.spaces.Box(-np.inf, np.inf, (5,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        minari.create_dataset_from_buffers("o2o-test/reader/direct-v0", buffers, observation_space=space,
                                           action_space=gym.spaces.Box(-1, 1, (2,)), algorithm_name="test")
    keys = ["observation", "desired_goal"] if dict_obs else []
    path = str(tmp_path / "o2o-test/reader/direct-v0/data/main_data.hdf5")
    theirs = concatenate_episodes(_read_minari_episodes(minari.load_dataset("o2o-test/reader/direct-v0"), keys))
    monkeypatch.setattr("o2o.data.minari_hdf5.MIN_EPISODES_PER_WORKER", 1)
    for workers in (1, 2, 3):  # one process, and the episodes split over reading processes
        ours = read_minari_hdf5(path, keys, len(lengths), sum(lengths), workers)
        assert set(ours) == set(theirs)
        for name in ours:
            np.testing.assert_array_equal(ours[name], theirs[name], err_msg=f"{name}, {workers} workers")
    wrong_metadata = read_minari_hdf5(path, keys, len(lengths), sum(lengths) + 1, 2)  # read again in one process
    for name in theirs:
        np.testing.assert_array_equal(wrong_metadata[name], theirs[name], err_msg=name)
    data = load_minari("o2o-test/reader/direct-v0", keys, download=False)
    assert len(data) == sum(lengths) and data.observations.shape[1] == 6 - (not dict_obs)
    np.testing.assert_array_equal(data.next_observations[:2], data.observations[1:3])  # within an episode
    assert data.terminals.tolist() == [False] * 3 + [True] + [False] * 5
    assert data.timeouts.tolist() == [False, False, True, False, False, False, False, False, True]
    if not dict_obs:  # a reading process that fails: one line naming the cause, no hang, no process left
        import h5py

        with h5py.File(path, "r+") as f:
            del f["episode_2/actions"]
        with pytest.raises(DatasetError, match="reading process: KeyError"):
            read_minari_hdf5(path, keys, len(lengths), sum(lengths), 3)
        import multiprocessing

        assert not multiprocessing.active_children()


def test_a_staging_folder_of_a_killed_writer_is_removed_at_the_next_write(monkeypatch, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from o2o.data.build.collectors import STAGING_PREFIX, write_minari_atomically

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"{STAGING_PREFIX}{gone.stdout.strip()}"  # a writer that no longer runs
    (stale / "half").mkdir(parents=True)
    alive = tmp_path / f"{STAGING_PREFIX}1"  # pid 1 lives: another writer, left alone
    alive.mkdir()

    def write():
        (Path(os.environ["MINARI_DATASETS_PATH"]) / "o2o-test" / "x-v0" / "data").mkdir(parents=True)

    write_minari_atomically("o2o-test/x-v0", write)
    assert not stale.exists() and alive.exists() and (tmp_path / "o2o-test" / "x-v0" / "data").is_dir()
    assert not (tmp_path / f"{STAGING_PREFIX}{os.getpid()}").exists()


def test_a_cached_collected_dataset_is_reused_only_with_its_collector_params(monkeypatch, tmp_path):
    from o2o.data.dataset import load_offline_data
    from o2o.envs import make_env

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    cfg = validate(compose(["env.dataset.collector.steps=600"]))
    env = make_env(cfg.env)
    shapes = env.observation_space.shape, env.action_space.shape
    first = load_offline_data(cfg.env, *shapes)
    again = load_offline_data(cfg.env, *shapes)  # the same params: the cache
    np.testing.assert_array_equal(again.observations, first.observations)
    other = validate(compose(["env.dataset.collector.steps=900", "env.dataset.collector.noise=0.9"]))
    with pytest.raises(DatasetError, match=r"was collected with .*noise=0\.3.*steps=600; this run asks for .*"
                                           r"noise=0\.9.*steps=900: set env\.dataset\.id to a new id"):
        load_offline_data(other.env, *shapes)


def test_a_minari_dataset_recorded_on_another_action_scale_is_refused_and_stray_actions_are_said(tmp_path, monkeypatch,
                                                                                                caplog):
    """Every policy acts in [-1, 1]: data recorded in Box(-3, 3) would be clipped into a third of its range without a
    word. Values just outside [-1, 1] (Adroit's human demonstrations reach 1.37) are clipped as the references do,
    and the log says how many."""
    import logging
    import warnings

    import gymnasium as gym
    import minari
    from minari.data_collector import EpisodeBuffer

    from o2o.data.checks import ACTION_CLIP, clip_actions
    from o2o.data.minari import load_minari
    from o2o.data.offline_data import OfflineData

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    rng = np.random.default_rng(0)
    buffers = [EpisodeBuffer(id=0, observations=rng.normal(size=(4, 5)).astype(np.float32),
                             actions=rng.uniform(-3, 3, (3, 2)).astype(np.float32), rewards=[0.0] * 3,
                             terminations=[False, False, True], truncations=[False] * 3)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        minari.create_dataset_from_buffers("o2o-test/scale/wide-v0", buffers, algorithm_name="test",
                                           observation_space=gym.spaces.Box(-np.inf, np.inf, (5,)),
                                           action_space=gym.spaces.Box(-3, 3, (2,)))
    env_cfg = validate(compose([])).env
    with pytest.raises(DatasetError, match=r"'o2o-test/scale/wide-v0' records its actions in Box\(-3.0, 3.0, \(2,\), "
                                           r"float32\), and every policy here acts in \[-1, 1\]"):
        load_minari("o2o-test/scale/wide-v0", [], download=False, env_cfg=env_cfg)
    n = 4
    data = OfflineData(np.zeros((n, 2), np.float32), np.array([[0.5, 1.37], [0, 0], [-1.2, 0], [1, -1]], np.float32),
                       np.zeros(n, np.float32), np.zeros((n, 2), np.float32), np.zeros(n, bool), np.zeros(n, bool),
                       source="x")
    with caplog.at_level(logging.INFO, logger="o2o"):
        clipped = clip_actions(data)
    assert np.abs(clipped.actions).max() == pytest.approx(ACTION_CLIP)
    assert "x: 25% of the action values lie outside [-1, 1] (up to 1.37), clipped to +-0.99999" in caplog.text
