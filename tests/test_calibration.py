"""The calibration diagnostics on a fixed offline batch equal a direct computation, stay on one batch, and are logged."""
import os

import numpy as np
import torch
from mlflow.tracking import MlflowClient

from conftest import SMOKE, algo_config, plain_q
from o2o import metrics as M
from o2o.agents.cql import CQL
from o2o.buffers import TransitionBuffer
from o2o.stages.calibration import PROBE_ACTIONS, CalibrationProbe


def offline_buffer(n=50, obs_dim=3, act_dim=2):
    rng = np.random.default_rng(1)
    buffer = TransitionBuffer(n, obs_dim, act_dim, torch.device("cpu"))
    buffer.add(rng.normal(size=(n, obs_dim)), rng.uniform(-1, 1, (n, act_dim)), rng.normal(size=n),
               rng.normal(size=(n, obs_dim)), np.zeros(n), rng.normal(size=n) * 0.01)
    return buffer


def test_the_diagnostics_equal_a_direct_computation():
    torch.manual_seed(0)
    agent = CQL(3, 2, algo_config("calql", critic_hidden=[8, 8], actor_hidden=[8]), torch.device("cpu"))
    buffer = offline_buffer()
    probe = CalibrationProbe(buffer, size=20, seed=7)
    got = probe(agent)
    b = probe.batch
    members = agent.critic.ensemble_size
    q_data = torch.tensor([np.mean([plain_q(agent.critic, m, b.obs[i], b.actions[i]).item() for m in range(members)])
                           for i in range(20)])
    v_ref = b.v_ref
    with torch.no_grad():
        mean, log_std = agent.actor(b.obs)
        eps = probe.eps.view(20, PROBE_ACTIONS, 2)
        actions = torch.tanh(mean.unsqueeze(1) + log_std.exp().unsqueeze(1) * eps)  # tanh-Gaussian samples
        q_pi = [(plain_q(agent.critic, m, b.obs[i], actions[i, k]).item(), v_ref[i].item())
                for m in range(members) for i in range(20) for k in range(PROBE_ACTIONS)]
    below_pi = [q < v for q, v in q_pi]
    expected = {"q_data": q_data.mean().item(), "q_policy": np.mean([q for q, _ in q_pi]), "v_ref": v_ref.mean().item(),
                "q_data_over_v_ref": (q_data.mean() / v_ref.mean()).item(),
                "below_v_ref": (q_data < v_ref).float().mean().item(), "bound_rate": float(np.mean(below_pi))}
    assert set(got) == set(M.CALIBRATION_KEYS)
    for key, value in expected.items():
        assert np.isclose(got[key], value, rtol=1e-4, atol=1e-5), (key, got[key], value)
    assert 0 < got["bound_rate"] < 1 and 0 < got["below_v_ref"] < 1  # both outcomes occur: the test can fail


def test_the_batch_is_fixed_by_the_seed_and_training_does_not_move_it():
    buffer = offline_buffer()
    first, again, other = (CalibrationProbe(buffer, 20, 7), CalibrationProbe(buffer, 20, 7),
                           CalibrationProbe(buffer, 20, 8))
    assert torch.equal(first.batch.obs, again.batch.obs) and torch.equal(first.eps, again.eps)
    assert not torch.equal(first.batch.obs, other.batch.obs)
    state = torch.random.get_rng_state()
    agent = CQL(3, 2, algo_config("calql", critic_hidden=[8, 8], actor_hidden=[8]), torch.device("cpu"))
    before = torch.random.get_rng_state()
    first(agent)
    assert torch.equal(torch.random.get_rng_state(), before)  # the probe draws no training randomness
    torch.random.set_rng_state(state)
    assert len(CalibrationProbe(buffer, 1000, 7).batch.obs) == 50  # never more than the data


def test_runs_log_the_diagnostics_at_every_log_flush_offline_and_online(tmp_path):
    from o2o import run

    for algo in ("calql", "sac"):
        run(algo=algo, run_dir=str(tmp_path / algo),
            overrides=[*SMOKE, "mlflow_experiment=o2o-calibration", "schedule.online_steps=100", "progress=false"])
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    runs = {r.data.tags["algo"]: r for r in
            client.search_runs([client.get_experiment_by_name("o2o-calibration").experiment_id])}
    calql = runs["calql"].info.run_id
    for phase, steps in ((M.OFFLINE, [10, 20, 30, 40]), (M.ONLINE, [100])):
        for key in M.CALIBRATION_KEYS:
            history = client.get_metric_history(calql, M.calibration(phase, key))
            assert [m.step for m in history] == steps, (phase, key)
    assert not any("/calibration/" in k for k in runs["sac"].data.metrics)  # SAC reads no offline data
