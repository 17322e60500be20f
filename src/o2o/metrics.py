"""Every metric name the pipeline logs, defined once: the stages, the report and the tests use these.

MLflow keys are ``<phase>/<kind>/<name>``: ``offline/train/q_data`` (gradient
steps), ``online/eval/success_rate`` (env steps). A run's final summary
uses ``<phase>/<name>`` and is logged again as ``final/<phase>_<name>``.
"""
from __future__ import annotations

OFFLINE, ONLINE = "offline", "online"
PHASES = (OFFLINE, ONLINE)
RETRAIN = "retrain"  # offline retraining from scratch on offline + online data after fine-tuning (stages/retrain.py)
ONLINE_RETRAINED = "online_retrained"  # the same during fine-tuning, every retrain.interval env steps (env-step axis)

# Evaluation results (Evaluator). A domain's headline (``domain.metric``, the paper's score) is one of
# HEADLINE_METRICS; the others are logged where they exist.
RETURN = "return"  # the task's own (untransformed) episode return
NORMALIZED_RETURN = "normalized_return"  # D4RL's normalized return, x100
SUCCESS_RATE = "success_rate"  # fraction of episodes that reach the goal at any step
# Kitchen: mean fraction of the configured tasks in their goal state at an episode's last step (the Cal-QL authors'
# rewards[-1] / 4: nakamotoo/Cal-QL branch dev/add-kitchen, JaxCQL/conservative_sac_main.py)
TASKS_SOLVED = "tasks_solved"
TASKS_EVER_SOLVED = "tasks_ever_solved"  # Kitchen: mean fraction of the configured tasks completed at some step
EPISODE_LENGTH = "episode_length"
HEADLINE_METRICS = (SUCCESS_RATE, TASKS_SOLVED, NORMALIZED_RETURN, TASKS_EVER_SOLVED)

# Training diagnostics every agent reports (ActorCritic.q_metrics and the losses)
Q_DATA = "q_data"  # mean Q(s, a) on batch actions
Q_POLICY = "q_policy"  # mean Q(s, a ~ pi), as the critic gives it (for Cal-QL before its bound lifts it to V_ref)
V_REF = "v_ref"  # mean reference value V_ref(s) of the batch (Monte-Carlo return-to-go, or a learned value)
Q_DATA_MINUS_V_REF = "q_data_minus_v_ref"
# Batch means that are NaN, not diverged, when no row of the batch has a known V_ref yet (ActorCritic.q_metrics)
DATA_DEPENDENT = (V_REF, Q_DATA_MINUS_V_REF)
# Names these two had in stores written before the rename (the report reads either)
LEGACY_NAMES = {V_REF: "mc_return", Q_DATA_MINUS_V_REF: "q_data_minus_mc_return"}
CRITIC_LOSS = "critic_loss"
ACTOR_LOSS = "actor_loss"
TD_LOSS = "td_loss"  # the critics' mean squared TD error
TD_TARGET = "td_target"  # mean TD target
CALQL_BOUND_RATE = "calql_bound_rate"  # fraction of policy Q-values lifted to V_ref

# Calibration diagnostics on a fixed batch of offline transitions (stages/calibration.py), <phase>/calibration/<name>
Q_DATA_OVER_V_REF = "q_data_over_v_ref"
BELOW_V_REF = "below_v_ref"
BOUND_RATE = "bound_rate"
CALIBRATION_KEYS = (Q_DATA, Q_POLICY, V_REF, Q_DATA_OVER_V_REF, BELOW_V_REF, BOUND_RATE)

# A learned V_ref (o2o.reference) against the Monte-Carlo returns it stands in for, <phase>/reference/<name>:
# offline on the whole dataset after the fit (with the fit's loss curve, ``fit_loss``), online per finished episode
REFERENCE_KEYS = ("v_ref_mae", "v_ref_bias", "v_ref_rmse", "v_ref_corr")
FIT_LOSS = "fit_loss"  # offline/reference/fit_loss: the fit's loss per batch
# Intrinsic rewards during fine-tuning (o2o.exploration), online/train/<name>; the bonus as added to the reward
INTRINSIC_KEYS = ("intrinsic_reward_mean", "intrinsic_reward_std", "intrinsic_reward_max")

# Stage bookkeeping
UPDATES_PER_SECOND = "updates_per_second"
GRAD_STEPS = "grad_steps"
EPISODE_RETURN = "episode_return"
EPISODE_SUCCESS = "episode_success"

# Online run-level series and totals
# mean over training episodes so far of 1 - (share of the goal reached): 1 - success, Kitchen 1 - tasks solved / 4
CUMULATIVE_REGRET = "online/cumulative_regret"
EPISODES = "online/episodes"
ENV_STEPS = "online/env_steps"


def train(phase: str, name: str) -> str:
    return f"{phase}/train/{name}"


def evaluation(phase: str, name: str) -> str:
    return f"{phase}/eval/{name}"


def calibration(phase: str, name: str) -> str:
    return f"{phase}/calibration/{name}"


def reference(phase: str, name: str) -> str:
    return f"{phase}/reference/{name}"


def summary(phase: str, name: str) -> str:
    """A key of the run's final summary (what ``run`` returns)."""
    return f"{phase}/{name}"


def final(summary_key: str) -> str:
    """The MLflow name of a final-summary value."""
    return "final/" + summary_key.replace("/", "_")


def summary_of_final(name: str) -> str | None:
    """The summary key a ``final/`` MLflow name was logged for (its phase's prefix back as ``phase/``), or None for a
    name that is not one; a summary key holding more than one "/" reads back with "_" in place of the later ones."""
    if not name.startswith("final/"):
        return None
    key = name[len("final/"):]
    for phase in sorted((*PHASES, RETRAIN, ONLINE_RETRAINED), key=len, reverse=True):
        if key.startswith(phase + "_"):
            return summary(phase, key[len(phase) + 1:])
    return key
