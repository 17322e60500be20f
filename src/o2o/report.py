"""The paper's view of a set of runs, read from MLflow: a results table, learning curves and Q-calibration plots.

    o2o-report --experiment o2o [--env adroit_door] [--algo calql cql] [--parent RUN_ID]

Writes ``table.md``, ``table.csv``, ``curves_<env>.png`` and ``qcal_<env>.png``
under ``outputs/reports/<experiment>-<time>/`` and logs them as artifacts of a
report run in the same experiment.
"""
from __future__ import annotations

import argparse
import csv
import math
import re
import sys
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from o2o import metrics as M
from o2o.errors import ConfigError, NoMatchingRuns, OneLineParser, UserError
from o2o.lineage import DATA_DIGEST
from o2o.tracking import default_tracking_uri, outputs_dir

REGRET = M.CUMULATIVE_REGRET
Q_KEYS = (M.Q_DATA, M.Q_POLICY, M.V_REF)
Q_OVER_V_REF = M.calibration(M.OFFLINE, M.Q_DATA_OVER_V_REF)  # on the fixed batch, at the end of pre-training
BELOW_V_REF = M.calibration(M.OFFLINE, M.BELOW_V_REF)
CALIBRATION = tuple(M.calibration(phase, k) for phase in M.PHASES for k in M.CALIBRATION_KEYS)
TRAIN_KEYS = (REGRET, *CALIBRATION, *(M.train(phase, k) for phase in M.PHASES for k in Q_KEYS))
# What a companion method did (o2o.study's companion table): the bonus it added, how far its V_ref is from the returns
BONUS = M.train(M.ONLINE, M.INTRINSIC_KEYS[0])
REFERENCE_ERRORS = tuple(M.reference(phase, k) for phase in M.PHASES for k in ("v_ref_mae", "v_ref_bias"))
DIP_FRACTION = 0.1  # the dip: mean score in the first 10% of fine-tuning minus the pre-trained score
METRIC_PARAM = "domain.metric"  # each run's headline: the paper's score for its domain
# Params that do not change what a run computes (conf/config.yaml's override_dirname exclusions, and the seed):
# runs equal in every other param form one group, one point per seed
NOT_CONFIG = ("seed", "mlflow_experiment", "progress", "threads", "device", "run_name", "divergence_guard",
              "mlflow.log_models", "mlflow.registered_model", "mlflow.system_metrics", "mlflow.system_metrics_interval_s")
SCORE_DIGITS = {M.SUCCESS_RATE: 3, M.TASKS_SOLVED: 3, M.NORMALIZED_RETURN: 1}
SCORE_RANGE = {M.SUCCESS_RATE: (0.0, 1.0), M.TASKS_SOLVED: (0.0, 1.0)}  # fractions; a band never leaves them
# A run's setting: every param that is not its algorithm's own (``algo.*``, network sizes included: each algorithm
# has its authors' sizes), not a companion switch (conf/companion/: retraining, an exploration bonus, the reference
# value, which a companion study compares on one setting) and not a fact measured from the data (``data.*``, logged
# only by algorithms that read offline data). Rows are compared (a verdict, one figure) only within one setting.
NOT_SETTING = ("algo.", "companion", "retrain.", "exploration.", "reference.", "data.")


_OVERRIDE_START = re.compile(r"(?:\+\+?)?[\w./@:-]+=|~[\w./@:-]+(?:=|$)")


def split_overrides(text: str) -> list[str]:
    """The overrides of a run's ``overrides`` tag (Hydra's overrides joined by spaces), as Hydra had them: split at
    spaces outside quotes, brackets and escapes; a piece that starts no override (``key=``, ``~key``) continues the one
    before it (Hydra keeps spaces inside an unquoted value), and one with nothing before it is not an override. Text with
    an open quote or bracket, which Hydra would not have parsed, splits at every space."""
    pieces, current, quote, depth, escaped = [], "", "", 0, False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth = max(depth - 1, 0)
        elif char.isspace() and depth == 0:
            if current:
                pieces.append(current)
            current = ""
            continue
        current += char
    if current:
        pieces.append(current)
    if quote or depth:  # nothing Hydra parsed: split at every space
        pieces = text.split()
    overrides = []
    for piece in pieces:
        if _OVERRIDE_START.match(piece):
            overrides.append(piece)
        elif overrides:
            overrides[-1] += " " + piece
    return overrides


def override_key(override: str) -> str:
    """The config key or group an override sets (``+a.b=1``, ``~a.b`` and ``a.b=1`` all set ``a.b``)."""
    return override.split("=", 1)[0].lstrip("+~")


def setting_of(params: dict[str, str]) -> tuple:
    """A run's setting from its MLflow params (NOT_SETTING)."""
    return tuple(sorted((k, v) for k, v in params.items() if k not in NOT_CONFIG and not k.startswith(NOT_SETTING)))


def setting_tag(params: dict[str, str], preset: str, data_digest: str | None = None) -> str:
    """The run tag that groups runs of one setting in MLflow's comparison view: the preset, and a digest of the
    setting's params and of the offline data's content where the run reads it (runs of one preset with other
    schedules or data get another, also on a file rewritten under the same name)."""
    import hashlib

    key = repr(setting_of(params)) + (f" data {data_digest}" if data_digest else "")
    return f"{preset}:{hashlib.sha256(key.encode()).hexdigest()[:8]}"


@dataclass
class RunRecord:
    run_id: str
    env: str
    algo: str
    seed: str
    dataset: str
    online_steps: float
    metric: str  # the paper's score for the run's domain (o2o.metrics.HEADLINE_METRICS)
    config: dict[str, str] = field(default_factory=dict)  # every param that changes what the run computes
    start_time: int = 0
    overrides: str = ""  # the command line's overrides (tag), for short labels
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # key -> [(step, value)] by step

    @property
    def setting(self) -> tuple:
        return setting_of(self.config)

    def last(self, key: str) -> float:
        points = self.history.get(key)
        return points[-1][1] if points else math.nan

    def mean(self, key: str) -> float:
        """The mean of a metric over its logged points (evaluations, log flushes, finished episodes)."""
        points = self.history.get(key)
        return sum(v for _, v in points) / len(points) if points else math.nan

    def at(self, key: str, fraction: float) -> float:
        """The metric at ``fraction`` of its phase: its last point logged at a step no later than that fraction of
        its last logged step (nan where it has none that early)."""
        points = self.history.get(key)
        early = [v for s, v in points if s <= fraction * points[-1][0]] if points else []
        return early[-1] if early else math.nan

    def score_key(self, phase: str) -> str:
        return M.evaluation(phase, self.metric)

    def dip(self, fraction: float = DIP_FRACTION) -> float:
        """The unlearning dip: the mean online score over the evaluations within the first ``fraction`` of
        fine-tuning (the first evaluation if none falls there) minus the score after pre-training; negative when
        fine-tuning first unlearns. The mean, not the lowest: the lowest of k noisy evaluations lies below the start
        when nothing is unlearned (10 evaluations of 20 episodes at a success rate of 0.5: by 0.17 on average, one
        seed's standard deviation 0.13), so every algorithm would dip and 5 seeds would call it significant."""
        points = self.history.get(self.score_key(M.ONLINE))
        if not points:
            return math.nan
        window = [v for s, v in points if s <= fraction * self.online_steps] or [points[0][1]]
        return sum(window) / len(window) - self.last(self.score_key(M.OFFLINE))

    def improvement(self) -> float:
        """How fast fine-tuning improves on the pre-trained policy: the mean over the online evaluations of the score
        minus the score after pre-training (the area between the learning curve and its starting level, per
        evaluation; evaluations are evenly spaced). Higher is faster; negative when fine-tuning mostly unlearns."""
        return self.mean(self.score_key(M.ONLINE)) - self.last(self.score_key(M.OFFLINE))


# --------------------------------------------------------------------------- reading MLflow


def build_filter(env: str | None = None, algos: list[str] | None = None, dataset: str | None = None,
                 parent: str | None = None, extra: str | None = None) -> str:
    clauses = ["tags.algo != ''"]  # job runs only: no sweep parents, no report runs
    if env:
        clauses.append(f"tags.env = '{env}'")
    if algos and len(algos) == 1:  # several: load_runs selects them (MLflow has no IN for tags)
        clauses.append(f"tags.algo = '{algos[0]}'")
    if dataset:
        clauses.append(f"tags.dataset = '{dataset}'")
    if parent:
        clauses.append(f"tags.mlflow.parentRunId = '{parent}'")
    if extra:
        clauses.append(f"({extra})" if " or " in extra.lower() else extra)
    return " and ".join(clauses)


def load_runs(client, experiment: str, filter_string: str, finished_only: bool = True,
              algos: list[str] | None = None) -> list[RunRecord]:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise NoMatchingRuns(f"no MLflow experiment named {experiment!r} in {default_tracking_uri()}: name one with "
                             "--experiment, or set MLFLOW_TRACKING_URI to the store that holds it")
    if finished_only:
        filter_string += " and attributes.status = 'FINISHED'"
    from mlflow.exceptions import MlflowException

    records = []
    try:
        found = client.search_runs([exp.experiment_id], filter_string, max_results=5000)
    except MlflowException as err:  # a filter MLflow cannot parse
        raise ConfigError(f"the run filter {filter_string!r} is not one MLflow reads: "
                         f"{str(err).splitlines()[0][:200]}") from None
    for run in found:
        if not algos or run.data.tags["algo"] in algos:
            records.append(_record(client, run))
    return records


def _record(client, run) -> RunRecord:
    """A run's tags and the metric histories the report draws on."""
    tags = run.data.tags
    params = run.data.params
    record = RunRecord(run.info.run_id, tags.get("env", "?"), tags.get("algo", "?"), tags.get("seed", "?"),
                       tags.get("dataset", "?"), float(params.get("schedule.online_steps", "nan")),
                       params.get(METRIC_PARAM, "?"), {k: v for k, v in params.items() if k not in NOT_CONFIG},
                       run.info.start_time or 0, tags.get("overrides", ""))
    for key in history_keys(record.metric):
        stored = key if key in run.data.metrics else legacy_name(key)
        if stored in run.data.metrics:
            record.history[key] = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, stored))
    return record


def history_keys(metric: str) -> tuple[str, ...]:
    """The metrics whose whole history the report and the study pages read, for a run scored by ``metric``."""
    return (*(M.evaluation(phase, metric) for phase in (*M.PHASES, M.RETRAIN)), *TRAIN_KEYS, BONUS,
            *REFERENCE_ERRORS)


def legacy_name(key: str) -> str:
    """The name a metric had in stores written before a rename (``metrics.LEGACY_NAMES``)."""
    head, _, name = key.rpartition("/")
    return f"{head}/{M.LEGACY_NAMES[name]}" if name in M.LEGACY_NAMES else key


# --------------------------------------------------------------------------- the table


PER_SEED = "per_seed"  # a table row's per-seed values by column, for the statistics (not a column of its own)
SETTING_KEY = "setting_params"  # a table row's setting as params, for comparisons (not a column of its own)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation over seeds (0 for one seed), ignoring NaN."""
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=float)
    if len(v) == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def group_runs(records: list[RunRecord]) -> tuple[dict[tuple, list[RunRecord]], list[str]]:
    """Runs equal in every param but the seed (and bookkeeping) form a group with one run per seed, the latest;
    returns the groups and a line per run left out."""
    groups: dict[tuple, list[RunRecord]] = defaultdict(list)
    for r in records:  # the data's digest apart: runs made before it was a param have none
        groups[(r.env, r.algo, tuple(sorted((k, v) for k, v in r.config.items() if k != DATA_DIGEST)))].append(r)
    left_out = []
    for key, runs in list(groups.items()):  # runs on other data content are other configurations
        digests = sorted({r.config[DATA_DIGEST] for r in runs if DATA_DIGEST in r.config})
        if len(digests) < 2:
            continue
        del groups[key]
        for r in runs:
            if DATA_DIGEST in r.config:
                groups[(*key[:2], tuple(sorted((*key[2], (DATA_DIGEST, r.config[DATA_DIGEST])))))].append(r)
            else:
                left_out.append(f"run {r.run_id} ({r.env}, {r.algo}, seed {r.seed}): no data digest, and runs of its "
                                f"configuration read {len(digests)} different data contents")
    for key, runs in groups.items():
        latest: dict[str, RunRecord] = {}
        for r in sorted(runs, key=lambda r: r.start_time):
            if r.seed in latest:
                left_out.append(f"run {latest[r.seed].run_id} ({r.env}, {r.algo}, seed {r.seed}): an earlier run of the "
                                f"same configuration and seed, replaced by {r.run_id}")
            latest[r.seed] = r
        groups[key] = sorted(latest.values(), key=lambda r: seed_order(r.seed))  # rliable resamples by position
    return groups, left_out


def seed_order(seed: str) -> tuple:
    """Runs in seed order before any statistic: a bootstrap's interval must not depend on which run finished first."""
    return (0, int(seed), "") if seed.lstrip("-").isdigit() else (1, 0, seed)


def config_label(key: tuple, groups: dict[tuple, list[RunRecord]]) -> str:
    """What sets this group apart from the others of its env and algorithm ('' when it is the only one): the
    shortest description that tells them apart: the command-line overrides that differ (a preset's or a group's
    option when the runs differ by one, whatever its length) when those tell them apart, else every param that
    differs."""
    env, algo, config = key
    siblings = [k for k in groups if k[:2] == (env, algo)]
    if len(siblings) == 1:
        return ""
    by_overrides = _override_labels({k: groups[k] for k in siblings})
    config = dict(config)
    others = [dict(k[2]) for k in siblings if k != key]
    keys = sorted({k for other in others for k in set(other) | set(config) if other.get(k) != config.get(k)})
    by_params = " ".join(f"{k}={config.get(k, '-')}" for k in keys)
    if by_overrides is not None and (len(by_overrides[key]) <= len(by_params) or _top_level(by_overrides[key])):
        return by_overrides[key]
    return by_params


def setting_labels(records: list[RunRecord]) -> dict[tuple, str]:
    """Per env, what sets each setting apart from the env's other settings ('' when the env has one): the
    command-line overrides outside the algorithm's own and the companion switches (a preset such as
    experiment=smoke) when they tell the settings apart, else the params that differ."""
    labels = {}
    for env in {r.env for r in records}:
        runs_of = defaultdict(list)
        for r in records:
            if r.env == env:
                runs_of[r.setting].append(r)
        if len(runs_of) == 1:
            labels[(env, next(iter(runs_of)))] = ""
            continue
        tokens = {setting: frozenset(t for t in _override_tokens(runs) if _outside_algo(override_key(t)))
                  for setting, runs in runs_of.items()}
        shared = frozenset.intersection(*tokens.values())
        by_overrides = {k: " ".join(sorted(t - shared)) or "(no override)" for k, t in tokens.items()}
        for setting in runs_of:
            mine = dict(setting)
            keys = sorted({k for other in runs_of if other != setting for k in set(dict(other)) | set(mine)
                           if dict(other).get(k) != mine.get(k)})
            by_params = " ".join(f"{k}={mine.get(k, '-')}" for k in keys)
            unique = len(set(by_overrides.values())) == len(by_overrides)
            labels[(env, setting)] = by_overrides[setting] if unique else by_params
    return labels


def _outside_algo(name: str) -> bool:
    return name != "algo" and not name.startswith(NOT_SETTING)


def config_cell(row: dict) -> str:
    """The table's config column: the row's setting (when its env has several), then what sets it apart from the
    other rows of its env and algorithm."""
    setting = row.get("setting", "").split()
    return " ".join([*setting, *(token for token in row["config"].split() if token not in setting)])


def _top_level(label: str) -> bool:
    """Every override in ``label`` sets a top-level choice (a group's option such as companion=ooo, or a top-level
    key), which names what sets the runs apart better than the params it expands to."""
    return all("." not in override_key(token) for token in split_overrides(label))


def _override_tokens(runs: list[RunRecord]) -> frozenset[str]:
    """The overrides that shape what the runs compute (not the seed, not bookkeeping)."""
    tokens = set()
    for r in runs:
        tokens.update(token for token in split_overrides(r.overrides)
                      if override_key(token) not in NOT_CONFIG and not override_key(token).startswith("hydra"))
    return frozenset(tokens)


def _override_labels(groups: dict[tuple, list[RunRecord]]) -> dict[tuple, str] | None:
    """Each group's overrides that not every group shares; None when those do not tell the groups apart."""
    tokens = {k: _override_tokens(runs) for k, runs in groups.items()}
    shared = frozenset.intersection(*tokens.values())
    labels = {k: " ".join(sorted(t - shared)) or "(no override)" for k, t in tokens.items()}
    return labels if len(set(labels.values())) == len(labels) else None


def results_table(records: list[RunRecord], dip_fraction: float = DIP_FRACTION) -> list[dict]:
    groups, _ = group_runs(records)
    settings = setting_labels(records)
    rows = []
    for key, runs in sorted(groups.items(), key=lambda item: item[0][:2]):
        env, algo = key[:2]
        per_seed = {}
        row = {"env": env, "algo": algo, "config": config_label(key, groups),
               "setting": settings[(env, runs[0].setting)], SETTING_KEY: runs[0].setting,
               "dataset": ",".join(sorted({r.dataset for r in runs})),
               "metric": ",".join(sorted({r.metric for r in runs})), "seeds": len(runs)}
        for name, values in (("offline", [r.last(r.score_key(M.OFFLINE)) for r in runs]),
                             ("final", [r.last(r.score_key(M.ONLINE)) for r in runs]),
                             ("retrained", [r.last(r.score_key(M.RETRAIN)) for r in runs]),
                             ("dip", [r.dip(dip_fraction) for r in runs]),
                             ("regret", [r.last(REGRET) for r in runs]),
                             ("q_over_v_ref", [r.last(Q_OVER_V_REF) for r in runs]),
                             ("below_v_ref", [r.last(BELOW_V_REF) for r in runs])):
            row[f"{name}_mean"], row[f"{name}_std"] = mean_std(values)
            per_seed[name] = values
        row[PER_SEED] = per_seed
        rows.append(row)
    return rows


FOCUS = "calql"  # the algorithm whose rows the pairwise table sets against the others (o2o-report --focus)


def statistics_markdown(rows: list[dict], focus: str = FOCUS) -> str:
    """rliable's aggregates per row (mean and IQM of the scores, mean regret, 95% stratified-bootstrap intervals),
    and per env the probability that each row of the ``focus`` algorithm improves on each other row of its setting,
    with the verdict of o2o.statistics."""
    from o2o import statistics as S

    shown = "Cal-QL" if focus == "calql" else focus

    lines = ["| env | algo | config | seeds | after pre-training: mean, IQM | after fine-tuning: mean, IQM | "
             "cumulative regret: mean |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        digits = SCORE_DIGITS.get(r["metric"], 3)
        cells = []
        for name in ("offline", "final"):
            a = S.aggregates(r[PER_SEED][name])
            cells.append("-" if math.isnan(a["mean"].point) else f"{a['mean'].format(digits)}, {a['iqm'].format(digits)}")
        regret = S.mean_interval(r[PER_SEED]["regret"])
        lines.append(f"| {r['env']} | {r['algo']} | {config_cell(r) or '-'} | {r['seeds']} | {cells[0]} | {cells[1]} | "
                     f"{'-' if math.isnan(regret.point) else regret.format(3)} |")
    pairs = []
    focused = [r for r in rows if r["algo"] == focus]
    for i, row in enumerate(focused):
        for other in (r for r in rows if r["env"] == row["env"] and r is not row
                      and r[SETTING_KEY] == row[SETTING_KEY]):  # unlike settings are never weighed
            if any(other is r for r in focused[:i]):  # each pair of focus rows once: P(B > A) is 1 - P(A > B)
                continue
            for name, label, higher in (("final", "score after fine-tuning", True),
                                        ("offline", "score after pre-training", True), ("regret", "cumulative regret", False)):
                x, y = row[PER_SEED][name], other[PER_SEED][name]
                if all(math.isnan(v) for v in x) or all(math.isnan(v) for v in y):
                    continue
                verdict, p = S.improves(x, y, higher)
                pairs.append(f"| {row['env']} | {_row_name(row)} | {_row_name(other)} | "
                             f"{label} ({'higher' if higher else 'lower'} is better) | {p.format(2)} | {verdict} |")
    out = "\n".join(lines)
    if pairs:
        out += (f"\n\nProbability that a run of a {shown} row improves on a run of the row it is set against (rliable, "
                f"95% interval; each pair of {shown} rows once, since P(B better) is 1 - P(A better); only rows of one "
                "setting, equal in every param but the algorithm's own). "
                + (f"**Exploratory**: the family is these {len(pairs)} comparisons, each judged at 95% on its own "
                   "with no correction for their number, so about one in twenty would leave \"inconclusive\" by "
                   "chance alone" if len(pairs) > 1 else "**Exploratory**: the family is this one comparison, judged "
                   "at 95%")
                + "; a study's pre-registered comparisons are its claims table.\n\n"
                f"| env | {shown} row | against | on | P({shown} row better) | verdict (uncorrected) |\n"
                "|---|---|---|---|---|---|\n" + "\n".join(pairs))
    return out + ("\n\nMeans and interquartile means (IQM) over seeds with 95% stratified-bootstrap confidence "
                  f"intervals, {S.BOOTSTRAP_REPS} resamples (rliable). " + S.RULE + "\n")


def _row_name(row: dict) -> str:
    return f"{row['algo']} ({config_cell(row)})" if config_cell(row) else row["algo"]


def _pm(mean: float, std: float, digits: int) -> str:
    return "-" if math.isnan(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def to_markdown(rows: list[dict], dip_fraction: float, left_out: list[str] = ()) -> str:
    retrained = any(not math.isnan(r["retrained_mean"]) for r in rows)  # a column only when some run retrained (OOO)
    lines = [f"| env | algo | config | metric | seeds | after pre-training | after fine-tuning | "
             + ("after retraining | " if retrained else "") + f"dip (first {dip_fraction:.0%}) | "
             "cumulative regret | Q / V_ref after pre-training | Q < V_ref after pre-training |",
             "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if retrained else "")]
    for r in rows:
        digits = SCORE_DIGITS.get(r["metric"], 3)
        lines.append(f"| {r['env']} | {r['algo']} | {config_cell(r) or '-'} | {r['metric']} | {r['seeds']} | "
                     f"{_pm(r['offline_mean'], r['offline_std'], digits)} | {_pm(r['final_mean'], r['final_std'], digits)} | "
                     + (f"{_pm(r['retrained_mean'], r['retrained_std'], digits)} | " if retrained else "") +
                     f"{_pm(r['dip_mean'], r['dip_std'], digits)} | {_pm(r['regret_mean'], r['regret_std'], 3)} | "
                     f"{_pm(r['q_over_v_ref_mean'], r['q_over_v_ref_std'], 2)} | "
                     f"{_pm(r['below_v_ref_mean'], r['below_v_ref_std'], 2)} |")
    return "\n".join(lines) + (
        "\n\nScores are each domain's paper metric: success_rate (goal reached at any step) and tasks_solved "
        "(Kitchen, tasks solved / 4) as fractions, normalized_return as D4RL's x100; mean ± sample std over seeds. "
        f"Dip: the mean score over the evaluations in the first {dip_fraction:.0%} of fine-tuning (or the first online "
        "evaluation, if none falls in that window) minus the score after pre-training (the mean, as the lowest of several noisy evaluations is below the start even when "
        "nothing is unlearned). "
        "Q / V_ref: mean Q on data actions over the mean Monte-Carlo return, on the run's fixed calibration batch "
        "(with negative returns, above 1 means Q below the return); Q < V_ref: the fraction of that batch whose "
        "Q(s, a_data) is below its return.\n"
        "A row is one configuration: runs equal in every param but the seed and bookkeeping "
        f"({', '.join(NOT_CONFIG[1:])}); `config` shows its setting where its env has several (a preset, a "
        "schedule, the data: every param that is not the algorithm's own or a companion switch), then what sets it "
        "apart from the other rows of its env and algorithm; each seed counts once (its latest run).\n"
        + "".join(f"\nLeft out: {line}" for line in left_out) + ("\n" if left_out else ""))


def to_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[k for k in rows[0] if k not in (PER_SEED, SETTING_KEY)] if rows else ["env", "algo"],
                                extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


# --------------------------------------------------------------------------- plots


def _band(runs_points: list[list[tuple[int, float]]]):
    """Mean and std over runs at every step any of them logged: each run's own points as logged (a single run is
    drawn exactly), another run's value between two of its points interpolated, and none outside its range."""
    runs_points = [p for p in runs_points if p]
    if not runs_points:
        return None
    grid = np.unique(np.concatenate([np.asarray([step for step, _ in p], dtype=float) for p in runs_points]))
    values = np.full((len(runs_points), len(grid)), np.nan)
    for i, points in enumerate(runs_points):
        steps, vals = np.asarray(points, dtype=float).T
        inside = (grid >= steps[0]) & (grid <= steps[-1])
        values[i, inside] = np.interp(grid[inside], steps, vals)
    with warnings.catch_warnings():  # grid points no run covers are NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return grid, np.nanmean(values, axis=0), np.nanstd(values, axis=0)


def palette(configurations) -> dict[str, dict]:
    """Each configuration's colour (and, past matplotlib's ten colours, line style; the calibration figure, whose
    line styles name its series, takes the colour only), by its place in sorted order: the same in the curves, Q
    and calibration figures of one env and setting, and never shared by two configurations drawn in one panel of
    the curves figure (an online-only algorithm drawn after the others once took the colour of another there)."""
    styles = ("-", "--", "-.", ":")
    return {name: {"color": f"C{i % 10}", "linestyle": styles[i // 10 % len(styles)]}
            for i, name in enumerate(sorted(configurations))}


def _plot_phases(axes, groups: dict[str, list[RunRecord]], series, label_of=lambda algo: algo, style=None,
                 bounds: tuple[float, float] | None = None):
    """``series(record, phase)`` gives a run's [(step, value)] for the offline and the online panel; ``bounds``: the
    values' range (a success rate's [0, 1]), which a mean ± std band does not leave. Each configuration is drawn
    in its :func:`palette` style unless ``style`` sets one."""
    styles = palette(groups)
    for algo, runs in sorted(groups.items()):
        for ax, phase in zip(axes, M.PHASES):
            band = _band([series(r, phase) for r in runs])
            if band is None:
                continue
            grid, mean, std = band
            drawn = {**styles[algo], **(style or {})}
            if len(grid) == 1:  # one point (e.g. only the score after pre-training): a marker, not an invisible line
                drawn.setdefault("marker", "o")
            line, = ax.plot(grid, mean, label=label_of(algo), **drawn)
            low, high = mean - std, mean + std
            if bounds is not None:
                low, high = np.clip(low, *bounds), np.clip(high, *bounds)
            ax.fill_between(grid, low, high, alpha=0.2, color=line.get_color())


def score_series(record: RunRecord, phase: str) -> list[tuple[int, float]]:
    """Evaluation scores; the online curve starts from the pre-trained policy's score at env step 0."""
    points = record.history.get(record.score_key(phase), [])
    offline = record.history.get(record.score_key(M.OFFLINE))
    if phase == M.ONLINE and offline and points and points[0][0] > 0:
        points = [(0, offline[-1][1]), *points]
    return points


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


LABEL_CHARS = 60  # a legend entry at most; the table's config column has the whole description


def short_label(text: str, limit: int = LABEL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _by_algo(records: list[RunRecord]) -> dict[str, list[RunRecord]]:
    """One curve per configuration: the algorithm, with what sets its configuration apart when it has several."""
    groups, _ = group_runs(records)
    labelled = {}
    for key, runs in groups.items():
        diff = config_label(key, groups)
        labelled[short_label(key[1] + (f" ({diff})" if diff else ""))] = runs
    return labelled


def _legend_below(fig, axes, extra=()) -> int:
    """One legend for the figure, under its plots, so that it never covers a curve or runs off the figure; ``extra``:
    handles that explain a line style rather than name a curve. Returns the legend's number of rows."""
    handles, labels = {}, []
    for handle in [h for ax in axes for h in ax.get_legend_handles_labels()[0]] + list(extra):
        label = handle.get_label()
        if label not in handles:
            handles[label] = handle
            labels.append(label)
    if not labels:
        return 0
    ncol = max(1, min(len(labels), 3 if max(len(label) for label in labels) < 30 else 1))
    fig.legend([handles[label] for label in labels], labels, loc="outside lower center", fontsize=8, ncol=ncol)
    return -(-len(labels) // ncol)


def has_online(records: list[RunRecord]) -> bool:
    """Whether any run logged fine-tuning; an offline study's figures have no online column."""
    return any(key.startswith(f"{M.ONLINE}/") for r in records for key in r.history)


def curves_figure(records: list[RunRecord], title: str):
    plt, groups = _pyplot(), _by_algo(records)
    online = has_online(records)
    fig, axes = plt.subplots(1, 2 if online else 1, figsize=(11, 4.5) if online else (6, 4.5), sharey=True,
                             gridspec_kw={"width_ratios": [1, 2] if online else [1]}, layout="constrained", squeeze=False)
    axes = axes[0]
    ranges = {SCORE_RANGE.get(r.metric) for r in records}
    _plot_phases(axes, groups, score_series, bounds=ranges.pop() if len(ranges) == 1 else None)
    axes[0].set(title="offline pre-training", xlabel="gradient steps",
                ylabel=" / ".join(sorted({r.metric for r in records})))
    if online:
        axes[1].set(title="online fine-tuning", xlabel="env steps")
        axes[1].axvline(0, color="k", linestyle="--", linewidth=1)
        axes[1].annotate("offline → online", xy=(0, 0), xycoords=("data", "axes fraction"), xytext=(4, 4),
                         textcoords="offset points", fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    _legend_below(fig, axes)
    seeds = max(len(runs) for runs in groups.values()) if groups else 0
    fig.suptitle(f"{title}: " + ("mean ± std over seeds" if seeds > 1 else "one run per curve"))
    return fig


def qcal_figure(records: list[RunRecord], title: str):
    plt, groups = _pyplot(), _by_algo(records)
    algos, online = sorted(groups), has_online(records)
    fig, axes = plt.subplots(len(algos), 2 if online else 1, figsize=(11 if online else 6, 2.8 * len(algos) + 0.8),
                             squeeze=False, gridspec_kw={"width_ratios": [1, 2] if online else [1]},
                             layout="constrained")
    styles = {M.Q_DATA: ("Q(s, a) on dataset actions", "-", "C0"),
              M.Q_POLICY: ("Q(s, a) on policy actions", "--", "C3"),
              M.V_REF: ("reference value V_ref(s)", ":", "k")}
    for row, algo in zip(axes, algos):
        for key, (label, linestyle, color) in styles.items():
            _plot_phases(row, {algo: groups[algo]}, lambda r, phase, key=key: r.history.get(M.train(phase, key), []),
                         label_of=lambda _, label=label: label, style={"linestyle": linestyle, "color": color})
        row[0].set_ylabel(f"{short_label(algo, 24)}\nQ value")  # the configuration's whole name: its row's title
        if algo != short_label(algo, 24):
            row[-1].set_title(algo, loc="left", fontsize=8)
        if online:
            row[1].axvline(0, color="k", linestyle="--", linewidth=1)
        for ax in row:
            ax.grid(alpha=0.3)
    axes[0][0].set_title("offline pre-training")
    axes[-1][0].set_xlabel("gradient steps")
    if online:
        axes[0][1].set_title("online fine-tuning", loc="right")
        axes[-1][1].set_xlabel("env steps")
    _legend_below(fig, axes[0])
    fig.suptitle(f"{title}: Q-value calibration\n(learned Q vs. the reference value of the batch)")
    return fig


def calibration_figure(records: list[RunRecord], title: str):
    """The fixed-batch diagnostics (stages/calibration.py) of every configuration: Q on data actions against the
    Monte-Carlo return, and how often Q falls below it (data actions; policy actions = Cal-QL's bound rate)."""
    plt, groups = _pyplot(), _by_algo(records)
    online = has_online(records)  # an offline study: one column
    height = 6.5  # the two plot rows; the legend's rows are added to it below
    fig, axes = plt.subplots(2, 2 if online else 1, figsize=(11 if online else 7, height), sharex="col",
                             squeeze=False, gridspec_kw={"width_ratios": [1, 2] if online else [1]},
                             layout="constrained")

    def series(name):
        return lambda r, phase: r.history.get(M.calibration(phase, name), [])

    hidden = "_"  # matplotlib leaves a label starting with it out of legends: each configuration is named once
    colors = {algo: style["color"] for algo, style in palette(groups).items()}  # line styles carry the series here
    for algo, runs in sorted(groups.items()):  # V_ref per algorithm: reward transforms differ
        color, one = colors[algo], {algo: runs}
        _plot_phases(axes[0], one, series(M.Q_DATA), style={"color": color})
        for row, name, linestyle in ((0, M.V_REF, ":"), (1, M.BELOW_V_REF, "-"), (1, M.BOUND_RATE, "--")):
            _plot_phases(axes[row], one, series(name), label_of=lambda a: hidden + a,
                         style={"color": color, "linestyle": linestyle})
    axes[0][0].set(title="offline pre-training", ylabel="Q value (batch mean)")
    axes[1][0].set(xlabel="gradient steps", ylabel="share below V_ref")
    if online:
        axes[0][1].set(title="online fine-tuning")
        axes[1][1].set(xlabel="env steps")
        for ax in axes[:, 1]:
            ax.axvline(0, color="k", linestyle="--", linewidth=1)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    from matplotlib.lines import Line2D

    styles = [Line2D([], [], color="k", linestyle="-", label="top: Q(s, a_data)"),
              Line2D([], [], color="k", linestyle=":", label="top: V_ref (the reference value)"),
              Line2D([], [], color="k", linestyle="-", label="bottom: share of Q(s, a_data) < V_ref"),
              Line2D([], [], color="k", linestyle="--", label="bottom: share of Q(s, a~pi) < V_ref (bound rate)")]
    rows = _legend_below(fig, axes.flat, extra=styles)
    fig.set_figheight(height + 0.17 * rows)  # the legend takes its rows from the figure, not from the plots
    fig.suptitle(f"{title}: calibration on a fixed batch of offline transitions")
    return fig


# --------------------------------------------------------------------------- entry points


def write_report(client, experiment: str, filter_string: str, out_dir: Path, dip_fraction: float = DIP_FRACTION,
                 finished_only: bool = True, log_to_mlflow: bool = True, algos: list[str] | None = None,
                 focus: str = FOCUS) -> dict:
    plt = _pyplot()
    records = load_runs(client, experiment, filter_string, finished_only, algos)
    if not records:
        raise NoMatchingRuns(f"no runs in experiment {experiment!r} match: {filter_string}")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = results_table(records, dip_fraction)
    _, left_out = group_runs(records)
    (out_dir / "table.md").write_text(to_markdown(rows, dip_fraction, left_out))
    (out_dir / "statistics.md").write_text(statistics_markdown(rows, focus))
    to_csv(rows, out_dir / "table.csv")
    files = [out_dir / "table.md", out_dir / "statistics.md", out_dir / "table.csv"]
    labels = setting_labels(records)
    for env in sorted({r.env for r in records}):
        settings = sorted({r.setting for r in records if r.env == env}, key=lambda k: labels[(env, k)])
        for number, setting in enumerate(settings, 1):  # one figure per setting: unlike schedules share no axis
            runs = [r for r in records if r.env == env and r.setting == setting]
            suffix, title = ("", env) if len(settings) == 1 else (f"_{number}", f"{env}, {short_label(labels[(env, setting)], 50)}")
            figures = [("curves", curves_figure), ("qcal", qcal_figure)]
            if any(key in r.history for r in runs for key in CALIBRATION):
                figures.append(("calibration", calibration_figure))
            for name, make in figures:
                fig = make(runs, title)
                path = out_dir / f"{name}_{env}{suffix}.png"
                fig.savefig(path, dpi=110)
                files.append(path)
                plt.close(fig)
    report_run = None
    if log_to_mlflow:
        exp = client.get_experiment_by_name(experiment)
        run = client.create_run(exp.experiment_id, run_name=f"report-{time.strftime('%Y-%m-%d_%H-%M-%S')}",
                                tags={"report": "true", "report_filter": filter_string[:5000],
                                      "report_runs": str(len(records))})
        for path in files:
            client.log_artifact(run.info.run_id, str(path), "report")
        client.set_terminated(run.info.run_id)
        report_run = run.info.run_id
    return {"rows": rows, "files": files, "runs": len(records), "records": records, "report_run": report_run}


def run_plot(client, run_id: str, path: Path) -> Path:
    """One run's own learning curve and Q-calibration, for its artifacts."""
    plt = _pyplot()

    record = _record(client, client.get_run(run_id))
    path.parent.mkdir(parents=True, exist_ok=True)
    title = f"{record.algo} on {record.env}, seed {record.seed}"
    for suffix, make in (("curves", curves_figure), ("qcal", qcal_figure)):
        fig = make([record], title)
        fig.savefig(path.with_name(f"{path.stem}_{suffix}.png"), dpi=100)
        plt.close(fig)
    return path.parent


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(prog="o2o-report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="o2o")
    parser.add_argument("--env")
    parser.add_argument("--algo", nargs="+")
    parser.add_argument("--dataset")
    parser.add_argument("--parent", help="only the children of this sweep's parent run")
    parser.add_argument("--filter", help="an extra MLflow search filter, e.g. \"params.algo.mixing_ratio = '0.5'\"")
    parser.add_argument("--dip-fraction", type=float, default=DIP_FRACTION,
                        help="the first part of fine-tuning whose mean score, minus the score after pre-training, "
                             "is the dip (or the first online evaluation, if none falls in that window)")
    parser.add_argument("--include-unfinished", action="store_true")
    parser.add_argument("--out", help="output folder (default outputs/reports/<experiment>-<time>)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the report as an MLflow run")
    parser.add_argument("--focus", default=FOCUS, metavar="ALGO",
                        help="the algorithm whose rows the probability-of-improvement table sets against every other "
                             f"row of their setting (default {FOCUS}; your own method's name to weigh it)")
    args = parser.parse_args(argv)
    if not 0 < args.dip_fraction <= 1:
        parser.error(f"--dip-fraction must be in (0, 1], a fraction of fine-tuning, got {args.dip_fraction}")
    try:
        from o2o.tracking import check_store, check_writable_folder, store_not_made

        uri = default_tracking_uri()
        check_store(uri)
        if store_not_made(uri):
            raise NoMatchingRuns(f"the MLflow store {uri} does not exist yet: run a job first, or set "
                                 "MLFLOW_TRACKING_URI to the store that holds the runs")
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        out = Path(args.out) if args.out else outputs_dir() / "reports" / f"{args.experiment}-{time.strftime('%Y-%m-%d_%H-%M-%S')}"
        check_writable_folder(str(out), "--out" if args.out else "the reports folder")
        result = write_report(client, args.experiment, build_filter(args.env, args.algo, args.dataset, args.parent,
                                                                    args.filter),
                              out, args.dip_fraction, not args.include_unfinished, not args.no_mlflow, args.algo,
                              args.focus)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print((out / "table.md").read_text())
    print(f"{result['runs']} runs; report written to {out}" +
          (f"; MLflow report run {result['report_run']}" if result["report_run"] else ""))


if __name__ == "__main__":
    main()
