"""Every metric name the pipeline logs, defined once: the stages, the report and the tests use these.

MLflow keys are ``<phase>/<kind>/<name>``: ``offline/train/q_data`` (gradient
steps), ``online/eval/normalized_score`` (env steps). A run's final summary
uses ``<phase>/<name>`` and is logged again as ``final/<phase>_<name>``.
"""
from __future__ import annotations

OFFLINE, ONLINE = "offline", "online"
PHASES = (OFFLINE, ONLINE)

# Evaluation results (Evaluator)
RETURN = "return"
NORMALIZED_SCORE = "normalized_score"
SUCCESS_RATE = "success_rate"
EPISODE_LENGTH = "episode_length"

# Training diagnostics every agent reports (ActorCritic.q_metrics and the losses)
Q_DATA = "q_data"  # mean Q(s, a) on batch actions
Q_POLICY = "q_policy"  # mean Q(s, a ~ pi)
MC_RETURN = "mc_return"  # mean reference return V_ref(s)
Q_DATA_MINUS_MC_RETURN = "q_data_minus_mc_return"
CRITIC_LOSS = "critic_loss"
ACTOR_LOSS = "actor_loss"
CALQL_BOUND_RATE = "calql_bound_rate"  # fraction of policy Q-values lifted to V_ref

# Stage bookkeeping
UPDATES_PER_SECOND = "updates_per_second"
GRAD_STEPS = "grad_steps"
EPISODE_RETURN = "episode_return"
EPISODE_SUCCESS = "episode_success"

# Online run-level series and totals
CUMULATIVE_REGRET = "online/cumulative_regret"  # mean of (1 - success) over training episodes so far
EPISODES = "online/episodes"
ENV_STEPS = "online/env_steps"


def train(phase: str, name: str) -> str:
    return f"{phase}/train/{name}"


def evaluation(phase: str, name: str) -> str:
    return f"{phase}/eval/{name}"


def summary(phase: str, name: str) -> str:
    """A key of the run's final summary (what ``run`` returns)."""
    return f"{phase}/{name}"


def final(summary_key: str) -> str:
    """The MLflow name of a final-summary value."""
    return "final/" + summary_key.replace("/", "_")
