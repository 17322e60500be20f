"""The paper's metric per domain, on hand-made episodes, and the authors' small details that shape every curve."""
import gymnasium as gym
import numpy as np
import pytest
import torch

from conftest import algo_config, compose
from o2o import metrics as M
from o2o.buffers import Batch
from o2o.agents.cql import CQL
from o2o.agents.sac import SAC
from o2o.config import validate
from o2o.envs import BinarySuccessReward, EndOnSuccess, SuccessFromTasks
from o2o.errors import ConfigError, DatasetError
from o2o.rollout import rollout
from o2o.stages.evaluate import score_episodes

KITCHEN_TASKS = ("microwave", "kettle", "light switch", "slide cabinet")


class Scripted(gym.Env):
    """Replays a fixed per-step script of (reward, info) for as many steps as it has."""

    observation_space = gym.spaces.Box(-1, 1, (1,))
    action_space = gym.spaces.Box(-1, 1, (1,))

    def __init__(self, script):
        self.script, self.goal = script, {t: None for t in KITCHEN_TASKS}

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        reward, info = self.script[self.t]
        self.t += 1
        return np.zeros(1, np.float32), reward, False, self.t == len(self.script), dict(info)


def run(env):
    return rollout(env, lambda obs: np.zeros(1, np.float32))


def test_adroit_success_at_a_single_step_counts_and_ends_the_evaluation_episode():
    script = [(1.0, {"success": False})] * 5 + [(10.0, {"success": True})] + [(1.0, {"success": False})] * 4
    episode = run(EndOnSuccess(BinarySuccessReward(Scripted(script))))
    assert len(episode) == 6 and episode.terminated  # the authors' sampler: done at the first success
    assert episode.rewards.tolist() == [-1.0] * 5 + [0.0] and episode.task_rewards[-1] == 10.0
    scores = score_episodes([episode, run(EndOnSuccess(BinarySuccessReward(Scripted(script[:5]))))], [M.SUCCESS_RATE])
    assert scores[M.SUCCESS_RATE] == 0.5


def test_success_at_any_step_counts_even_where_the_episode_goes_on():
    script = [(0.0, {"success": False}), (1.0, {"success": True}), (0.0, {"success": False})]
    episode = run(Scripted(script))  # a domain without end_on_success: the episode goes on after the goal
    assert len(episode) == 3 and episode.succeeded and episode.goal_reached == 1.0
    assert score_episodes([episode], [M.SUCCESS_RATE])[M.SUCCESS_RATE] == 1.0


def test_kitchen_three_of_four_tasks_score_075_and_regret_025():
    done = []
    script = []
    for task in ("microwave", "kettle", "light switch"):
        done = [*done, task]
        script.append((float(len(done)), {"episode_task_completions": list(done), "step_task_completions": list(done)}))
    episode = run(SuccessFromTasks(Scripted(script)))
    scores = score_episodes([episode], [M.TASKS_SOLVED, M.SUCCESS_RATE])
    assert scores[M.TASKS_SOLVED] == 0.75 and scores[M.SUCCESS_RATE] == 0.0
    assert 1.0 - episode.goal_reached == 0.25  # the training episode's regret
    assert 1.0 - episode.score == 0.25


def test_kitchen_scores_the_tasks_in_their_goal_state_at_the_last_step():
    """The authors' rewards[-1] / 4: a task completed and then undone counts as ever solved, not as solved."""
    script = [(1.0, {"episode_task_completions": ["microwave"], "step_task_completions": ["microwave"]}),
              (2.0, {"episode_task_completions": ["microwave", "kettle"], "step_task_completions": ["microwave", "kettle"]}),
              (1.0, {"episode_task_completions": ["microwave", "kettle"], "step_task_completions": ["kettle"]})]
    episode = run(SuccessFromTasks(Scripted(script)))
    scores = score_episodes([episode], [M.TASKS_SOLVED, M.TASKS_EVER_SOLVED, M.SUCCESS_RATE])
    assert scores[M.TASKS_SOLVED] == 0.25 == episode.task_rewards[-1] / 4  # kettle alone at the end
    assert scores[M.TASKS_EVER_SOLVED] == 0.5 and scores[M.SUCCESS_RATE] == 0.0
    assert episode.score == 0.25  # its regret is 0.75: the headline's measure


def test_normalized_return_is_d4rls():
    episode = run(Scripted([(30.0, {}), (20.0, {})]))
    assert score_episodes([episode], [M.NORMALIZED_RETURN], 0.0, 200.0)[M.NORMALIZED_RETURN] == 25.0


@pytest.mark.parametrize("env, ends", [("adroit_door", True), ("adroit_door_dense", False), ("antmaze_umaze", True),
                                       ("kitchen_partial", False), ("hopper", False), ("pointmaze_umaze", True)])
def test_episodes_end_at_the_first_success_where_the_authors_do(env, ends):
    from o2o.envs import make_env

    cfg = validate(compose([f"env={env}"]))
    wrapped, names = make_env(cfg.env, cfg.domain), []
    while hasattr(wrapped, "env"):
        names.append(type(wrapped).__name__)
        wrapped = wrapped.env
    assert ("EndOnSuccess" in names) == ends
    assert ("BinarySuccessReward" in names) == (env == "adroit_door")


@pytest.mark.parametrize("env, metric, extra", [
    ("adroit_door", M.SUCCESS_RATE, []),
    ("adroit_door_dense", M.NORMALIZED_RETURN, [M.SUCCESS_RATE]),
    ("antmaze_large_diverse", M.SUCCESS_RATE, [M.NORMALIZED_RETURN]),
    ("kitchen_partial", M.TASKS_SOLVED, [M.SUCCESS_RATE, M.TASKS_EVER_SOLVED]),
    ("hopper", M.NORMALIZED_RETURN, []),
    ("pointmaze_umaze", M.SUCCESS_RATE, [M.NORMALIZED_RETURN]),
])
def test_each_domain_is_scored_with_the_papers_metric(env, metric, extra):
    domain = validate(compose([f"env={env}"])).domain
    assert (domain.metric, list(domain.extra_metrics)) == (metric, extra)


def test_an_unknown_metric_stops_with_one_line():
    with pytest.raises(ConfigError, match="domain metric 'return' is not one of"):
        validate(compose(["domain.metric=return"]))


def test_a_normalized_return_headline_without_reference_scores_stops_before_any_work(monkeypatch):
    from o2o import pipeline

    cfg = validate(compose(["env=hopper", "env.ref_min_score=null", "env.ref_max_score=null", "algo=sac"]))
    monkeypatch.setattr(pipeline, "dataset_reference_scores", lambda env_cfg: (None, None))
    with pytest.raises(DatasetError, match="set env.ref_min_score and env.ref_max_score"):
        pipeline.load_data(cfg)


def test_an_extra_normalized_return_without_reference_scores_is_warned_of_before_any_work(monkeypatch, caplog):
    import logging

    from o2o import pipeline

    cfg = validate(compose(["env=antmaze_umaze", "env.ref_min_score=null", "env.ref_max_score=null", "algo=sac"]))
    assert M.NORMALIZED_RETURN in cfg.domain.extra_metrics
    monkeypatch.setattr(pipeline, "dataset_reference_scores", lambda env_cfg: (None, None))
    with caplog.at_level(logging.WARNING, logger="o2o"):
        pipeline.load_data(cfg)
    (warned,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned.startswith("antmaze_umaze: neither its dataset nor the env option gives reference scores, so its "
                             "normalized_return is logged as NaN")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="o2o"):
        pipeline.load_data(validate(compose(["env=antmaze_umaze", "algo=sac"])))  # the env option's scores
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_dataset_actions_are_clipped_inside_the_tanh_range():
    from o2o.data.checks import ACTION_CLIP
    from o2o.data.dataset import load_offline_data
    from o2o.envs import make_env

    cfg = validate(compose(["env.dataset.collector.steps=1500"]))
    env = make_env(cfg.env)
    data = load_offline_data(cfg.env, env.observation_space.shape, env.action_space.shape)
    assert ACTION_CLIP == 1 - 1e-5 and np.abs(data.actions).max() <= ACTION_CLIP
    assert np.isclose(np.abs(data.actions).max(), ACTION_CLIP)  # the scripted controller saturates: clipping happened


def _batch(obs=3, act=2, n=8):
    g = torch.Generator().manual_seed(0)
    return Batch(torch.randn(n, obs, generator=g), torch.rand(n, act, generator=g) * 2 - 1, torch.randn(n, generator=g),
                 torch.randn(n, obs, generator=g), torch.zeros(n), torch.randn(n, generator=g))


@pytest.mark.parametrize("algo, agent_type, trained", [("calql", CQL, True), ("cql", CQL, True), ("sac", SAC, False)])
def test_log_std_multiplier_and_offset_train_as_in_the_authors_policy(algo, agent_type, trained):
    torch.manual_seed(0)
    cfg = algo_config(algo, actor_hidden=[8], critic_hidden=[8], **({"n_actions": 2} if agent_type is CQL else {}))
    assert cfg.trainable_log_std_transform is trained
    agent = agent_type(3, 2, cfg, torch.device("cpu"))
    before = (agent.actor.log_std_multiplier.item(), agent.actor.log_std_offset.item())
    assert before == (1.0, -1.0 if agent_type is CQL else 0.0)  # Cal-QL's policy_log_std_offset; RLPD's TanhNormal
    agent.update(_batch())
    after = (agent.actor.log_std_multiplier.item(), agent.actor.log_std_offset.item())
    assert (after != before) is trained


def test_the_kitchen_env_reports_the_tasks_held_at_each_step():
    from o2o.envs import make_env

    cfg = validate(compose(["env=kitchen_partial"]))
    env = make_env(cfg.env, cfg.domain, seed=0)
    episode = rollout(env, lambda obs: env.action_space.sample(), max_steps=5)
    env.close()
    assert episode.goal_held is not None and len(episode.goal_held) == 6
    assert episode.score == episode.goal_held[-1] == episode.task_rewards[-1] / 4  # what the reward counts
