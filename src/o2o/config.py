"""Typed schema behind the YAML groups in ``conf/``.

Hydra merges every YAML file into these dataclasses, so a wrong type or an
unknown key fails at composition time. Range checks live in each ``check`` method
and run when :func:`validate` turns the composed config into objects, before
any work starts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """A configuration value that cannot work; the message says how to fix it."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass
class DatasetConfig:
    # Minari dataset id (``D4RL/door/cloned-v2``) or, when ``path`` is set, a
    # D4RL-format HDF5 file.
    id: Optional[str] = None
    path: Optional[str] = None
    # Download a Minari dataset that is not found locally (needs network).
    download: bool = True
    # Name of a built-in collector that creates the dataset on first use.
    collector: Optional[str] = None
    collect_steps: int = 0
    collect_noise: float = 0.0
    collect_seed: int = 0

    def check(self) -> None:
        _require(bool(self.id) != bool(self.path),
                 "env.dataset: set exactly one of env.dataset.id (a Minari id) or env.dataset.path (a D4RL HDF5 file)")
        _require(self.collector is None or self.collect_steps > 0,
                 f"env.dataset.collect_steps must be > 0 when a collector is set, got {self.collect_steps}")
        _require(self.collect_noise >= 0, f"env.dataset.collect_noise must be >= 0, got {self.collect_noise}")


@dataclass
class RewardConfig:
    scale: float = 1.0
    bias: float = 0.0
    # Replace the env reward with -1 per step and 0 on task success (the
    # paper's Adroit setting); success steps become terminal.
    binary_from_success: bool = False


@dataclass
class EnvConfig:
    name: str = "???"
    gym_id: str = "???"
    gym_kwargs: Dict[str, Any] = field(default_factory=dict)
    # For dict observations: the keys concatenated, in this order, into the
    # flat observation the agent sees (the same for env and dataset).
    obs_keys: List[str] = field(default_factory=list)
    max_episode_steps: Optional[int] = None
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    # Sparse task: an episode whose every reward is the failure reward gets
    # fail_reward / (1 - gamma) as its return-to-go (fail_reward is raw, the
    # reward transform is applied to it).
    sparse: bool = False
    fail_reward: float = 0.0
    # D4RL reference scores for the normalized score; null = take them from
    # the dataset's metadata.
    ref_min_score: Optional[float] = None
    ref_max_score: Optional[float] = None
    # An episode counts as a success when the env's ``success`` info was true
    # for at least this many steps.
    success_steps: int = 1
    eval_episodes: int = 10

    def check(self) -> None:
        _require(self.reward.scale != 0, "env.reward.scale must be non-zero")
        _require(self.eval_episodes >= 0, f"env.eval_episodes must be >= 0, got {self.eval_episodes}")
        _require(self.success_steps >= 1, f"env.success_steps must be >= 1, got {self.success_steps}")
        _require(self.max_episode_steps is None or self.max_episode_steps > 0,
                 f"env.max_episode_steps must be > 0, got {self.max_episode_steps}")
        if self.ref_min_score is not None and self.ref_max_score is not None:
            _require(self.ref_max_score > self.ref_min_score,
                     f"env.ref_max_score ({self.ref_max_score}) must exceed env.ref_min_score ({self.ref_min_score})")


ALGORITHMS = ("calql", "cql", "iql", "sac", "rlpd")


@dataclass
class AlgoConfig:
    name: str = "calql"
    gamma: float = 0.99
    # Which stages and data the algorithm uses
    pretrain: bool = True  # offline pre-training before fine-tuning
    offline_data: bool = True  # offline data in the fine-tuning batches
    mixing_ratio: Optional[float] = None  # overrides buffer.mixing_ratio (rlpd: 0.5)
    utd_ratio: Optional[int] = None  # overrides schedule.utd_ratio (rlpd: 20)
    random_steps: int = 0  # uniform random actions for the first online env steps
    # Critic ensemble
    ensemble_size: int = 2
    target_subset: Optional[int] = None  # min over a random subset of target critics (rlpd: 2); null = all
    layer_norm: bool = False
    actor_q: str = "min"  # how the actor's loss reduces the ensemble: min | mean
    actor_update_interval: int = 1  # actor and temperature step every N critic steps
    # Networks and optimisation
    actor_hidden: List[int] = field(default_factory=lambda: [256, 256])
    critic_hidden: List[int] = field(default_factory=lambda: [256, 256, 256])
    orthogonal_init: bool = True
    actor_lr: float = 1e-4
    critic_lr: float = 3e-4
    tau: float = 5e-3
    # SAC entropy
    auto_entropy: bool = True
    init_alpha: float = 1.0
    target_entropy: Optional[float] = None  # null = -|A|
    backup_entropy: bool = False
    # CQL
    cql_weight: float = 5.0
    lagrange: bool = False
    target_action_gap: float = 0.8
    importance_sampling: bool = True
    temperature: float = 1.0
    n_actions: int = 10
    max_target_backup: bool = True
    # Cal-QL: bound policy-action Q-values by the reference return, per phase
    calibrate_offline: bool = True
    calibrate_online: bool = True
    # IQL
    expectile: float = 0.7
    awr_temperature: float = 3.0
    awr_max_weight: float = 100.0

    def check(self) -> None:
        _require(self.name in ALGORITHMS, f"algo.name must be one of {', '.join(ALGORITHMS)}, got {self.name!r}")
        _require(0 < self.gamma < 1, f"algo.gamma must be in (0, 1), got {self.gamma}")
        _require(all(w > 0 for w in self.actor_hidden + self.critic_hidden) and self.critic_hidden and self.actor_hidden,
                 "algo.actor_hidden and algo.critic_hidden must be non-empty lists of positive widths")
        for key in ("actor_lr", "critic_lr", "init_alpha", "temperature"):
            _require(getattr(self, key) > 0, f"algo.{key} must be > 0, got {getattr(self, key)}")
        _require(0 < self.tau <= 1, f"algo.tau must be in (0, 1], got {self.tau}")
        _require(self.cql_weight >= 0, f"algo.cql_weight must be >= 0, got {self.cql_weight}")
        _require(self.n_actions >= 1, f"algo.n_actions must be >= 1, got {self.n_actions}")
        _require(self.ensemble_size >= 1, f"algo.ensemble_size must be >= 1, got {self.ensemble_size}")
        _require(self.target_subset is None or 1 <= self.target_subset <= self.ensemble_size,
                 f"algo.target_subset must be in [1, algo.ensemble_size={self.ensemble_size}], got {self.target_subset}")
        _require(self.actor_q in ("min", "mean"), f"algo.actor_q must be min or mean, got {self.actor_q!r}")
        _require(self.actor_update_interval >= 1,
                 f"algo.actor_update_interval must be >= 1, got {self.actor_update_interval}")
        _require(0 < self.expectile < 1, f"algo.expectile must be in (0, 1), got {self.expectile}")
        _require(self.awr_temperature >= 0, f"algo.awr_temperature must be >= 0, got {self.awr_temperature}")
        _require(self.random_steps >= 0, f"algo.random_steps must be >= 0, got {self.random_steps}")
        _require(self.mixing_ratio is None or self.mixing_ratio == -1 or 0 <= self.mixing_ratio <= 1,
                 f"algo.mixing_ratio must be null, -1 or in [0, 1], got {self.mixing_ratio}")
        _require(self.utd_ratio is None or self.utd_ratio >= 1, f"algo.utd_ratio must be >= 1, got {self.utd_ratio}")
        _require(self.pretrain <= self.offline_data, "algo.pretrain needs algo.offline_data: true")

    @property
    def calibrated(self) -> bool:
        return self.name == "calql"


@dataclass
class BufferConfig:
    online_capacity: int = 1_000_000
    batch_size: int = 256
    # Fraction of each batch drawn from the offline data; -1 = proportional
    # to the two buffers' sizes.
    mixing_ratio: float = 0.5

    def check(self) -> None:
        _require(self.online_capacity > 0, f"buffer.online_capacity must be > 0, got {self.online_capacity}")
        _require(self.batch_size > 0, f"buffer.batch_size must be > 0, got {self.batch_size}")
        _require(self.mixing_ratio == -1 or 0 <= self.mixing_ratio <= 1,
                 f"buffer.mixing_ratio must be in [0, 1] or -1 (proportional), got {self.mixing_ratio}")


@dataclass
class ScheduleConfig:
    offline_steps: int = 1_000_000
    online_steps: int = 1_000_000
    # Gradient steps per collected env step during fine-tuning.
    utd_ratio: int = 1
    eval_interval_offline: int = 10_000  # gradient steps; 0 = only at the end
    eval_interval_online: int = 2_000  # env steps; 0 = only at the end
    checkpoint_interval: int = 50_000  # gradient steps; 0 = only the final one
    log_interval: int = 1_000  # gradient steps between metric flushes

    def check(self) -> None:
        for key in ("offline_steps", "online_steps", "eval_interval_offline", "eval_interval_online",
                    "checkpoint_interval"):
            _require(getattr(self, key) >= 0, f"schedule.{key} must be >= 0, got {getattr(self, key)}")
        _require(self.utd_ratio >= 1, f"schedule.utd_ratio must be >= 1, got {self.utd_ratio}")
        _require(self.log_interval >= 1, f"schedule.log_interval must be >= 1, got {self.log_interval}")


@dataclass
class Config:
    env: EnvConfig = field(default_factory=EnvConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    buffer: BufferConfig = field(default_factory=BufferConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    experiment: str = "o2o"  # MLflow experiment name
    run_name: Optional[str] = None
    progress: bool = True

    def check(self) -> None:
        for part in (self.env.dataset, self.env, self.algo, self.buffer, self.schedule):
            part.check()
        _require(self.precision in ("fp32", "bf16"), f"precision must be fp32 or bf16, got {self.precision!r}")
        _require(self.threads >= 0, f"threads must be >= 0, got {self.threads}")
        _require(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
                 f"device must be auto, cpu or cuda[:N], got {self.device!r}")
        _require(self.env.eval_episodes > 0 or not self._evaluates(),
                 "env.eval_episodes is 0 but evaluation is scheduled; set env.eval_episodes >= 1")

    def _evaluates(self) -> bool:
        return self.schedule.offline_steps > 0 or self.schedule.online_steps > 0

    @property
    def mixing_ratio(self) -> float:
        """Offline share of fine-tuning batches: 0 without offline data, else the algo's or the buffer's."""
        if not self.algo.offline_data:
            return 0.0
        return self.buffer.mixing_ratio if self.algo.mixing_ratio is None else self.algo.mixing_ratio

    @property
    def utd_ratio(self) -> int:
        return self.schedule.utd_ratio if self.algo.utd_ratio is None else self.algo.utd_ratio


def register_schema() -> None:
    """Make ``config_schema`` available to ``conf/config.yaml``'s defaults."""
    ConfigStore.instance().store(name="config_schema", node=Config)


def validate(cfg: DictConfig) -> Config:
    """Turn a composed config into checked objects; raise ConfigError on a bad value."""
    try:
        config = OmegaConf.to_object(cfg)
    except Exception as err:  # missing mandatory values, failed interpolations
        raise ConfigError(str(err).splitlines()[0]) from err
    config.check()
    return config
