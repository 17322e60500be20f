"""Typed schema behind the YAML groups in ``conf/``.

The schema holds types and ranges; the YAML holds every value. A field here
has no default except ``None`` ("not set") or an empty container, so a value
is written in exactly one place (``tests/test_config.py`` checks this).
Hydra merges the YAML into these dataclasses, so a wrong type or an unknown
key fails at composition; the ``check`` methods run in :func:`validate`,
before any work.

Who owns what:

- ``env``: the task (Gymnasium id and kwargs, observation layout, horizon,
  dataset, reference scores).
- ``domain``: facts every algorithm reads for a family of tasks (reward
  transform, sparse failure rule, evaluation episodes, the paper's metric),
  chosen by the env.
- ``algo``: :class:`AlgoConfig`, extended by each algorithm family's schema in
  its agent file (``o2o.agents.registry``); per-domain values, where an
  algorithm's authors have them, in ``conf/algo/per_domain/<algo>/<domain>.yaml``.
  It owns how fine-tuning uses data (mixing ratio, UTD ratio, warm-up).
- ``buffer``: online capacity and batch size.
- ``schedule``: step budgets and intervals; the env picks its paper budget.
- ``experiment``: named presets that may set any group (smoke, studies).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from o2o import metrics as M
from o2o.errors import ConfigError


def require(condition: bool, message: str) -> None:
    """A schema's ``check``: stop with ``message`` (one line, what to do) unless ``condition`` holds."""
    if not condition:
        raise ConfigError(message)


@dataclass
class CollectorConfig:
    """A built-in collector that creates the dataset on first use."""

    name: str = MISSING
    steps: int = MISSING
    noise: float = MISSING
    seed: int = MISSING

    def check(self) -> None:
        require(self.steps > 0, f"env.dataset.collector.steps must be > 0, got {self.steps}")
        require(self.noise >= 0, f"env.dataset.collector.noise must be >= 0, got {self.noise}")


@dataclass
class DatasetConfig:
    # A Minari dataset id (``D4RL/door/cloned-v2``), or a path: a D4RL-format HDF5 file, or a folder of AWAC's Adroit
    # files (o2o.data.awac, the Cal-QL paper's data): exactly one.
    id: Optional[str] = None
    path: Optional[str] = None
    # An OGBench dataset name (``cube-single-play-v0``): its file in OGBench's folder (o2o.data.ogbench), built by
    # ``o2o-data build-ogbench`` or downloaded
    ogbench: Optional[str] = None
    download: bool = MISSING  # fetch a Minari or OGBench dataset that is not local (needs network)
    collector: Optional[CollectorConfig] = None

    def check(self) -> None:
        require(not (self.id and self.path),
                f"env.dataset.path and env.dataset.id={self.id} are both set, and a run reads one dataset: add "
                "env.dataset.id=null to read the file")
        require(not (self.ogbench and (self.id or self.path)),
                f"env.dataset.ogbench={self.ogbench} and env.dataset.{'id' if self.id else 'path'} are both set, and a "
                "run reads one dataset: set the other to null")
        require(bool(self.ogbench) or bool(self.id) != bool(self.path),
                 "env.dataset: set exactly one of env.dataset.id (a Minari id), env.dataset.path (a D4RL HDF5 file, an "
                 "OGBench .npz file, or a folder of AWAC's Adroit files) or env.dataset.ogbench (an OGBench name)")
        if self.id:
            from minari.dataset.minari_dataset import DATASET_ID_RE

            require(DATASET_ID_RE.fullmatch(self.id) is not None,
                    f"env.dataset.id={self.id!r} is not a Minari id: namespace/name-vN, e.g. D4RL/door/cloned-v2")
        if self.collector is not None:
            self.collector.check()


@dataclass
class EnvConfig:
    name: str = MISSING
    gym_id: str = MISSING
    gym_kwargs: Dict[str, Any] = field(default_factory=dict)
    # For dict observations: the keys concatenated, in this order, into the
    # flat observation the agent sees (the same for env and dataset).
    obs_keys: List[str] = field(default_factory=list)
    max_episode_steps: Optional[int] = None
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    # D4RL reference scores for the normalized return; None = the dataset's metadata.
    ref_min_score: Optional[float] = None
    ref_max_score: Optional[float] = None
    # Added to every reward, the env's and the dataset's alike (before any algorithm's reward transform): a task
    # whose paper scores another reward than the env's (visual_pick_place: +1 at success, 0 otherwise)
    reward_shift: Optional[float] = None

    def check(self) -> None:
        require(self.max_episode_steps is None or self.max_episode_steps > 0,
                 f"env.max_episode_steps must be > 0, got {self.max_episode_steps}")
        if self.ref_min_score is not None and self.ref_max_score is not None:
            require(self.ref_max_score > self.ref_min_score,
                     f"env.ref_max_score ({self.ref_max_score}) must exceed env.ref_min_score ({self.ref_min_score})")
        self.dataset.check()


@dataclass
class DomainConfig:
    name: str = MISSING
    # Replace the env reward with -1 per step and 0 on task success (the
    # paper's Adroit setting); offline, success steps become terminal.
    binary_from_success: bool = MISSING
    # Sparse task: an episode whose every reward is the failure reward gets
    # fail_reward / (1 - gamma) as its return-to-go (fail_reward is raw; the
    # algorithm's reward transform is applied to it).
    sparse: bool = MISSING
    fail_reward: float = MISSING
    # The first success ends an episode, in training and evaluation (the authors' Adroit sampler;
    # D4RL's AntMaze evaluation env), whatever the env itself does after it.
    end_on_success: bool = MISSING
    eval_episodes: int = MISSING
    # The paper's score for this domain (one of o2o.metrics.HEADLINE_METRICS): the headline of the
    # run's summary, the report and the sweep's objective. ``extra_metrics``: the others that mean
    # something here, logged beside it.
    metric: str = MISSING
    extra_metrics: List[str] = field(default_factory=list)
    # Returns-to-go bootstrap r_T / (1 - gamma) after an episode end that is not a terminal (the Cal-QL code's
    # calc_return_to_go with infinite_horizon=True in OOO's fork, OOO_for_calql/replay_buffer.py: Kitchen, whose
    # episodes never terminate)
    infinite_horizon: bool = MISSING

    def check(self) -> None:
        for name in (self.metric, *self.extra_metrics):
            require(name in M.HEADLINE_METRICS,
                     f"domain metric {name!r} is not one of {', '.join(M.HEADLINE_METRICS)}")
        require(self.eval_episodes >= 1, f"domain.eval_episodes must be >= 1, got {self.eval_episodes}")


@dataclass
class AlgoConfig:
    """What every algorithm on the shared actor-critic core (``o2o.agents.core``) reads."""

    name: str = MISSING
    gamma: float = MISSING
    pretrain: bool = MISSING  # offline pre-training before fine-tuning
    # Offline share of each fine-tuning batch: 0 = online data only (the
    # offline data is then not loaded unless pre-training needs it), -1 =
    # proportional to the two buffers' sizes.
    mixing_ratio: float = MISSING
    utd_ratio: int = MISSING  # gradient steps per collected env step
    # Fine-tuning schedule: ``episode`` = collect an episode, then len(episode) * utd_ratio updates (the
    # Cal-QL authors'); ``step`` = an update block of utd_ratio updates after every env step (RLPD, SAC, IQL).
    update_schedule: str = MISSING
    warmup_steps: int = MISSING  # first online env steps: no updates (RLPD's start_training, WSRL's warmup_steps)
    warmup_actions: str = MISSING  # what acts during them: random (uniform; RLPD, SAC) | policy (the pre-trained; WSRL)
    # The reward the learner sees, r * reward_scale + reward_bias, before returns-to-go: each
    # algorithm's authors have their own per domain (per_domain/<algo>/<domain>.yaml)
    reward_scale: float = MISSING
    reward_bias: float = MISSING
    # Critic ensemble
    ensemble_size: int = MISSING
    target_subset: Optional[int] = None  # min over a random subset of target critics; None = all
    layer_norm: bool = MISSING
    actor_update_interval: int = MISSING  # actor and temperature step every N critic steps
    # Networks and optimisation
    actor_hidden: List[int] = MISSING
    critic_hidden: List[int] = MISSING
    orthogonal_init: bool = MISSING
    actor_lr: float = MISSING
    critic_lr: float = MISSING
    tau: float = MISSING

    @property
    def uses_offline_data(self) -> bool:
        return self.pretrain or self.mixing_ratio != 0

    @property
    def reads_next_actions(self) -> bool:
        """Whether the losses read the data's action at the next state (``Batch.next_actions``; ReBRAC's critic
        penalty): the buffers keep it only then."""
        return False

    def conservative_retraining(self) -> "AlgoConfig | None":
        """The config of OOO's offline retraining with CQL (``retrain.algorithm=cql``): this algorithm's settings
        as CQL without calibration; None for an algorithm that has no CQL settings."""
        return None

    def check(self) -> None:
        require(0 < self.gamma < 1, f"algo.gamma must be in (0, 1), got {self.gamma}")
        require(all(w > 0 for w in self.actor_hidden + self.critic_hidden) and self.critic_hidden and self.actor_hidden,
                 "algo.actor_hidden and algo.critic_hidden must be non-empty lists of positive widths")
        for key in ("actor_lr", "critic_lr"):
            require(getattr(self, key) > 0, f"algo.{key} must be > 0, got {getattr(self, key)}")
        require(0 < self.tau <= 1, f"algo.tau must be in (0, 1], got {self.tau}")
        require(self.reward_scale != 0, "algo.reward_scale must be non-zero")
        require(self.ensemble_size >= 1, f"algo.ensemble_size must be >= 1, got {self.ensemble_size}")
        require(self.target_subset is None or 1 <= self.target_subset <= self.ensemble_size,
                 f"algo.target_subset must be in [1, algo.ensemble_size={self.ensemble_size}], got {self.target_subset}")
        require(self.actor_update_interval >= 1,
                 f"algo.actor_update_interval must be >= 1, got {self.actor_update_interval}")
        require(self.warmup_steps >= 0, f"algo.warmup_steps must be >= 0, got {self.warmup_steps}")
        require(self.warmup_actions in ("random", "policy"),
                 f"algo.warmup_actions must be random or policy, got {self.warmup_actions!r}")
        require(self.update_schedule in ("episode", "step"),
                 f"algo.update_schedule must be episode or step, got {self.update_schedule!r}")
        require(self.mixing_ratio == -1 or 0 <= self.mixing_ratio <= 1,
                 f"algo.mixing_ratio must be in [0, 1] or -1 (proportional), got {self.mixing_ratio}")
        require(self.utd_ratio >= 1, f"algo.utd_ratio must be >= 1, got {self.utd_ratio}")


@dataclass
class BufferConfig:
    online_capacity: int = MISSING
    batch_size: int = MISSING

    def check(self) -> None:
        require(self.online_capacity > 0, f"buffer.online_capacity must be > 0, got {self.online_capacity}")
        require(self.batch_size > 0, f"buffer.batch_size must be > 0, got {self.batch_size}")


@dataclass
class EncoderConfig:
    """The image encoder in front of each network, and the training batches' augmentation (o2o.agents.encoders).
    ``name: none`` for state observations; an env option with image observations picks one."""

    name: str = MISSING  # none | impala_small
    stack_sizes: List[int] = field(default_factory=list)  # convolution widths, one stack each
    num_blocks: int = MISSING  # residual blocks per stack
    mlp_hidden: List[int] = field(default_factory=list)  # GELU layers after the convolutions: the features' width
    augment_pad: int = MISSING  # random crop after padding this many edge pixels; 0: no augmentation
    augment_probability: float = MISSING  # the chance that a training batch is augmented (OGBench's p_aug)

    def check(self) -> None:
        require(self.name in ("none", "impala_small"), f"encoder must be none or impala_small, got {self.name!r}")
        if self.name == "none":
            return
        require(bool(self.stack_sizes) and all(w > 0 for w in self.stack_sizes),
                f"encoder.stack_sizes must be positive widths, got {list(self.stack_sizes)}")
        require(self.num_blocks >= 0, f"encoder.num_blocks must be >= 0, got {self.num_blocks}")
        require(all(w > 0 for w in self.mlp_hidden), f"encoder.mlp_hidden must be positive, got {list(self.mlp_hidden)}")
        require(self.augment_pad >= 0, f"encoder.augment_pad must be >= 0, got {self.augment_pad}")
        require(0.0 <= self.augment_probability <= 1.0,
                f"encoder.augment_probability must be in [0, 1], got {self.augment_probability}")


MAX_STEPS = 10**9  # a bound on step counts, far above any schedule a study runs; beyond it a run never ends


@dataclass
class ScheduleConfig:
    offline_steps: int = MISSING  # gradient steps
    online_steps: int = MISSING  # env steps
    eval_interval_offline: int = MISSING  # gradient steps; 0 = only at the end
    eval_interval_online: int = MISSING  # env steps; 0 = only at the end
    checkpoint_interval: int = MISSING  # gradient steps; 0 = only the final one
    log_interval: int = MISSING  # gradient steps (offline) or env steps (online) between metric flushes

    def check(self) -> None:
        for key in ("offline_steps", "online_steps", "eval_interval_offline", "eval_interval_online",
                    "checkpoint_interval"):
            require(getattr(self, key) >= 0, f"schedule.{key} must be >= 0, got {getattr(self, key)}")
        for key in ("offline_steps", "online_steps"):
            require(getattr(self, key) <= MAX_STEPS,
                    f"schedule.{key}={getattr(self, key):.3g} is more than 1e9 steps, a run that cannot "
                    "end (the paper's longest schedule is 1.5e6 env steps): give a count you mean to run")
        require(self.log_interval >= 1, f"schedule.log_interval must be >= 1, got {self.log_interval}")


REFERENCE_SOURCES = ("mc", "regression", "td", "quantile")  # where V_ref comes from (o2o.reference)
EXPLORATION_BONUSES = ("none", "rnd", "qknn")  # intrinsic rewards while fine-tuning (o2o.exploration)
# SERA (Zhang et al., arXiv 2310.19805) could not be traced to its paper here (issue 27): its name is refused
UNTRACED_BONUSES = {"sera": "SERA's estimator, neighbour set and coefficients could not be traced to its paper "
                            "(arXiv 2310.19805), so no switch carries its name: exploration=qknn is this project's "
                            "Q-conditioned k-NN state-entropy bonus (o2o.exploration), set exploration.coef"}


@dataclass
class ReferenceConfig:
    """Where Cal-QL's V_ref(s) comes from (o2o.reference): ``mc``, the data's returns-to-go, or a fitted value."""

    value: str = MISSING  # mc | regression | td | quantile
    # the fit of a learned value (regression, td): set by those options, absent for mc
    fit_steps: Optional[int] = None  # gradient steps
    hidden: List[int] = field(default_factory=list)
    lr: Optional[float] = None
    batch_size: Optional[int] = None
    target_rate: Optional[float] = None  # td: Polyak rate of the target network
    tau: Optional[float] = None  # quantile: which quantile of the episodes' returns is the one threshold (rlox's)

    def check(self) -> None:
        require(self.value in REFERENCE_SOURCES,
                 f"reference.value must be one of {', '.join(REFERENCE_SOURCES)}, got {self.value!r}")
        if self.value == "quantile":
            require(self.tau is not None and 0 <= self.tau <= 1,
                     f"reference=quantile needs reference.tau in [0, 1], got {self.tau}")
        elif self.value != "mc":
            for key in ("fit_steps", "batch_size", "lr"):
                require((getattr(self, key) or 0) > 0,
                         f"reference={self.value} needs reference.{key} > 0, got {getattr(self, key)}")
            require(bool(self.hidden) and all(w > 0 for w in self.hidden),
                     f"reference={self.value} needs reference.hidden, a non-empty list of positive widths, got "
                     f"{list(self.hidden)}")
            require(self.value != "td" or 0 < (self.target_rate or 0) <= 1,
                     f"reference.target_rate must be in (0, 1], got {self.target_rate}")


@dataclass
class ExplorationConfig:
    """An intrinsic reward added during fine-tuning (o2o.exploration): ``none``, ``rnd`` (OOO) or ``qknn``."""

    bonus: str = MISSING  # none | rnd | qknn
    coef: Optional[float] = None  # r + coef * bonus
    rnd_hidden: List[int] = field(default_factory=list)
    rnd_lr: Optional[float] = None
    rnd_update_proportion: Optional[float] = None  # the share of each batch the RND predictor trains on
    # rnd: whether the predictor and the running statistics learn (rnd_trained) or stay as initialised, as in OOO's
    # published runs (rnd; o2o.exploration)
    rnd_trains: Optional[bool] = None
    knn_k: Optional[int] = None  # qknn: the neighbour whose distance is the particle estimate
    pretraining: Optional[bool] = None  # the bonus from the first pre-training step (OOO's RND), not from fine-tuning
    # The exploring run's TD target bounded by [min, max] / (1 - gamma), in the learner's rewards (null: that side
    # unbounded), from the first pre-training step, each side widened by the rewards of every online episode (OOO's
    # --cql.bound_q_functions with --cql.min_reward / --cql.max_reward); null: unbounded
    target_bounds: Optional[List[Optional[float]]] = None
    # Every training batch's transitions terminal exactly where the learner's reward equals this (OOO's Kitchen rule,
    # batch["dones"] = rewards == 0); null: the data's and the env's terminals
    terminal_reward: Optional[float] = None

    def check(self) -> None:
        require(self.bonus not in UNTRACED_BONUSES, f"exploration={self.bonus}: {UNTRACED_BONUSES.get(self.bonus)}")
        require(self.bonus in EXPLORATION_BONUSES,
                 f"exploration.bonus must be one of {', '.join(EXPLORATION_BONUSES)}, got {self.bonus!r}")
        if self.bonus != "none":
            require((self.coef or 0) > 0, f"exploration={self.bonus} needs exploration.coef > 0, got {self.coef}")
            require(self.pretraining is not None, f"exploration={self.bonus} needs exploration.pretraining")
        if self.bonus == "rnd":
            require(bool(self.rnd_hidden) and all(w > 0 for w in self.rnd_hidden),
                     f"exploration=rnd needs exploration.rnd_hidden, a non-empty list of positive widths, got "
                     f"{list(self.rnd_hidden)}")
            require((self.rnd_lr or 0) > 0, f"exploration=rnd needs exploration.rnd_lr > 0, got {self.rnd_lr}")
            require(0 < (self.rnd_update_proportion or 0) <= 1,
                     f"exploration.rnd_update_proportion must be in (0, 1], got {self.rnd_update_proportion}")
            require(self.rnd_trains is not None, "exploration=rnd needs exploration.rnd_trains (true or false)")
        if self.bonus == "qknn":
            require((self.knn_k or 0) >= 1, f"exploration.knn_k must be >= 1, got {self.knn_k}")
        if self.target_bounds is not None:
            low, high = [*self.target_bounds, None, None][:2]
            require(len(self.target_bounds) == 2 and (low is None or high is None or low < high),
                     f"exploration.target_bounds must be [min, max] with min < max (null: unbounded), got "
                     f"{list(self.target_bounds)}")


@dataclass
class RetrainConfig:
    """Offline retraining after fine-tuning (stages/retrain.py, OOO): 0 steps is off."""

    steps: int = MISSING  # gradient steps of a fresh agent on offline + online data
    mixing_ratio: float = MISSING  # offline share of its batches; -1: in proportion (uniform over all data)
    interval: int = MISSING  # env steps between retrainings during fine-tuning as well (0: only at the end)
    algorithm: str = MISSING  # cql: CQL without calibration (OOO's enable_calql=False) | run: the run's own
    clip_targets: bool = MISSING  # target Q within [min r, max r] / (1 - gamma) of the data (OOO's bound)
    # The critics' last hidden features scaled to unit length (OOO's model.py has the switch; their runs leave it off)
    feature_normalization: bool = MISSING
    eval_episodes: int = MISSING  # episodes per evaluation of the retrained agent
    # Transitions of the online buffer at its highest reward added to every batch, this many (OOO's
    # --upsample_batch_size); 0: none
    upsample_batch: int = MISSING
    # The retrained agent's reward bias in place of the run's algo.reward_bias (OOO's Kitchen retraining: -4, where
    # its exploration used -5); null: the run's
    reward_bias: Optional[float] = None
    # As exploration.terminal_reward, for the retrained agent's batches (OOO's Kitchen retraining)
    terminal_reward: Optional[float] = None

    @property
    def with_cql(self) -> bool:
        """OOO's retraining: CQL on the run's CQL settings, calibration off (AlgoConfig.conservative_retraining)."""
        return self.algorithm == "cql"

    def check(self) -> None:
        require(self.steps >= 0, f"retrain.steps must be >= 0, got {self.steps}")
        require(self.algorithm in ("cql", "run"), f"retrain.algorithm must be cql or run, got {self.algorithm!r}")
        require(self.eval_episodes >= 1, f"retrain.eval_episodes must be >= 1, got {self.eval_episodes}")
        require(self.interval >= 0, f"retrain.interval must be >= 0, got {self.interval}")
        require(not self.interval or self.steps > 0, "retrain.interval needs retrain.steps > 0 (retrain=ooo)")
        require(self.mixing_ratio == -1 or 0 <= self.mixing_ratio <= 1,
                 f"retrain.mixing_ratio must be in [0, 1] or -1 (proportional), got {self.mixing_ratio}")
        require(self.upsample_batch >= 0, f"retrain.upsample_batch must be >= 0, got {self.upsample_batch}")
        require(self.reward_bias is None or self.with_cql,
                 "retrain.reward_bias relabels the rewards of a CQL retraining (retrain.algorithm=cql); the run's own "
                 "algorithm (retrain.algorithm=run) reads reference values computed with the run's rewards")


@dataclass
class MlflowConfig:
    """What each run records in MLflow beyond params and metrics (the experiment is ``mlflow_experiment``)."""

    log_models: bool = MISSING  # the pre-trained and final policies as pyfunc models (observation in, action out)
    registered_model: Optional[str] = None  # register the final policy under this name in the model registry
    system_metrics: bool = MISSING  # MLflow's own CPU, memory, disk, network and GPU sampling
    system_metrics_interval_s: float = MISSING

    def check(self) -> None:
        # at least a second: MLflow's monitor sends one request per sample (samples_before_logging=1), so 1e-4 s
        # would send about 10,000 a second to the store; MLflow's own default is 10 s
        require(self.system_metrics_interval_s >= 1,
                 f"mlflow.system_metrics_interval_s must be >= 1 (seconds), got {self.system_metrics_interval_s}")
        require(self.registered_model is None or (self.log_models and bool(self.registered_model.strip())),
                 "mlflow.registered_model needs mlflow.log_models=true and a non-empty name")
        # MLflow's rule (mlflow.utils.validation._validate_model_name), checked before the run trains, not after
        require(self.registered_model is None or not any(c in self.registered_model for c in "/:"),
                f"mlflow.registered_model={self.registered_model!r}: MLflow's model names cannot contain '/' or ':'")
        require(self.registered_model is None or len(self.registered_model) <= MAX_MODEL_NAME,
                f"mlflow.registered_model is {len(self.registered_model or '')} characters; MLflow's store keeps at "
                f"most {MAX_MODEL_NAME}")
        require(self.registered_model is None or self.registered_model.isprintable(),
                f"mlflow.registered_model={self.registered_model!r} holds a control character (a newline?): "
                "give a printable name")


@dataclass
class Config:
    env: EnvConfig = field(default_factory=EnvConfig)
    domain: DomainConfig = field(default_factory=DomainConfig)
    algo: AlgoConfig = MISSING  # a registered algorithm's schema (o2o.agents.registry), installed by the algo's YAML
    buffer: BufferConfig = field(default_factory=BufferConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)  # image observations: the env option sets it
    seed: int = MISSING
    device: str = MISSING  # auto | cpu | cuda | cuda:N
    precision: str = MISSING  # auto | fp32 | bf16 (autocast); auto: o2o.runtime.choose_precision
    threads: int = MISSING  # torch intra-op threads; 0 = chosen by o2o.runtime.choose_threads
    # auto | true | false: the whole update as one torch.compile graph, CUDA graphs on GPUs (o2o.agents.compiled);
    # auto: where a compiler is present and the planned updates repay compiling (o2o.runtime.choose_compile)
    compile: str = MISSING
    mlflow_experiment: str = MISSING
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    exploration: ExplorationConfig = field(default_factory=ExplorationConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    run_name: Optional[str] = None
    progress: bool = MISSING
    # Stop at the first non-finite loss (checked at every log flush) or parameter (before every checkpoint)
    divergence_guard: bool = MISSING
    calibration_batch: int = MISSING  # offline transitions in the fixed batch of the calibration diagnostics; 0: off

    def check(self) -> None:
        for part in (self.env, self.domain, self.algo, self.buffer, self.schedule, self.encoder, self.mlflow,
                     self.reference, self.exploration, self.retrain):
            part.check()
        require(self.reference.value == "mc" or self.algo.uses_offline_data,
                 f"reference={self.reference.value} fits V_ref on the offline data, which {self.algo.name} does not read")
        pixels = self.encoder.name != "none"
        require(not pixels or self.reference.value in ("mc", "quantile"),
                f"reference={self.reference.value} fits a value network on flat observations; with image observations "
                "(encoder.name != none) use reference=mc or quantile")
        require(not pixels or self.exploration.bonus == "none",
                f"exploration={self.exploration.bonus} reads flat observations; with image observations use "
                "exploration=none")
        require(self.exploration.bonus == "none" or self.schedule.online_steps > 0,
                 f"exploration={self.exploration.bonus} acts during fine-tuning: schedule.online_steps is 0")
        require(not self.retrain.steps or self.retrain.algorithm == "run"
                 or self.algo.conservative_retraining() is not None,
                 f"retrain=ooo retrains with CQL, as OOO does, on the run's CQL settings, which {self.algo.name} "
                 "does not have: use algo=cql or calql, or retrain=same to retrain with the run's own algorithm")
        require(not self.retrain.clip_targets or self.algo.conservative_retraining() is not None,
                 f"retrain.clip_targets bounds CQL's TD target; {self.algo.name} retrains without one")
        require(self.exploration.target_bounds is None or self.algo.conservative_retraining() is not None,
                 f"exploration.target_bounds bounds CQL's TD target; {self.algo.name} has none: use algo=cql or calql, "
                 "or exploration.target_bounds=null")
        require(not self.retrain.steps or (self.schedule.online_steps > 0 and self.algo.uses_offline_data),
                 "retrain retrains on the offline data and the online transitions: it needs schedule.online_steps > 0 "
                 f"and an algorithm that reads the offline data ({self.algo.name} does not)")
        require((self.algo.pretrain and self.schedule.offline_steps > 0) or self.schedule.online_steps > 0,
                "nothing to run: schedule.online_steps is 0 and there is no pre-training "
                f"(schedule.offline_steps={self.schedule.offline_steps}, algo.pretrain={self.algo.pretrain}); "
                "give either steps")
        require(self.schedule.online_steps == 0 or self.buffer.online_capacity >= self.buffer.batch_size,
                f"buffer.online_capacity={self.buffer.online_capacity} holds less than one batch "
                f"(buffer.batch_size={self.buffer.batch_size}): raise it")
        require(str(self.compile).lower() in ("auto", "true", "false"),
                 f"compile must be auto, true or false, got {self.compile!r}")
        require(self.precision in ("auto", "fp32", "bf16"),
                 f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        require(self.threads >= 0, f"threads must be >= 0, got {self.threads}")
        require(self.calibration_batch >= 0, f"calibration_batch must be >= 0, got {self.calibration_batch}")
        require(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
                 f"device must be auto, cpu or cuda[:N], got {self.device!r}")
        require(bool(self.mlflow_experiment.strip()), "mlflow_experiment must be a non-empty name")
        require(self.mlflow_experiment.isprintable(), f"mlflow_experiment={self.mlflow_experiment!r} holds a control "
                "character (a newline?): give a printable name")
        require(len(self.mlflow_experiment) <= MAX_EXPERIMENT_NAME,
                f"mlflow_experiment is {len(self.mlflow_experiment)} characters; MLflow takes at most {MAX_EXPERIMENT_NAME}")
        require(0 <= self.seed <= MAX_SEED, f"seed must be in [0, {MAX_SEED}], got {self.seed} (numpy's seeds are "
                 "below 2**32 and the run derives others by adding offsets)")


def job_id() -> str:
    """This process's id for default run folder names: two jobs started in the same second never share a folder."""
    import os
    import secrets

    return f"{os.getpid()}-{secrets.token_hex(2)}"


JOB_FOLDER_MAX = 120  # characters of a sweep job's folder name (file systems stop at 255 bytes)


def job_folder(overrides: str) -> str:
    """A sweep job's folder name: its overrides (``algo=cql,seed=1``) as Hydra writes them, one path level (a ``/``
    in a value becomes ``_``), and past JOB_FOLDER_MAX characters their start plus a hash of the whole, so that
    the same overrides always name the same folder and different ones never share it."""
    import hashlib

    name = overrides.replace("/", "_") or "job"
    if len(name) <= JOB_FOLDER_MAX:
        return name
    digest = hashlib.sha256(overrides.encode()).hexdigest()[:12]
    return f"{name[:JOB_FOLDER_MAX - 13]}-{digest}"


def register_schema() -> None:
    """Make the schemas available to ``conf/``: the root's and each registered algorithm's (built-in and those
    :func:`o2o.agents.registry.load_plugins` imported before); ``${o2o.job_id:}``, one
    value per process (cached), for the default run and sweep folder names; ``${o2o.job_folder:...}``;
    ``${o2o.outputs:}``, the outputs folder (o2o.tracking.outputs_dir)."""
    if not OmegaConf.has_resolver("o2o.job_id"):
        OmegaConf.register_new_resolver("o2o.job_id", job_id, use_cache=True)
    if not OmegaConf.has_resolver("o2o.job_folder"):
        OmegaConf.register_new_resolver("o2o.job_folder", job_folder)
    if not OmegaConf.has_resolver("o2o.outputs"):
        from o2o.tracking import outputs_dir

        OmegaConf.register_new_resolver("o2o.outputs", lambda: str(outputs_dir()))
    from o2o.agents.registry import load_builtin

    store = ConfigStore.instance()
    store.store(name="config_schema", node=Config)
    for name, algorithm in load_builtin().items():
        store.store(group="schema/algo", name=name, node=algorithm.schema)


MAX_EXPERIMENT_NAME = 500  # MLflow's (mlflow.utils.validation.MAX_EXPERIMENT_NAME_LENGTH)
MAX_MODEL_NAME = 256  # MLflow's registered_models.name column (mlflow/store/model_registry/dbmodels/models.py)
MAX_SEED = 2**31 - 1  # leaves room below numpy's 2**32 for the offsets added to it (evaluation env, retraining)


def validate(cfg: DictConfig) -> Config:
    """Turn a composed config into checked objects; raise ConfigError on a bad value."""
    try:
        config = OmegaConf.to_object(cfg)
    except MissingMandatoryValue as err:  # a YAML of one's own that leaves a field of its schema out
        key = err.full_key
        where = f"the {key.split('.')[0]} YAML the run composes" if "." in key else "a YAML the run composes"
        raise ConfigError(f"{key} has no value: set it in {where}, or on the command line ({key}=...)") from err
    except Exception as err:  # failed interpolations
        raise ConfigError(str(err).splitlines()[0]) from err
    _refuse_unknown_keys(config)
    _refuse_non_finite(config)
    config.check()
    return config


def _refuse_non_finite(node: Any, prefix: str = "") -> None:
    """No setting of the pipeline means anything as NaN or infinity (``algo.reward_scale=nan``)."""
    import dataclasses
    import math

    if dataclasses.is_dataclass(node):
        for field in dataclasses.fields(node):
            _refuse_non_finite(getattr(node, field.name), f"{prefix}{field.name}.")
    elif isinstance(node, (list, tuple)):
        for i, item in enumerate(node):
            _refuse_non_finite(item, f"{prefix[:-1]}[{i}].")
    elif isinstance(node, dict):
        for key, item in node.items():
            _refuse_non_finite(item, f"{prefix}{key}.")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"{prefix[:-1]} must be a finite number, got {node}")


def doubtful_settings(cfg: "Config") -> list[str]:
    """Values that are legal but almost surely a mistake: the run starts, and says so, one line each."""
    schedule, lines = cfg.schedule, []
    pretrains = cfg.algo.pretrain and schedule.offline_steps > 0
    if pretrains and schedule.eval_interval_offline > schedule.offline_steps:
        lines.append(f"schedule.eval_interval_offline={schedule.eval_interval_offline} is longer than the "
                     f"{schedule.offline_steps} offline steps: pre-training is evaluated only at its end")
    if schedule.online_steps > 0 and schedule.eval_interval_online > schedule.online_steps:
        lines.append(f"schedule.eval_interval_online={schedule.eval_interval_online} is longer than the "
                     f"{schedule.online_steps} online steps: fine-tuning is evaluated only at its end")
    for stage, steps, interval in (("offline", schedule.offline_steps if pretrains else 0, schedule.eval_interval_offline),
                                   ("online", schedule.online_steps, schedule.eval_interval_online)):
        if steps > 0 and interval == 0:
            lines.append(f"schedule.eval_interval_{stage}=0: the {stage} stage is evaluated only at its end (0 does "
                         "not turn evaluation off)")
    subset, members = cfg.algo.target_subset, cfg.algo.ensemble_size
    if subset is not None and members > 1 and subset == members:
        lines.append(f"algo.target_subset={subset} of algo.ensemble_size={members}: the random subset of target "
                     "critics is always the whole ensemble")
    if subset is not None and members == 1:
        lines.append(f"algo.ensemble_size=1 with algo.target_subset={subset}: one critic, so the TD target's min over a "
                     "random subset of critics is no min at all")
    if schedule.online_steps > 0 and cfg.algo.warmup_steps >= schedule.online_steps:
        lines.append(f"algo.warmup_steps={cfg.algo.warmup_steps} is not below schedule.online_steps="
                     f"{schedule.online_steps}: fine-tuning only collects warm-up steps and never updates")
    if cfg.retrain.steps and cfg.retrain.upsample_batch > cfg.buffer.batch_size:
        lines.append(f"retrain.upsample_batch={cfg.retrain.upsample_batch} is more than the buffer.batch_size="
                     f"{cfg.buffer.batch_size} it is added to: most of each retraining batch is the online buffer's "
                     "highest-reward transitions (OOO adds 32 to 256), and each step costs that much more")
    return lines


def planned_updates(cfg: "Config") -> int:
    """The gradient steps the run will take: offline, then utd_ratio per online env step after the warm-up."""
    offline = cfg.schedule.offline_steps if cfg.algo.pretrain else 0
    return offline + max(cfg.schedule.online_steps - cfg.algo.warmup_steps, 0) * cfg.algo.utd_ratio


def inert_keys(config: "Config") -> dict[str, str]:
    """Config keys (or ``prefix.`` groups) that this run does not read, each with why: a value typed for one of them
    would be recorded in MLflow as if it applied. The command line refuses them (o2o.cli.preflight)."""
    inert = {}
    algo = config.algo
    if not algo.pretrain:
        why = f"{algo.name} does not pre-train"
        inert.update({"schedule.offline_steps": why, "schedule.eval_interval_offline": why})
    if not algo.uses_offline_data:
        inert["calibration_batch"] = f"{algo.name} reads no offline data (the calibration batch is offline data)"
    if not config.retrain.steps and not config.retrain.interval:
        inert["retrain."] = "offline retraining is off (retrain=none): choose retrain=ooo"
    if config.exploration.bonus == "none":
        inert["exploration."] = "no intrinsic reward (exploration=none): choose exploration=rnd or exploration=qknn"
    if config.reference.value == "mc":
        inert["reference."] = "V_ref is the Monte-Carlo return (reference=mc): choose reference=regression, td or quantile"
    elif config.reference.value == "quantile":
        why = "reference=quantile fits nothing (one threshold from the returns)"
        inert.update({f"reference.{k}": why for k in ("fit_steps", "hidden", "lr", "batch_size", "target_rate")})
    else:
        inert["reference.tau"] = f"reference.tau is reference=quantile's; reference={config.reference.value} fits a value"
    return inert


def inert_reason(key: str, inert: dict[str, str]) -> str | None:
    for name, why in inert.items():
        if key == name or (name.endswith(".") and key.startswith(name)):
            return why
    return None


def known_keys(cfg: DictConfig) -> list[str]:
    """Every dotted key of a composed config (for "did you mean")."""
    def walk(node, prefix):
        for key in node:
            value = node._get_node(key)
            if isinstance(value, DictConfig) and not value._is_none():  # a null node is a key too
                yield from walk(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}"
    return list(walk(cfg, ""))


def _refuse_unknown_keys(node: Any, prefix: str = "") -> None:
    """``+algo.foo=1`` slips past Hydra's struct check: every key must be a field of its schema."""
    import dataclasses
    import difflib

    if not dataclasses.is_dataclass(node):
        return
    fields = {f.name for f in dataclasses.fields(node)}
    for key in set(vars(node)) - fields:
        close = difflib.get_close_matches(key, fields, n=1)
        raise ConfigError(f"unknown key {prefix}{key}" + (f": did you mean {prefix}{close[0]}?" if close else ""))
    for name in fields:
        _refuse_unknown_keys(getattr(node, name), f"{prefix}{name}.")
