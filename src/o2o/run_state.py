"""What a checkpoint holds, typed: the run's identity, the agent, and each stage's progress.

Checkpoints store :meth:`RunState.to_dict` (plain dicts and tensors), so
they load without these classes; :meth:`RunState.from_dict` reads them back.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Optional

OFFLINE_STAGE, ONLINE_STAGE, RETRAIN_STAGE, FINAL_STAGE = "offline", "online", "retrain", "final"  # o2o.metrics' phases
NOT_RECORDED = "not recorded"  # RunState.machines of parts that ran before runs recorded their machine
MACHINES_TAG = "machines"  # the MLflow tag that holds RunState.machines, joined by "; "


def _shallow_dict(obj) -> dict:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


@dataclass
class OfflineProgress:
    step: int = 0  # gradient steps taken
    averager: Optional[dict] = None  # MetricAverager.state() since the last log
    results: dict = field(default_factory=dict)  # the latest evaluation
    bonus: Optional[dict] = None  # the intrinsic reward's state, when it acts from pre-training (OOO's RND)


@dataclass
class OnlineProgress:
    env_steps: int = 0
    episodes: int = 0
    regret_sum: float = 0.0  # sum over training episodes of 1 - Episode.score (regret = regret_sum / episodes)
    pending_updates: int = 0  # gradient steps still owed to the collected env steps
    last_log_step: int = 0
    updates_since_log: int = 0
    next_eval: int = 0
    next_checkpoint: int = 0
    results: dict = field(default_factory=dict)  # the latest evaluation
    averager: Optional[dict] = None
    buffer: Optional[dict] = None  # TransitionBuffer.state() of the online buffer
    bonus: Optional[dict] = None  # the intrinsic reward's state (o2o.exploration), when fine-tuning explores with one
    reference: Optional[dict] = None  # a reference's online state (reference=quantile: the online episodes' returns)
    next_retrain: int = 0  # env step of the next retraining during fine-tuning (retrain.interval), 0: none
    # exploration.target_bounds widened by the online rewards so far, [min, max] (None: that side open); only widens
    reward_range: Optional[list] = None

    @property
    def regret(self) -> float:
        return self.regret_sum / max(self.episodes, 1)


@dataclass
class RunState:
    config: dict  # the resolved config the run was started with
    run_id: str  # MLflow run id
    # what the agent computes in (runtime.choose_precision), chosen when the run starts: a resumed run keeps it, also
    # on a machine whose own choice would differ, so that one run's numbers never mix fp32 and bf16
    precision: Optional[str] = None
    # the machines its parts ran on (runtime.machine), in order; NOT_RECORDED first for a run whose earlier parts
    # ran before runs recorded it: a study's page names them (a study may span sessions and machines)
    machines: list = field(default_factory=list)
    stage: str = OFFLINE_STAGE  # the stage the checkpoint was taken in, or "final"
    agent: Optional[dict] = None  # ActorCritic.checkpoint()
    rng: Optional[dict] = None  # checkpoints.capture_rng()
    eval_history: list = field(default_factory=list)
    offline: Optional[OfflineProgress] = None
    online: Optional[OnlineProgress] = None
    retrain: Optional[OfflineProgress] = None  # offline retraining after fine-tuning (stages/retrain.py)
    finetuned_agent: Optional[dict] = None  # the fine-tuned agent, kept while a fresh one retrains
    retrained_agent: Optional[dict] = None  # the retrained agent, once retraining is done
    offline_final: dict = field(default_factory=dict)  # the offline stage's summary, kept through fine-tuning
    online_final: dict = field(default_factory=dict)  # the online stage's summary, kept through retraining
    final: dict = field(default_factory=dict)  # the run's summary, once finished

    def to_dict(self) -> dict[str, Any]:
        out = _shallow_dict(self)
        for key in ("offline", "online", "retrain"):
            if out[key] is not None:
                out[key] = _shallow_dict(out[key])
        return out

    @classmethod
    def from_dict(cls, payload: dict) -> "RunState":
        state = cls(**{f.name: payload[f.name] for f in fields(cls) if f.name in payload})
        if isinstance(state.offline, dict):
            state.offline = OfflineProgress(**state.offline)
        if isinstance(state.online, dict):
            state.online = OnlineProgress(**state.online)
        if isinstance(state.retrain, dict):
            state.retrain = OfflineProgress(**state.retrain)
        return state

    @property
    def finished(self) -> bool:
        return self.stage == FINAL_STAGE


def add_machine(state: RunState, here: str, resumed: bool) -> str:
    """Record this part's machine in ``state.machines`` (once per machine); the value of :data:`MACHINES_TAG`."""
    if resumed and not state.machines:  # a checkpoint from before runs recorded their machine
        state.machines.append(NOT_RECORDED)
    if here not in state.machines:
        state.machines.append(here)
    return "; ".join(state.machines)
