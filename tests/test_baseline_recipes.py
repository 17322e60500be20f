"""The Cal-QL paper's other baselines as configured: CQL+SAC and Hybrid RL as presets of existing agents, AWAC's
schedule, ReBRAC's next actions through the buffers, and the metric names every method shares."""
import numpy as np
import pytest
import torch

from conftest import SMOKE, algo_config, compose
from o2o import metrics as M
from o2o.buffers import TransitionBuffer, episode_next_actions
from o2o.config import validate


def differing(a, b) -> set[str]:
    return {k for k in vars(a) if getattr(a, k) != getattr(b, k)}


@pytest.mark.parametrize("env", ["adroit_door", "antmaze_umaze", "kitchen_mixed", "pointmaze_umaze",
                                 "ogbench_cube_single", "visual_pick_place"])
def test_cql_sac_is_cql_with_the_regulariser_off_online(env):
    cql, cql_sac = (validate(compose([f"algo={a}", f"env={env}"])).algo for a in ("cql", "cql_sac"))
    assert differing(cql, cql_sac) == {"name", "online_regulariser"} and not cql_sac.online_regulariser
    # the authors' --online_use_cql=False keeps the max-target backup and the rest of pre-training's settings
    assert cql_sac.online_max_target_backup == cql.max_target_backup


def test_cql_sac_fine_tunes_the_pretrained_networks_with_sac_losses():
    from o2o.agents.cql import CQL

    cfg = algo_config("cql_sac", actor_hidden=[8, 8], critic_hidden=[8, 8], n_actions=3)
    agent = CQL(3, 2, cfg, torch.device("cpu"))
    agent.begin_phase(M.OFFLINE)
    assert agent.regularise and "random_actions" in agent.draw_noise(4)
    agent.begin_phase(M.ONLINE)
    assert not agent.regularise and agent.max_target_backup and "random_actions" not in agent.draw_noise(4)
    assert agent.idle_names() == {"log_alpha_prime"}  # pointmaze's Lagrange multiplier stops training
    batch = torch.randn(4, 3)
    from o2o.buffers import Batch
    _, metrics = agent.compute_losses(Batch(batch, torch.rand(4, 2) * 2 - 1, torch.zeros(4), batch, torch.zeros(4),
                                            torch.zeros(4)), agent.draw_noise(4))
    assert "cql_gap" not in metrics and M.CRITIC_LOSS in metrics


@pytest.mark.parametrize("env", ["adroit_door", "antmaze_umaze", "pointmaze_umaze"])
def test_hybrid_rl_is_sac_from_scratch_with_half_of_every_batch_offline(env):
    sac, hybrid = (validate(compose([f"algo={a}", f"env={env}"])).algo for a in ("sac", "hybrid_rl"))
    assert differing(sac, hybrid) == {"name", "mixing_ratio"}
    assert hybrid.mixing_ratio == 0.5 and not hybrid.pretrain and hybrid.uses_offline_data


def test_awac_keeps_the_offline_data_in_its_buffer_and_pretrains():
    awac = validate(compose(["algo=awac", "env=adroit_door"])).algo
    assert awac.pretrain and awac.mixing_ratio == -1 and awac.critic_output_max == 0.0
    assert (awac.beta, awac.advantage_clip, awac.value_from, awac.actor_weight_decay) == (0.5, 0.5, "mean", 1e-4)
    dense = validate(compose(["algo=awac", "env=adroit_door_dense"])).algo
    assert dense.critic_output_max is None  # dense rewards are positive: no clamp at 0


def test_next_actions_follow_each_episode_and_end_on_its_own_action():
    actions = np.arange(10, dtype=np.float32).reshape(5, 2)
    ends = np.array([False, True, False, False, True])
    assert episode_next_actions(actions, ends).tolist() == [[2, 3], [2, 3], [6, 7], [8, 9], [8, 9]]
    buffer = TransitionBuffer(4, 1, 2, torch.device("cpu"), next_actions=True)
    rows = buffer.add(np.zeros((3, 1)), actions[:3], np.zeros(3), np.zeros((3, 1)), np.zeros(3), np.ones(3))
    batch = buffer.batch(rows)
    assert torch.equal(batch.next_actions, torch.zeros(3, 2)) and torch.equal(batch.v_ref, torch.ones(3))
    buffer.set_next_actions(rows, actions[:3])
    assert buffer.batch(rows).next_actions.tolist() == [[2, 3], [4, 5], [4, 5]]
    buffer.set_v_ref(rows, np.full(3, 7.0))  # the v_ref column is not the last one any more
    assert buffer.batch(rows).v_ref.tolist() == [7.0] * 3
    assert TransitionBuffer(4, 1, 2, torch.device("cpu")).to_batch((torch.zeros(2, 7), None)).next_actions is None


@pytest.fixture
def made_buffers(monkeypatch) -> list:
    """Every TransitionBuffer a run in this process builds (offline, then online), to read after the run."""
    buffers = []
    real_init = TransitionBuffer.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        buffers.append(self)

    monkeypatch.setattr(TransitionBuffer, "__init__", init)
    return buffers


@pytest.mark.parametrize("schedule", ["step", "episode"])
def test_rebrac_reads_the_datas_next_action_offline_and_online(made_buffers, tmp_path, schedule):
    """Every buffer row's next action is the action of the row that continues its episode (offline from the
    dataset's episodes, online from each collected episode), whichever schedule collects it."""
    from o2o import run

    run(algo="rebrac", run_dir=str(tmp_path), overrides=[*SMOKE, "mlflow_experiment=o2o-rebrac-next",
                                                         "schedule.online_steps=150", f"algo.update_schedule={schedule}"])
    assert len(made_buffers) >= 2 and all(b.next_actions for b in made_buffers)
    for buffer in made_buffers:
        b = buffer.batch()
        continues = (b.next_obs[:-1] == b.obs[1:]).all(1) & (b.dones[:-1] == 0)
        assert continues.sum() > 100
        assert torch.equal(b.next_actions[:-1][continues], b.actions[1:][continues])


@pytest.mark.parametrize("algo", ["awac", "rebrac", "td3bc", "cql_sac", "hybrid_rl"])
def test_each_new_method_logs_the_shared_metric_names(algo):
    from o2o.agents.registry import agent_class

    cfg = algo_config(algo, actor_hidden=[8, 8], critic_hidden=[8, 8])
    agent = agent_class(cfg)(3, 2, cfg, torch.device("cpu"), total_updates=10)
    from o2o.buffers import Batch
    g = torch.Generator().manual_seed(0)
    batch = Batch(torch.randn(4, 3, generator=g), torch.rand(4, 2, generator=g) * 2 - 1, torch.zeros(4),
                  torch.randn(4, 3, generator=g), torch.zeros(4), torch.zeros(4), torch.zeros(4, 2))
    agent.begin_phase(M.OFFLINE)
    keys = set()
    for _ in range(agent.cfg.actor_update_interval):
        keys |= set(agent.update(batch))
    assert {M.CRITIC_LOSS, M.ACTOR_LOSS, M.Q_DATA, M.V_REF, M.Q_DATA_MINUS_V_REF, "td_target"} <= keys


def test_the_step_schedule_evaluates_and_logs_at_the_env_step_itself(made_buffers, tmp_path):
    """RLPD's and IQL's loops evaluate at every multiple of the interval, inside an episode too (an episode of the
    smoke PointMaze runs up to 300 steps); checkpoints wait for the episode's end."""
    import os

    from mlflow.tracking import MlflowClient

    from o2o import run

    run(algo="sac", run_dir=str(tmp_path), overrides=[
        *SMOKE, "mlflow_experiment=o2o-step-points", "schedule.online_steps=300", "schedule.eval_interval_online=100",
        "schedule.log_interval=50", "algo.warmup_steps=100", "domain.eval_episodes=1", "progress=false"])
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    (r,) = client.search_runs([client.get_experiment_by_name("o2o-step-points").experiment_id])
    steps = lambda key: [m.step for m in client.get_metric_history(r.info.run_id, key)]  # noqa: E731
    assert steps(M.evaluation(M.ONLINE, M.SUCCESS_RATE)) == [0, 100, 200, 300]
    assert steps(M.train(M.ONLINE, M.UPDATES_PER_SECOND)) == [50, 100, 150, 200, 250, 300]
    assert steps(M.train(M.ONLINE, M.CRITIC_LOSS)) == [150, 200, 250, 300]  # updates from env step 101 on
    online = made_buffers[-1].batch()  # every episode's V_ref was written when it ended, the last (cut) one's too
    assert len(online.v_ref) == 300 and torch.isfinite(online.v_ref).all()
