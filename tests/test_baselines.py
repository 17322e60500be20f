"""IQL, SAC and RLPD: loss math on hand-built tensors and how each one uses the offline data."""
import pytest
import torch

from conftest import SMOKE, algo_config, compose
from o2o.buffers import Batch
from o2o.agents.iql import IQL, advantage_weights, expectile_loss
from o2o.agents.sac import SAC
from o2o.config import validate


def test_expectile_loss_weights_positive_and_negative_errors():
    diff = torch.tensor([2.0, -1.0])
    # 0.8 * 4 and 0.2 * 1, averaged
    assert expectile_loss(diff, 0.8).item() == pytest.approx((0.8 * 4 + 0.2 * 1) / 2)
    assert expectile_loss(diff, 0.5).item() == pytest.approx(0.5 * (4 + 1) / 2)


def test_advantage_weights_are_exponentiated_and_clipped():
    w = advantage_weights(torch.tensor([0.0, 0.5, 10.0]), temperature=2.0, max_weight=100.0)
    torch.testing.assert_close(w, torch.tensor([1.0, torch.e, 100.0]))


def make(cls, name, **overrides):
    torch.manual_seed(0)
    cfg = algo_config(name, actor_hidden=[8], critic_hidden=[8], **overrides)
    return cls(3, 2, cfg, torch.device("cpu"))


def test_target_is_min_over_a_random_subset_of_the_ensemble():
    agent = make(SAC, name="rlpd", ensemble_size=5, target_subset=2)
    q = torch.tensor([5.0, 1.0, 4.0, 3.0, 2.0]).view(5, 1)
    seen = set()
    for _ in range(200):
        value = agent.target_min(q, agent.draw_target_subset()).item()
        seen.add(value)
    # the min of two distinct members: never the largest value, every other value possible
    assert seen == {1.0, 2.0, 3.0, 4.0}
    everything = make(SAC, name="sac", ensemble_size=5)
    assert everything.draw_target_subset() == {}
    assert everything.target_min(q, {}).item() == 1.0


def test_iql_losses_on_hand_built_values():
    agent = make(IQL, name="iql", expectile=0.9, awr_temperature=3.0, gamma=0.5)
    batch = Batch(torch.randn(4, 3), torch.rand(4, 2) * 2 - 1, torch.ones(4), torch.randn(4, 3),
                  torch.tensor([0.0, 1.0, 0.0, 0.0]), torch.zeros(4))
    with torch.no_grad():
        _, m = agent.compute_losses(batch, {}, )
        m["value_loss"] = agent.value_loss(batch, {})[0]
        q_t = agent.critic_target(batch.obs, batch.actions.unsqueeze(1)).amin(0)[:, 0]
        v = agent.v(batch.obs)
        target = batch.rewards + 0.5 * (1 - batch.dones) * agent.v(batch.next_obs)
        q = agent.critic(batch.obs, batch.actions.unsqueeze(1))[..., 0]
    torch.testing.assert_close(m["value_loss"], expectile_loss(q_t - v, 0.9))
    torch.testing.assert_close(m["critic_loss"], ((q - target) ** 2).mean(1).sum())
    torch.testing.assert_close(m["awr_weight"], advantage_weights(q_t - v, 3.0, 100.0).mean())


def test_sac_backup_includes_the_entropy_term():
    agent = make(SAC, name="sac", backup_entropy=True, gamma=0.9)
    batch = Batch(torch.randn(4, 3), torch.rand(4, 2) * 2 - 1, torch.ones(4), torch.randn(4, 3), torch.zeros(4),
                  torch.zeros(4))
    noise = agent.draw_noise(4)
    with torch.no_grad():
        _, m = agent.compute_losses(batch, noise, )
        from o2o.agents.networks import TanhGaussianActor

        a2, logp2 = TanhGaussianActor.sample(*agent.actor(batch.next_obs), noise["eps_next"])
        q2 = agent.critic_target(batch.next_obs, a2).amin(0)[:, 0] - agent.alpha * logp2[:, 0]
    torch.testing.assert_close(m["td_target"], (1 + 0.9 * q2).mean())


@pytest.mark.parametrize("env, subset, backup, hidden", [
    ("antmaze_umaze", 1, False, [256] * 3),  # ikostrikov/rlpd README, AntMaze command
    ("adroit_pen", 2, False, [256] * 3),  # README, Adroit binary command
    ("hopper", 2, True, [256] * 2),  # README, locomotion: the default config
])
def test_rlpd_as_its_authors_run_it(env, subset, backup, hidden):
    cfg = validate(compose(["algo=rlpd", f"env={env}"]))
    algo = cfg.algo
    assert (algo.mixing_ratio, algo.utd_ratio, algo.ensemble_size, algo.layer_norm, algo.actor_q) == (0.5, 20, 10, True, "mean")
    assert (algo.target_subset, algo.backup_entropy, algo.actor_hidden, algo.critic_hidden) == (subset, backup, hidden, hidden)
    assert (algo.target_entropy_scale, algo.log_std_offset, algo.warmup_steps, algo.update_schedule) == (0.5, 0.0, 5000, "step")
    assert (algo.reward_scale, algo.reward_bias) == ((1.0, -1.0) if env.startswith("antmaze") else (1.0, 0.0))
    assert not hasattr(cfg.buffer, "mixing_ratio") and not hasattr(cfg.schedule, "utd_ratio")


@pytest.mark.parametrize("env, dropout, schedule, expectile, temperature", [
    ("antmaze_umaze", 0.0, "constant", 0.9, 10.0),  # antmaze_finetune_config.py
    ("adroit_door", 0.1, "cosine", 0.7, 0.5),  # kitchen_config.py, which the README uses for Adroit
    ("kitchen_partial", 0.1, "cosine", 0.7, 0.5),
    ("hopper", 0.0, "cosine", 0.7, 3.0),  # mujoco_config.py
])
def test_iql_as_its_authors_run_it(env, dropout, schedule, expectile, temperature):
    algo = validate(compose(["algo=iql", f"env={env}"])).algo
    assert (algo.actor_dropout, algo.actor_lr_schedule, algo.expectile, algo.awr_temperature) == (
        dropout, schedule, expectile, temperature)
    assert (algo.mixing_ratio, algo.actor_hidden, algo.critic_hidden, algo.update_schedule) == (-1.0, [256] * 2, [256] * 2, "step")


def test_sac_is_standard_sac_from_scratch():
    algo = validate(compose(["algo=sac", "env=adroit_door"])).algo
    assert algo.mixing_ratio == 0.0 and not algo.uses_offline_data and not algo.pretrain
    assert (algo.actor_hidden, algo.target_entropy_scale, algo.backup_entropy, algo.warmup_steps) == ([256] * 2, 1.0, True, 5000)


def test_sac_never_reads_the_offline_data(monkeypatch, tmp_path):
    import o2o.pipeline as pipeline
    from o2o import run
    from o2o.data import dataset

    def forbidden(*args, **kwargs):
        raise AssertionError("sac read the offline transitions")

    monkeypatch.setattr(pipeline, "load_offline_data", forbidden)
    monkeypatch.setattr(dataset, "load_minari", forbidden)
    samplers = []
    real = pipeline.MixedSampler
    monkeypatch.setattr(pipeline, "MixedSampler", lambda offline, *a: samplers.append(offline) or real(offline, *a))
    final = run(algo="sac", run_dir=str(tmp_path), overrides=[*SMOKE, "mlflow_experiment=o2o-sac", "schedule.online_steps=120"])
    assert samplers == [None]
    assert "offline/normalized_return" not in final and final["online/env_steps"] == 120


def test_rlpd_run_draws_half_of_every_batch_offline(monkeypatch, tmp_path):
    from o2o import run
    from o2o.buffers import TransitionBuffer

    draws = []
    real = TransitionBuffer.sample_rows

    def spy(self, n, generator=None):
        draws.append((self.capacity == 60, n))  # the online buffer: as many rows as the 60 online steps
        return real(self, n, generator)

    monkeypatch.setattr(TransitionBuffer, "sample_rows", spy)
    run(algo="rlpd", run_dir=str(tmp_path), overrides=[*SMOKE, "mlflow_experiment=o2o-rlpd", "schedule.online_steps=60",
                                                       "algo.utd_ratio=2", "algo.warmup_steps=20"])
    online = [n for is_online, n in draws if is_online]
    offline = [n for is_online, n in draws if not is_online]
    assert len(online) == len(offline) == 80  # (60 - 20 warm-up) env steps x UTD 2, and no offline pre-training
    assert set(online) == set(offline) == {16}  # batch 32, half and half


@pytest.mark.parametrize("algo, utd", [("sac", 3), ("rlpd", 2), ("iql", 1)])
def test_step_schedule_takes_one_update_block_per_env_step_after_warm_up(monkeypatch, tmp_path, algo, utd):
    """At every update the online buffer holds the env steps taken so far: none before the warm-up ends,
    then exactly utd_ratio updates after each new step."""
    from o2o import run
    from o2o.agents.core import ActorCritic
    from o2o.stages import online

    seen = []
    real_update, real_init = ActorCritic.update, online.StepCollector.__init__

    def init(self, env, learner, buffer, *args):
        real_init(self, env, learner, buffer, *args)
        learner.agent.online_buffer_for_test = buffer

    def update(self, batch):
        buffer = getattr(self, "online_buffer_for_test", None)
        if buffer is not None:  # online updates only (IQL pre-trains first)
            seen.append(len(buffer))
        return real_update(self, batch)

    monkeypatch.setattr(online.StepCollector, "__init__", init)
    monkeypatch.setattr(ActorCritic, "update", update)
    warmup, steps = 15, 50
    run(algo=algo, run_dir=str(tmp_path), overrides=[*SMOKE, f"mlflow_experiment=o2o-{algo}-schedule",
                                                     f"schedule.online_steps={steps}", f"algo.utd_ratio={utd}",
                                                     f"algo.warmup_steps={warmup}"])
    assert seen == [n for n in range(warmup + 1, steps + 1) for _ in range(utd)]
