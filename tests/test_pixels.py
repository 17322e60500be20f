"""Image observations end to end: uint8 frames in the buffers, the encoder and its gradients, the training batches'
augmentation, every stage of a run on 16x16 frames (resume and the exported policy included), and the refusals."""
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import ALGOS, ROOT, SMOKE_ANY_ENV, algo_config, compose
from o2o.agents.encoders import Encoded, ImpalaEncoder, PixelObservation, augment, random_crop, same_max_pool
from o2o.agents.registry import agent_class
from o2o.buffers import Batch, MixedSampler, TransitionBuffer
from o2o.config import EncoderConfig, validate
from o2o.errors import ConfigError
from o2o import metrics as M
from o2o.metrics import OFFLINE

SHAPE = (8, 8, 3)
FLAT = int(np.prod(SHAPE))


def encoder_config(**over):
    base = dict(name="impala_small", stack_sizes=[4, 8], num_blocks=1, mlp_hidden=[16], augment_pad=3,
                augment_probability=1.0)
    return EncoderConfig(**{**base, **over})


def frames(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, *SHAPE), dtype=np.uint8)


def pixel_batch(n=6, seed=0):
    rng = np.random.default_rng(seed)
    t = lambda a: torch.as_tensor(a)  # noqa: E731
    return Batch(t(frames(n, seed).reshape(n, -1)), t(rng.uniform(-1, 1, (n, 2)).astype(np.float32)),
                 t(rng.normal(size=n).astype(np.float32)), t(frames(n, seed + 1).reshape(n, -1)),
                 t((rng.random(n) < 0.3).astype(np.float32)), t(rng.normal(size=n).astype(np.float32)),
                 t(rng.uniform(-1, 1, (n, 2)).astype(np.float32)))  # next actions: ReBRAC reads them


# --------------------------------------------------------------------------- buffers


def test_buffers_keep_uint8_frames_and_return_what_was_stored():
    buffer = TransitionBuffer(5, FLAT, 2, torch.device("cpu"), obs_shape=SHAPE)
    obs, next_obs = frames(7), frames(7, seed=1)
    actions = np.arange(14, dtype=np.float32).reshape(7, 2)
    rows = buffer.add(obs[:3], actions[:3], np.ones(3), next_obs[:3], np.zeros(3), np.full(3, 2.0))
    buffer.add(obs[3:], actions[3:], np.ones(4), next_obs[3:], np.zeros(4), np.full(4, 2.0))  # wraps: 7 into 5
    assert buffer.frame_storage.dtype == torch.uint8 and buffer.storage.shape[1] == 2 + 3  # frames apart
    batch = buffer.batch()
    assert batch.obs.dtype == torch.uint8 and batch.obs.shape == (5, FLAT)
    kept = [5, 6, 2, 3, 4]  # ring order: rows 0-1 were overwritten by transitions 5-6
    np.testing.assert_array_equal(batch.obs.numpy(), obs[kept].reshape(5, -1))
    np.testing.assert_array_equal(batch.next_obs.numpy(), next_obs[kept].reshape(5, -1))
    np.testing.assert_array_equal(batch.actions.numpy(), actions[kept])
    assert rows.tolist() == [0, 1, 2] and batch.v_ref.tolist() == [2.0] * 5
    np.testing.assert_array_equal(buffer.observations(torch.tensor([2])).numpy(), obs[2].reshape(1, -1))
    with pytest.raises(TypeError, match="uint8"):
        buffer.add(obs[:1].astype(np.float32), actions[:1], [0.0], next_obs[:1], [0.0], [0.0])

    restored = TransitionBuffer(5, FLAT, 2, torch.device("cpu"), obs_shape=SHAPE)
    restored.load_state(buffer.state())  # a checkpoint keeps the frames
    for a, b in zip(restored.batch(), buffer.batch()):
        assert (a is None and b is None) or torch.equal(a, b)


def test_mixed_batches_carry_the_frames_of_both_buffers():
    offline = TransitionBuffer(4, FLAT, 2, torch.device("cpu"), obs_shape=SHAPE)
    online = TransitionBuffer(4, FLAT, 2, torch.device("cpu"), obs_shape=SHAPE)
    obs = frames(8)
    offline.add(obs[:4], np.zeros((4, 2)), np.zeros(4), obs[:4], np.zeros(4), np.zeros(4))
    online.add(obs[4:], np.ones((4, 2)), np.ones(4), obs[4:], np.zeros(4), np.zeros(4))
    torch.manual_seed(0)
    batch = MixedSampler(offline, online, 64, 0.5).sample()
    from_online = batch.rewards == 1
    assert from_online.sum() == 32 and batch.obs.dtype == torch.uint8
    stored = {tuple(o) for o in obs.reshape(8, -1)}
    assert all(tuple(o) in stored for o in batch.obs.numpy())
    online_frames = {tuple(o) for o in obs[4:].reshape(4, -1)}
    assert all((tuple(o) in online_frames) == bool(f) for o, f in zip(batch.obs.numpy(), from_online))


# --------------------------------------------------------------------------- augmentation


def test_random_crop_shifts_each_frame_within_its_pad_repeating_the_edge():
    x = frames(3)
    offsets = torch.tensor([[0, 6], [3, 3], [6, 1]])  # pad 3: offsets in [0, 6], 3 is no shift
    out = random_crop(torch.as_tensor(x.reshape(3, -1)), SHAPE, offsets, 3).numpy().reshape(3, *SHAPE)
    for frame, got, (dr, dc) in zip(x, out, offsets.tolist()):
        padded = np.pad(frame, ((3, 3), (3, 3), (0, 0)), mode="edge")  # OGBench's random_crop: edge padding
        np.testing.assert_array_equal(got, padded[dr: dr + SHAPE[0], dc: dc + SHAPE[1]])
    np.testing.assert_array_equal(out[1], x[1])


def test_augmentation_crops_obs_and_next_obs_alike_and_only_at_its_probability():
    spec = PixelObservation(SHAPE, encoder_config())
    batch = pixel_batch()
    same = batch._replace(next_obs=batch.obs.clone())
    torch.manual_seed(0)
    out = augment(same, spec)
    assert torch.equal(out.obs, out.next_obs)  # one offset per sample for both
    assert not torch.equal(out.obs, batch.obs) and torch.equal(out.actions, batch.actions)
    assert augment(batch, PixelObservation(SHAPE, encoder_config(augment_probability=0.0))) is batch
    torch.manual_seed(0)
    rate = np.mean([augment(batch, PixelObservation(SHAPE, encoder_config(augment_probability=0.5))) is not batch
                    for _ in range(400)])
    assert 0.4 < rate < 0.6  # the whole batch, half of the time (OGBench's p_aug)


def pixel_agent(name="cql", augment_probability=1.0, **over):
    torch.manual_seed(0)
    cfg = algo_config(name, actor_hidden=[16], critic_hidden=[16], **over)
    spec = PixelObservation(SHAPE, encoder_config(augment_probability=augment_probability))
    return agent_class(cfg)(spec, 2, cfg, torch.device("cpu"))


def test_acting_and_the_calibration_probe_see_frames_unaugmented(monkeypatch):
    from o2o.agents import core

    crops = []
    monkeypatch.setattr(core, "augment", lambda batch, spec: crops.append(1) or augment(batch, spec))
    agent = pixel_agent()
    frame = frames(1)[0]
    action = agent.act(frame, deterministic=True)
    direct = agent.actor.act(torch.as_tensor(frame.reshape(1, -1)), True, None)[0].detach().numpy()
    np.testing.assert_allclose(action, direct, rtol=0, atol=0)
    from o2o.stages.calibration import CalibrationProbe

    buffer = TransitionBuffer(6, FLAT, 2, torch.device("cpu"), obs_shape=SHAPE)
    b = pixel_batch()
    buffer.add(b.obs.numpy(), b.actions.numpy(), b.rewards.numpy(), b.next_obs.numpy(), b.dones.numpy(),
               b.v_ref.numpy())
    probe = CalibrationProbe(buffer, 6, seed=0)
    assert torch.equal(probe.batch.obs, buffer.batch(torch.arange(6)).obs)  # as stored
    assert np.isfinite(list(probe(agent).values())).all()
    assert not crops  # acting and probing never augment
    agent.update(pixel_batch())
    assert crops == [1]  # a training batch does


# --------------------------------------------------------------------------- the encoder and its gradients


def test_the_max_pool_pads_as_flax_does_not_as_pytorch():
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 2, 2] = 9.0  # 'SAME' for 4 -> 2: windows at rows 0-2 and 2-3 (+ padding), both hold row 2
    assert same_max_pool(x)[0, 0].tolist() == [[9.0, 9.0], [9.0, 9.0]]
    symmetric = torch.nn.functional.max_pool2d(x, 3, 2, padding=1)  # PyTorch's: rows -1..1 and 1..3
    assert symmetric[0, 0].tolist() == [[0.0, 0.0], [0.0, 9.0]]
    odd = torch.arange(25.0).view(1, 1, 5, 5)  # 5 -> 3: one pixel of padding on each side
    assert same_max_pool(odd)[0, 0].tolist() == [[6.0, 8.0, 9.0], [16.0, 18.0, 19.0], [21.0, 23.0, 24.0]]


def test_impala_encoder_matches_ogbench_shapes():
    spec = PixelObservation((64, 64, 3), EncoderConfig(name="impala_small", stack_sizes=[16, 32, 32], num_blocks=1,
                                                       mlp_hidden=[512]))
    encoder = ImpalaEncoder(spec)
    assert ImpalaEncoder.conv_features(spec) == 8 * 8 * 32  # 64 -> 32 -> 16 -> 8, 'SAME' max-pools of stride 2
    out = encoder(torch.zeros(2, 64 * 64 * 3, dtype=torch.uint8))
    assert out.shape == (2, 512) and spec.features == 512
    convs = [m for m in encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 3 * 3  # per stack: its conv and one residual block's two


def grads(agent, update_actor):
    agent.zero_grad(set_to_none=True)
    agent.begin_phase(OFFLINE)
    torch.manual_seed(1)
    batch, noise = pixel_batch(), agent.draw_noise(6)
    loss, _ = agent.compute_losses(batch, noise, update_actor)
    loss.backward()
    return {name: None if p.grad is None else p.grad.clone() for name, p in agent.named_parameters()}


@pytest.mark.parametrize("name", ALGOS)
def test_each_encoder_learns_from_its_own_networks_loss_only(name):
    agent = pixel_agent(name)
    assert isinstance(agent.actor, Encoded) and isinstance(agent.critic, Encoded)
    assert agent.actor.encoder is not agent.critic.encoder is not agent.critic_target.encoder
    with_actor, without_actor = grads(agent, True), grads(agent, False)
    critic_encoder = [n for n in with_actor if n.startswith("critic.encoder.")]
    actor_encoder = [n for n in with_actor if n.startswith("actor.encoder.")]
    assert critic_encoder and actor_encoder
    for n in critic_encoder:  # the actor's loss reads the critic with its weights, encoder included, detached
        assert with_actor[n] is not None and torch.equal(with_actor[n], without_actor[n]), n
    assert any(with_actor[n] is not None and with_actor[n].abs().sum() > 0 for n in actor_encoder)
    assert all(without_actor[n] is None or without_actor[n].abs().sum() == 0 for n in actor_encoder)
    assert not any(n.startswith("critic_target.") for n, p in agent.named_parameters() if p.requires_grad)


@pytest.mark.parametrize("algo", ["calql", "sac"])  # one summed step; the actor's step after the critic's
def test_the_compiled_update_on_frames_equals_the_eager_one(algo):
    from test_compiled_update import assert_same_training

    data = [pixel_batch(seed=s) for s in range(3)]
    eager, compiled = pixel_agent(algo), pixel_agent(algo)
    assert eager.actor_after_critic == (algo == "sac")
    compiled.compile_update(backend="aot_eager")
    runs = []
    for agent in (eager, compiled):
        agent.begin_phase(OFFLINE)
        torch.manual_seed(2)  # the augmentation's and the update's noise
        runs.append([agent.update(b) for b in data])
    assert_same_training(eager, compiled, *runs)


# --------------------------------------------------------------------------- refusals


def test_images_without_an_encoder_and_an_encoder_without_images_stop_with_one_line():
    from o2o.pipeline import observation_input

    flat = validate(compose(["experiment=smoke"]))
    with pytest.raises(ConfigError, match="choose an image encoder"):
        observation_input(flat, (16, 16, 3))
    pixels = validate(compose(["experiment=smoke", "encoder=impala_small"]))
    with pytest.raises(ConfigError, match="use encoder=none"):
        observation_input(pixels, (6,))
    assert observation_input(pixels, (16, 16, 3)).flat_dim == 16 * 16 * 3
    for override, message in (("reference=regression", "reference=regression"), ("exploration=rnd", "exploration=rnd")):
        with pytest.raises(ConfigError, match=message):
            validate(compose(["experiment=smoke", "encoder=impala_small", override]))


def test_observations_of_three_axes_that_are_not_uint8_frames_stop_with_one_line():
    import gymnasium as gym

    from o2o.envs import FlatObservation

    class FloatImages(gym.Env):
        observation_space = gym.spaces.Box(0.0, 1.0, (8, 8, 3), np.float32)
        action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    with pytest.raises(ConfigError, match=r"float32 arrays \(8, 8, 3\): image observations are uint8 frames"):
        FlatObservation(FloatImages(), [])


def test_the_online_buffer_is_no_larger_than_the_online_steps():
    from o2o.pipeline import online_rows

    assert online_rows(validate(compose(["experiment=smoke"]))) == 300  # smoke: 300 online steps, capacity 1M
    assert online_rows(validate(compose(["experiment=smoke", "buffer.online_capacity=100"]))) == 100


def test_a_frame_dataset_too_big_for_memory_stops_before_loading(tmp_path, monkeypatch):
    from o2o.data import ogbench

    path = tmp_path / "big.npz"
    np.savez(path, observations=np.zeros((10, 4, 4, 3), np.uint8), actions=np.zeros((10, 5), np.float32),
             terminals=np.zeros(10, bool))
    loaded = []
    monkeypatch.setattr("ogbench.utils.load_dataset", lambda *a, **k: loaded.append(1))
    with pytest.raises(Exception, match=r"10 observations of \(4, 4, 3\) uint8 need about .* GiB to load"):
        ogbench.load(path, "visual-cube-single-singletask-v0", free_bytes=1000)
    assert not loaded


def test_frames_in_a_d4rl_file_are_kept_as_uint8_and_checked_for_memory_before_reading(tmp_path, monkeypatch):
    import h5py

    from o2o.data import checks
    from o2o.data.d4rl import load_d4rl_hdf5
    from o2o.errors import DatasetError

    path = tmp_path / "frames.hdf5"
    with h5py.File(path, "w") as f:
        f["observations"] = frames(5)
        f["next_observations"] = frames(5, seed=1)
        f["actions"] = np.zeros((5, 2), np.float32)
        f["rewards"] = np.zeros(5, np.float32)
        f["terminals"] = np.zeros(5, bool)
    data = load_d4rl_hdf5(str(path))
    assert data.observations.dtype == np.uint8 and data.observations.shape == (5, *SHAPE)
    np.testing.assert_array_equal(data.next_observations, frames(5, seed=1))
    monkeypatch.setattr(checks, "free_host_memory", lambda: 1000)
    with pytest.raises(DatasetError, match=r"5 observations of \(8, 8, 3\) uint8 need about"):
        load_d4rl_hdf5(str(path))


def test_frames_in_a_minari_dataset_are_kept_as_uint8_and_checked_for_memory_before_reading(tmp_path, monkeypatch):
    import warnings

    import gymnasium as gym
    import minari
    from minari.data_collector import EpisodeBuffer

    from o2o.config import EnvConfig
    from o2o.data import checks
    from o2o.data.checks import check_matches_env
    from o2o.data.minari import _read_minari_episodes, load_minari
    from o2o.data.minari_hdf5 import concatenate_episodes, read_minari_hdf5
    from o2o.errors import DatasetError

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    lengths = [3, 1, 4]
    episodes = [frames(n + 1, seed=i) for i, n in enumerate(lengths)]
    buffers = [EpisodeBuffer(id=i, observations=episodes[i], actions=np.zeros((n, 2), np.float32), rewards=[0.0] * n,
                             terminations=[False] * n, truncations=[False] * (n - 1) + [True])
               for i, n in enumerate(lengths)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        minari.create_dataset_from_buffers("o2o-test/frames/reach-v0", buffers,
                                           observation_space=gym.spaces.Box(0, 255, SHAPE, np.uint8),
                                           action_space=gym.spaces.Box(-1, 1, (2,)), algorithm_name="test")
    expected = np.concatenate([e[:-1] for e in episodes]), np.concatenate([e[1:] for e in episodes])
    path = str(tmp_path / "o2o-test/frames/reach-v0/data/main_data.hdf5")
    monkeypatch.setattr("o2o.data.minari_hdf5.MIN_EPISODES_PER_WORKER", 1)
    iterated = concatenate_episodes(_read_minari_episodes(minari.load_dataset("o2o-test/frames/reach-v0"), []))
    for read in [iterated, *(read_minari_hdf5(path, [], len(lengths), sum(lengths), w) for w in (1, 2))]:
        assert read["observations"].dtype == np.uint8  # Minari's iterator, the file read in one and in two processes
        np.testing.assert_array_equal(read["observations"], expected[0])
        np.testing.assert_array_equal(read["next_observations"], expected[1])
    data = load_minari("o2o-test/frames/reach-v0", [], download=False)
    assert data.observations.shape == (sum(lengths), *SHAPE) and data.observations.dtype == np.uint8
    check_matches_env(data, EnvConfig(name="frames", gym_id="o2o-test/frames"), SHAPE, (2,))  # what the env gives
    with pytest.raises(DatasetError, match=r"dataset observations \(8, 8, 3\)"):  # an env of vectors refuses it
        check_matches_env(data, EnvConfig(name="vectors", gym_id="o2o-test/vectors"), (FLAT,), (2,))
    monkeypatch.setattr(checks, "free_host_memory", lambda: 1000)
    monkeypatch.setattr("o2o.data.minari.read_minari_hdf5", lambda *a, **k: pytest.fail("read before the check"))
    with pytest.raises(DatasetError, match=r"'o2o-test/frames/reach-v0': 8 observations of \(8, 8, 3\) uint8 need"):
        load_minari("o2o-test/frames/reach-v0", [], download=False)


def test_the_preflight_counts_frames_as_uint8_and_refuses_buffers_that_do_not_fit(monkeypatch):
    from o2o import pipeline

    cfg = validate(compose(["experiment=smoke", "encoder=impala_small", "buffer.online_capacity=1000"]))
    spec = PixelObservation((64, 64, 3), cfg.encoder)
    monkeypatch.setattr(pipeline, "free_memory", lambda device: 100 * 2**30)
    pipeline.check_memory(cfg, spec, 5, 100_000, torch.device("cpu"))  # 101k frames pairs: about 2.3 GiB
    monkeypatch.setattr(pipeline, "free_memory", lambda device: 2 * 2**30)
    with pytest.raises(ConfigError, match=r"needs 2\.3 GiB of buffers"):
        pipeline.check_memory(cfg, spec, 5, 100_000, torch.device("cpu"))


# --------------------------------------------------------------------------- a run on frames, every stage


@pytest.fixture(scope="module")
def pixel_task(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pixels") / "examples"
    shutil.copytree(ROOT / "examples", folder, ignore=shutil.ignore_patterns("*.hdf5", "__pycache__"))
    subprocess.run([sys.executable, "pixel_reach.py", "pixel_reach.hdf5"], cwd=folder, check=True, capture_output=True)
    return folder


PIXEL_RUN = [*SMOKE_ANY_ENV, "env=pixel_reach", "algo=calql", "mlflow_experiment=o2o-pixels", "progress=false",
             "schedule.offline_steps=40", "schedule.online_steps=80", "schedule.checkpoint_interval=10",
             "schedule.eval_interval_offline=20", "schedule.eval_interval_online=40", "algo.warmup_steps=10",
             "env.max_episode_steps=20", "domain.eval_episodes=1", "calibration_batch=64", "mlflow.system_metrics=false",
             "encoder.stack_sizes=[4,8]", "encoder.mlp_hidden=[32]"]


def test_a_run_on_frames_goes_through_every_stage_resumes_and_exports_a_policy_that_takes_a_frame(pixel_task, tmp_path):
    import json

    import mlflow
    from mlflow.tracking import MlflowClient

    run_dir = tmp_path / "run"
    command = [sys.executable, str(ROOT / "src" / "main.py"), *PIXEL_RUN, f"hydra.searchpath=[file://{pixel_task / 'conf'}]",
               f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(command, cwd=pixel_task, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # killed once fine-tuning has a checkpoint
        try:
            if json.loads((run_dir / "checkpoints" / "progress.json").read_text())["stage"] == "online":
                proc.send_signal(signal.SIGKILL)
                break
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.05)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, out[-3000:]
    done = subprocess.run(command, cwd=pixel_task, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming" in done.stderr + done.stdout

    final = torch.load(run_dir / "checkpoints" / "final.pt", weights_only=False)
    assert final["online"]["buffer"]["frames"].dtype == torch.uint8  # the online frames were checkpointed as uint8
    assert 0 < len(final["online"]["buffer"]["frames"]) <= 80 and final["final"][M.ENV_STEPS] == 80
    client = MlflowClient()
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    inputs = {i.tags[0].value: json.loads(i.dataset.schema)["mlflow_colspec"] for i in run.inputs.dataset_inputs}
    for context in ("offline", "online"):  # both datasets logged as frames of the env's shape
        spec = inputs[context][0]
        assert spec["name"] == "observations" and spec["tensor-spec"] == {"dtype": "uint8", "shape": [-1, 16, 16, 3]}
    history = client.get_metric_history(run_id, "offline/calibration/q_data")
    assert history and all(np.isfinite(m.value) for m in history)
    policy = mlflow.pyfunc.load_model(f"runs:/{run_id}/policy")
    sys.path.insert(0, str(pixel_task))
    try:
        import pixel_reach
    finally:
        sys.path.remove(str(pixel_task))
    frame = pixel_reach.frame(np.array([-0.7, -0.7], np.float32))
    action = policy.predict(frame[None])  # a batch of one frame (1, H, W, C) uint8, as its signature says
    assert action.shape == (1, 2) and np.all(np.abs(action) <= 1)
    np.testing.assert_allclose(policy.predict(np.stack([frame, frame])), np.concatenate([action, action]), atol=1e-6)
