"""Run a named study and write its results page: ``o2o-study pointmaze_o2o [--budget cpu|paper] [--launcher ...]``.

A study is a preset ``conf/experiment/study/<name>/<budget>.yaml`` that bundles the env, data, schedule, network
sizes and the sweep (algorithms and seeds, ``hydra.sweeper.params``). This command runs that sweep with
``src/main.py -m`` (local processes one after another by default, ``--launcher slurm`` on a cluster), finds the
sweep's MLflow parent run, and writes ``docs/results/<name>-<budget>.md`` from the children's MLflow records (a
smoke page goes to ``outputs/study-pages``): the report's table and rliable's statistics, learning curves with the
offline -> online switch, the calibration plots, the paper's claims each judged by the rule of o2o.statistics, and
the exact command and commit. ``--page-only PARENT_RUN_ID`` rewrites the page of a sweep
that has run.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from o2o import metrics as M
from o2o import statistics as S
from o2o.config_sources import CONFIG_PATH_ENV
from o2o.errors import OneLineParser, UserError

STUDIES = Path(importlib.util.find_spec("o2o_conf").origin).parent / "experiment" / "study"  # conf/ as installed
LAUNCHERS = {"local": [], "local-parallel": ["hydra/launcher=submitit_local"], "slurm": ["hydra/launcher=submitit_slurm"]}
PAGE_DIR = Path("docs/results")
SMOKE = "smoke"  # a budget every study has: its cpu preset at the smoke preset's size


def study_roots() -> list[Path]:
    """The project's studies, then those of one's own config folders (``O2O_CONFIG_PATH``; o2o.config_sources)."""
    from o2o.config_sources import folders

    return [STUDIES, *(f / "experiment" / "study" for f in folders([]))]


def available() -> dict[str, list[str]]:
    """Study name -> its budgets."""
    found: dict[str, list[str]] = {}
    for root in reversed(study_roots()):  # the project's last: a study of one's own may not shadow it
        for d in sorted(root.iterdir()) if root.is_dir() else []:
            if d.is_dir():
                found[d.name] = [*sorted(p.stem for p in d.glob("*.yaml")), SMOKE]
    return dict(sorted(found.items()))


def preset_file(name: str, budget: str) -> Path:
    preset = f"{'cpu' if budget == SMOKE else budget}.yaml"
    return next((root / name / preset for root in study_roots() if (root / name / preset).is_file()),
                STUDIES / name / preset)


def preset_header(name: str, budget: str) -> str:
    """The preset's leading comment: what the study tests and how its setting differs from the paper."""
    lines = []
    for line in preset_file(name, budget).read_text().splitlines():
        if not line.startswith("#"):
            break
        if not line.startswith("# @package"):
            lines.append(line[1:].strip())
    return " ".join(lines)


def sweep_params(name: str, budget: str) -> dict[str, list[str]]:
    """The preset's sweep: key -> values (``hydra.sweeper.params``), e.g. algo -> [calql, cql]."""
    from o2o.cli import compose_config

    preset = "cpu" if budget == SMOKE else budget
    cfg = compose_config([f"experiment=study/{name}/{preset}"], return_hydra_config=True)
    return {key: str(values).split(",") for key, values in cfg.hydra.sweeper.params.items()}


def arms(name: str, budget: str) -> list[list[str]]:
    """Each configuration the preset's sweep compares, as the overrides that select it (seeds aside): an algorithm
    (``algo=cql``), an algorithm with a companion method, or an arm file of the study's own
    (``+experiment/study/baselines/arm=rlpd``: an algorithm with what the study changes for it)."""
    import itertools

    params = {key: values for key, values in sweep_params(name, budget).items() if key != "seed"}
    keys = sorted(params)
    return [[f"{key}={value}" for key, value in zip(keys, combo)]
            for combo in itertools.product(*(params[key] for key in keys))]


def smoke_overrides() -> list[str]:
    """The smoke preset's values as overrides: ``--budget smoke`` runs a study's cpu preset at that size, to check
    that it runs end to end in about a minute."""
    from o2o.config_sources import smoke_values

    return [f"{key}=" + (f"[{','.join(map(str, value))}]" if isinstance(value, list) else str(value))
            for key, value in smoke_values().items()]


def sweep_command(name: str, budget: str, launcher: str, sweep_dir: Path, overrides: list[str]) -> list[str]:
    preset, extra = (budget, []) if budget != SMOKE else ("cpu", smoke_overrides())
    return [sys.executable, "-m", "o2o.cli", "-m", f"experiment=study/{name}/{preset}", *LAUNCHERS[launcher],
            f"hydra.sweep.dir={sweep_dir}", *extra, *overrides]


def study_sweep_dir(folder: Path, new: bool) -> Path:
    """The study's latest sweep folder, so that the same command continues it (a study may span sessions), or a new
    timestamped one (``--new``, or none yet)."""
    earlier = sorted(p for p in folder.glob("*") if p.is_dir()) if folder.is_dir() else []
    if earlier and not new:
        return earlier[-1].resolve()
    return (folder / time.strftime("%Y-%m-%d_%H-%M-%S")).resolve()


def find_parent(client, experiment: str, sweep_dir: Path) -> str:
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], f"tags.sweep = 'true' and tags.sweep_dir = '{sweep_dir}'") if exp else []
    if not runs:
        raise UserError(f"no MLflow sweep run for {sweep_dir}: the sweep did not start (see its output above)")
    return runs[0].info.run_id


HEARTBEAT_S = 60  # how often a running study adds its time to its parent run: a killed part loses at most this


class StudyClock:
    """The study's wall time in all its parts, kept on its sweep's parent run (tag ``study_wall_s``) while the sweep
    runs, so that a part killed with its session still counts (a study may span sessions; a clock read only when the
    command returns lost every killed part). The first tick that finds the parent also records the command and adds
    this part's commit to ``study_commit``; each tick writes the runs finished since the last one to the study's
    records (o2o.archive), so that a machine lost with its session loses no finished run."""

    def __init__(self, client, experiment: str, sweep_dir: Path, command: str, commit: str,
                 records: Path | None = None, full_records: bool = False):
        self.client, self.experiment, self.sweep_dir = client, experiment, sweep_dir
        self.full_records = full_records
        self.command, self.commit = command, commit
        self.records = records  # where each tick keeps the runs that have finished (o2o.archive), if anywhere
        self.records_error: str | None = None  # the last failure to write them, said once
        self.start = time.time()
        self.earlier: float | None = None  # the parts before this one, read from the parent at the first tick

    def tick(self, parent: str | None = None) -> float:
        """Write earlier parts + this part's time so far to the parent (found by the sweep folder once the sweep has
        made it); returns that total."""
        parent = parent or find_parent(self.client, self.experiment, self.sweep_dir)
        if self.earlier is None:
            tags = self.client.get_run(parent).data.tags
            commit = tags.get("study_commit")
            if commit and self.commit not in commit:  # a study continued at a later commit
                commit = f"{commit}; continued at {self.commit}"
            self.client.set_tag(parent, "study_command", self.command)
            self.client.set_tag(parent, "study_commit", commit or self.commit)
            self.earlier = float(tags.get("study_wall_s", 0))
        total = self.earlier + time.time() - self.start
        self.client.set_tag(parent, "study_wall_s", f"{total:.0f}")
        if self.records is not None:
            self.keep_records(parent)
        return total

    def keep_records(self, parent: str) -> None:
        """The finished runs into the records; a failure is said once (the sweep goes on, and so do the ticks)."""
        from o2o.archive import write_records

        try:
            write_records(self.client, parent, self.records, self.full_records)
            self.records_error = None
        except Exception as err:
            if str(err) != self.records_error:
                print(f"warning: the study's records in {self.records} were not written: {type(err).__name__}: "
                      f"{err}", file=sys.stderr, flush=True)
            self.records_error = str(err)


def run_counting(cmd: list[str], clock: StudyClock, every: float = HEARTBEAT_S) -> int:
    """Run the sweep command, ticking the study's clock every ``every`` seconds; its exit status. A tick that fails
    (no parent run yet, the store briefly unreachable) is retried at the next one."""
    with subprocess.Popen(cmd) as proc:
        while True:
            try:
                return proc.wait(timeout=every)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(Exception):  # the sweep goes on; the clock catches up at the next tick
                    clock.tick()
            except BaseException:  # Ctrl-C: as subprocess.call does, stop the sweep command too, and count its time
                proc.kill()
                with contextlib.suppress(Exception):
                    clock.tick()
                raise


def checkout_commit(folder: Path) -> str:
    """The commit of the git checkout holding ``folder``, marked when files that change what a sweep runs differ from
    it (docs/ does not: a study's own pages land there, and would mark the next part of the study)."""
    def git(*args) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True, cwd=folder).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ":(top)", ":(top,exclude)docs")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return commit + (" (with uncommitted changes)" if dirty else "")


def git_commit() -> str:
    """The commit of the o2o checkout the study runs, wherever the command runs from; run from a git checkout of
    one's own (one's algorithms, envs and presets), that checkout's commit too."""
    def toplevel(folder: Path) -> Path | None:
        try:
            done = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, cwd=folder)
        except OSError:  # no git here
            return None
        return Path(done.stdout.strip()).resolve() if done.returncode == 0 else None

    code = Path(__file__).resolve().parent
    checkout = code.parents[1]  # src/o2o -> the checkout's root, in a checkout (an editable install)
    ours = checkout_commit(code) if toplevel(code) == checkout else "unknown (not a git checkout)"
    if ours.startswith("unknown"):  # installed into site-packages (perhaps inside a checkout of one's own)
        from importlib.metadata import PackageNotFoundError, version

        try:
            ours = f"o2o {version('o2o')}, installed (not a git checkout)"
        except PackageNotFoundError:
            pass
    here = toplevel(Path.cwd())
    if here is not None and here != checkout:
        return f"{ours}; the folder it ran from, {here}: {checkout_commit(here)}"
    return ours


# --------------------------------------------------------------------------- the paper's claims


def claims(seeds: dict[str, dict[str, list[float]]]) -> list[tuple[str, str, str]]:
    """The paper's claims that this study's numbers can check: (claim, verdict, the numbers), judged by the one rule
    of o2o.statistics on each algorithm's per-seed values (``seeds[algo][name]``: ``gap``, Q(s, a~pi) - V_ref after
    pre-training; ``bound_rate``; ``below_v_ref``; ``dip``; ``improvement``, o2o.report.RunRecord.improvement;
    ``regret``). Calibration is the paper's (Def. 4.1): the
    learned policy's Q, Q(s, a ~ pi), against the behaviour policy's return V_ref(s)."""
    from o2o.report import DIP_FRACTION

    out = []
    calql, cql = seeds.get("calql"), seeds.get("cql")

    def has(values) -> bool:
        return values is not None and any(not math.isnan(v) for v in values)

    below = S.mean_interval(cql["gap"]) if cql and has(cql["gap"]) else None
    if below is not None:  # the premise stands on CQL alone: a study of CQL's seeds answers it
        out.append(("After pre-training, CQL's policy Q is below the Monte-Carlo return",
                    S.verdict(below, 0.0, "below"),
                    f"CQL: mean Q(s, a~pi) - V_ref = {below.format(2)}; Q(s, a_data) < V_ref on "
                    f"{S.mean_interval(cql['below_v_ref']).format(2)} of the fixed batch"))
    if calql and below is not None and has(calql["gap"]):
        verdict, p = S.improves(calql["gap"], cql["gap"])
        out.append(("Cal-QL's policy Q is higher relative to the return than CQL's (calibrated)", verdict,
                    f"P(Cal-QL's Q(s, a~pi) - V_ref > CQL's) = {p.format(2)}; means: Cal-QL "
                    f"{S.mean_interval(calql['gap']).format(2)}, CQL {below.format(2)}"))
    if calql and cql and has(calql["bound_rate"]) and has(cql["bound_rate"]):
        verdict, p = S.improves(calql["bound_rate"], cql["bound_rate"], higher_is_better=False)
        out.append(("Cal-QL's bound leaves fewer policy Q-values below V_ref than CQL has", verdict,
                    f"P(Cal-QL's fraction of Q(s, a~pi) < V_ref is lower) = {p.format(2)}; means: Cal-QL "
                    f"{S.mean_interval(calql['bound_rate']).format(3)}, CQL {S.mean_interval(cql['bound_rate']).format(3)}"))
    if calql and cql and has(calql["dip"]) and has(cql["dip"]):
        cql_dip = S.mean_interval(cql["dip"])
        verdict, p = S.improves(calql["dip"], cql["dip"])
        out.append(("CQL unlearns when fine-tuning starts (a dip), Cal-QL does not, or less",
                    S.combine([S.verdict(cql_dip, 0.0, "below"), verdict]),
                    f"dip (mean score in the first {DIP_FRACTION:.0%} of fine-tuning minus the pre-trained score): CQL "
                    f"{cql_dip.format(3)}, Cal-QL {S.mean_interval(calql['dip']).format(3)}; P(Cal-QL's dip "
                    f"smaller) = {p.format(2)}"))
    if calql and cql and has(calql.get("improvement")) and has(cql.get("improvement")):
        verdict, p = S.improves(calql["improvement"], cql["improvement"])
        out.append(("Cal-QL improves faster than CQL once fine-tuning starts", verdict,
                    f"improvement (mean online score minus the pre-trained score, over the online evaluations): "
                    f"Cal-QL {S.mean_interval(calql['improvement']).format(3)}, CQL "
                    f"{S.mean_interval(cql['improvement']).format(3)}; P(Cal-QL's larger) = {p.format(2)}"))
    if calql and has(calql["regret"]):
        others = {a: v for a, v in seeds.items() if a != "calql" and has(v["regret"])}
        if others:
            parts = {a: S.improves(calql["regret"], v["regret"], higher_is_better=False) for a, v in sorted(others.items())}
            out.append(("Cal-QL has the lowest cumulative regret", S.combine(v for v, _ in parts.values()),
                        "; ".join(f"P(Cal-QL's regret lower than {a}'s) = {p.format(2)}" for a, (_, p) in parts.items())
                        + "; means: " + ", ".join(f"{a} {S.mean_interval(v['regret']).format(3)}"
                                                  for a, v in sorted(seeds.items()) if has(v["regret"]))))
    return out


PLAIN = "companion=plain"  # the companion study's baseline (conf/companion/plain.yaml)


def companion_claims(seeds: dict[str, dict[str, list[float]]]) -> list[tuple[str, str, str]]:
    """Each companion method against plain Cal-QL, by the one rule of o2o.statistics: does it lower the cumulative
    regret, does it raise the score after fine-tuning, and, where it retrains (OOO), does the retrained policy score
    higher than the fine-tuned one it was retrained from (OOO's claim: the exploitation policy beats the exploring
    one). ``seeds`` as :func:`study_seeds` gives it, keyed ``companion=<name>``."""
    plain = seeds.get(PLAIN)
    if not plain:
        return []
    out = []
    for name, v in sorted(seeds.items()):
        if name == PLAIN or not name.startswith("companion="):
            continue
        verdict, p = S.improves(v["regret"], plain["regret"], higher_is_better=False)
        out.append((f"`{name}` lowers Cal-QL's cumulative regret", verdict,
                    f"P(lower than plain) = {p.format(2)}; means: {S.mean_interval(v['regret']).format(3)} against "
                    f"{S.mean_interval(plain['regret']).format(3)}"))
        verdict, p = S.improves(v["final"], plain["final"])
        out.append((f"`{name}` raises Cal-QL's score after fine-tuning", verdict,
                    f"P(higher than plain) = {p.format(2)}; means: {S.mean_interval(v['final']).format(3)} against "
                    f"{S.mean_interval(plain['final']).format(3)}"))
        if any(not math.isnan(x) for x in v["retrained"]):
            verdict, p = S.improves(v["retrained"], v["final"])
            out.append((f"`{name}`: the retrained policy scores higher than the fine-tuned one it was retrained from",
                        verdict, f"P(retrained higher) = {p.format(2)}; means: retrained "
                        f"{S.mean_interval(v['retrained']).format(3)}, fine-tuned {S.mean_interval(v['final']).format(3)}"))
    return out


# --------------------------------------------------------------------------- the page


def study_seeds(records) -> dict[str, dict[str, list[float]]]:
    """Per configuration, the per-seed values the claims need: the report's table columns, and Q(s, a~pi) - V_ref
    and the bound rate at the end of pre-training. A configuration is named by its algorithm where the study has one
    per algorithm, else by what sets it apart (o2o.report's label, e.g. ``companion=qknn``)."""
    from o2o.report import BONUS, PER_SEED, config_label, group_runs, results_table

    groups, _ = group_runs(records)
    seeds = {row["config"] or row["algo"]: dict(row[PER_SEED]) for row in results_table(records)}
    for key, runs in groups.items():
        values = seeds[config_label(key, groups) or key[1]]
        values["improvement"] = [r.improvement() for r in runs]
        values["bonus"] = [r.mean(BONUS) for r in runs]
        values["retrained_gain"] = [a - b for a, b in zip(values["retrained"], values["final"])]
        for phase in M.PHASES:
            for f in COURSE:
                values[f"gap_{phase}_{f}"] = [r.at(M.calibration(phase, M.Q_POLICY), f)
                                              - r.at(M.calibration(phase, M.V_REF), f) for r in runs]
                values[f"bound_rate_{phase}_{f}"] = [r.at(M.calibration(phase, M.BOUND_RATE), f) for r in runs]
            for name in ("v_ref_mae", "v_ref_bias"):  # offline: one value after the fit; online: per finished episode
                values[f"{name}_{phase}"] = [r.mean(M.reference(phase, name)) for r in runs]
        end = COURSE[-1]  # the end of each phase: the claims' and the companion table's values
        values["gap"], values["bound_rate"] = values[f"gap_{M.OFFLINE}_{end}"], values[f"bound_rate_{M.OFFLINE}_{end}"]
        values["bound_rate_online"] = values[f"bound_rate_{M.ONLINE}_{end}"]
    return seeds


COURSE = (0.25, 0.5, 0.75, 1.0)  # where in each phase the page gives the fixed batch's calibration; the last is its end
COURSE_MEASURES = (("Q(s, a~pi) - V_ref", "gap", 1), ("share of Q(s, a~pi) below V_ref", "bound_rate", 2))


def calibration_course(seeds: dict[str, dict[str, list[float]]]) -> list[str]:
    """The why behind the calibration claims, per configuration and phase: on the fixed batch, the policy's Q against
    V_ref and the share of it below V_ref (where Cal-QL's bound lifts Q) at a quarter, half, three quarters and the
    end of the phase, means over seeds with rliable's 95% intervals. It says whether CQL's Q is below the return,
    whether it is still moving when the phase ends, and how often the bound binds."""
    rows = []
    for name in sorted(seeds):
        for phase in M.PHASES:
            for label, key, digits in COURSE_MEASURES:
                cells = [S.mean_interval(seeds[name][f"{key}_{phase}_{f}"]) for f in COURSE]
                if not all(math.isnan(c.point) for c in cells):
                    rows.append(f"| {name} | {phase} | {label} | " + " | ".join(
                        "-" if math.isnan(c.point) else c.format(digits) for c in cells) + " |")
    if not rows:
        return []
    return ["| | phase | on the fixed batch | " + " | ".join(f"{f:.0%} of the phase" for f in COURSE) + " |",
            "|---" * (len(COURSE) + 3) + "|", *rows]


# What each companion did, beside its verdicts: (column, study_seeds' values shown in it, digits)
COMPANION_EFFECTS = (
    ("policy Q below the run's V_ref after pre-training (bound rate)", ("bound_rate",), 3),
    ("the same after fine-tuning", ("bound_rate_online",), 3),
    ("bonus added to the reward during fine-tuning (mean)", ("bonus",), 3),
    ("V_ref - return after pre-training: MAE, mean", ("v_ref_mae_offline", "v_ref_bias_offline"), 2),
    ("the same on the online episodes: MAE, mean", ("v_ref_mae_online", "v_ref_bias_online"), 2),
    ("retrained minus fine-tuned score", ("retrained_gain",), 3),
)


def companion_effects(seeds: dict[str, dict[str, list[float]]]) -> list[str]:
    """A table of what each variant of a companion study did (means over seeds, rliable 95% intervals): how often
    Cal-QL's bound binds on the fixed batch, the exploration bonus it added, how far a learned or single-threshold
    V_ref is from the Monte-Carlo returns, and OOO's retraining gain; a column only where some variant has it."""
    if PLAIN not in seeds:
        return []

    def cell(values, keys, digits):
        parts = [S.mean_interval(values[k]) for k in keys]
        if all(math.isnan(i.point) for i in parts):
            return "-"
        return ", ".join(i.format(digits) for i in parts)

    def present(keys):
        return any(not math.isnan(x) for v in seeds.values() for k in keys for x in v.get(k, []))

    columns = [c for c in COMPANION_EFFECTS if present(c[1])]
    lines = ["| variant | " + " | ".join(c[0] for c in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name in [PLAIN, *sorted(n for n in seeds if n != PLAIN)]:
        lines.append(f"| {name} | " + " | ".join(cell(seeds[name], keys, d) for _, keys, d in columns) + " |")
    return lines


def machines_line(client, records) -> str:
    """The machines the runs ran on, from their ``machines`` tags (o2o.run_state.add_machine); where parts of some runs
    ran before runs recorded their machine, how many, and the machine this page is written on."""
    from o2o.run_state import MACHINES_TAG, NOT_RECORDED
    from o2o.runtime import machine

    seen, unrecorded = [], 0
    for record in records:
        value = client.get_run(record.run_id).data.tags.get(MACHINES_TAG)
        names = value.split("; ") if value else [NOT_RECORDED]
        unrecorded += NOT_RECORDED in names
        seen += [name for name in names if name != NOT_RECORDED and name not in seen]
    if not seen:
        return f"Machine: not recorded by its runs (this page was written on {machine()})"
    line = ("Machine: " if len(seen) == 1 else "Machines: ") + "; ".join(seen)
    if unrecorded:
        line += (f" ({unrecorded} of {len(records)} runs ran in part before runs recorded their machine; this page "
                 f"was written on {machine()})")
    return line


def _section(title: str, rows: list[str], caption: str) -> list[str]:
    """A page section: its table and the caption under it, nothing where the study has no rows for it."""
    return [f"## {title}", "", *rows, "", caption, ""] if rows else []


def write_page(client, experiment: str, parent: str, name: str, budget: str, out: Path, command: str,
               commit: str, wall_s: float | None = None) -> Path:
    from o2o.report import build_filter, write_report

    stem = f"{name}-{budget}"
    figures = out / stem
    result = write_report(client, experiment, build_filter(parent=parent), figures, log_to_mlflow=False)
    algos = {r.algo for r in result["records"]}
    if len({(r.env, r.algo) for r in result["records"]}) != len(algos):
        raise UserError(f"study {name}: the sweep's runs span several envs per algorithm; a study page compares "
                        "one env")
    seeds = study_seeds(result["records"])
    table = (figures / "table.md").read_text()
    preset = f"conf/experiment/study/{name}/{'cpu' if budget == SMOKE else budget}.yaml" + (
        " at the size of conf/experiment/smoke.yaml (a check that the study runs; its numbers mean nothing)"
        if budget == SMOKE else "")
    per = "variant" if PLAIN in seeds else "algorithm"
    counts = {label: len(v["regret"]) for label, v in seeds.items()}
    if len(set(counts.values())) <= 1:
        n = next(iter(counts.values()), 0)
        scale = f"{n} seed{'' if n == 1 else 's'} per {per}"
    else:
        scale = f"seeds per {per}: " + ", ".join(f"{label} {n}" for label, n in sorted(counts.items()))
    lines = [f"# Study `{name}` at the {budget} scale ({scale})", "", preset_header(name, budget),
             "", f"Preset: `{preset}`. MLflow: experiment `{experiment}`, sweep parent "
             f"run `{sweep_run_id(client, parent)}`, {result['runs']} finished run{'' if result['runs'] == 1 else 's'}."
             + plan_progress(client.get_run(parent).data.tags, result["records"]), "",
             "## The paper's claims at this scale", "",
             "| claim | verdict | numbers (point estimate [95% interval]) |", "|---|---|---|"]
    checked = claims(seeds) + companion_claims(seeds)
    lines += [f"| {c} | {v} | {n} |" for c, v, n in checked] or ["| (none: the study has no CQL runs with a calibration batch, nor a plain Cal-QL among companions) | | |"]
    lines += ["", S.RULE, ""]
    lines += _section("Calibration through each phase", calibration_course(seeds),
                      "Means over seeds with 95% stratified-bootstrap intervals (rliable), on each run's fixed batch of "
                      "offline states (o2o.stages.calibration): the learned policy's Q, Q(s, a ~ pi), minus the V_ref "
                      "the run uses for the same states (their Monte-Carlo return-to-go, unless a companion learns or "
                      "thresholds it), and the share of Q(s, a ~ pi) below that V_ref, where Cal-QL's max(Q, V_ref) "
                      "binds. Offline over gradient steps, online over env steps; each "
                      "value is the last one logged by that point of the phase.")
    lines += _section("What each variant did", companion_effects(seeds),
                      "Means over seeds with 95% stratified-bootstrap intervals (rliable). The bound rate is the fraction "
                      "of Q(s, a ~ pi) below the V_ref the run uses, on its fixed batch of offline states: where Cal-QL's "
                      "max(Q, V_ref) lifts Q. The V_ref errors are against the Monte-Carlo return-to-go of the same "
                      "states (o2o.reference), offline after the fit and online averaged over the finished episodes.")
    lines += [
              "## Results", "", table, "", "### Statistics (rliable)", "",
              (figures / "statistics.md").read_text(), ""]
    for png in sorted(figures.glob("*.png")):
        lines += [f"![{png.stem}]({stem}/{png.name})", ""]
    lines += ["## How this page was made", "", "```", command, "```", "",
              f"The same page, every number, from its records alone on any machine (no sweep, no store of one's "
              f"own): `o2o-study {name} --budget {budget} --page-from-records` (records: `{stem}/records`).", "",
              f"Commit: `{commit}`. {machines_line(client, result['records'])}. Written {time.strftime('%Y-%m-%d %H:%M %Z')}"
              + (f"; the sweep took {wall_s / 60:.0f} min in all its parts." if wall_s else "."), ""]
    page = out / f"{stem}.md"
    page.write_text("\n".join(lines))
    for path in (page, *result["files"]):
        client.log_artifact(parent, str(path), "study")
    client.set_tag(parent, "study", f"{name}/{budget}")
    return page


def plan_progress(parent_tags: dict[str, str], records: list) -> str:
    """How far the sweep is through the jobs its latest part plans (o2o.launchers.plan_tags), and which have no
    finished run yet, each by the overrides that tell the planned jobs apart; nothing where the plan is not recorded
    (a sweep started before sweeps recorded it, or by another sweeper)."""
    import json

    from o2o.archive import computing_overrides
    from o2o.tracking import PLANNED_JOBS_TAG, PLANNED_RUNS_TAG

    if PLANNED_RUNS_TAG not in parent_tags:
        return ""
    if PLANNED_JOBS_TAG not in parent_tags:
        return f" The sweep plans {parent_tags[PLANNED_RUNS_TAG]} runs (too many to list here)."
    jobs = [computing_overrides(job) for job in json.loads(parent_tags[PLANNED_JOBS_TAG])]
    finished = {computing_overrides(r.overrides) for r in records}
    missing = [job for job in jobs if job not in finished]
    done = len(jobs) - len(missing)
    line = f" {done} of the {len(jobs)} runs planned by the sweep {'has' if done == 1 else 'have'} finished"
    outside = len(finished - set(jobs))
    if outside:
        line += (f" (and {outside} finished run{' outside that plan is' if outside == 1 else 's outside that plan are'}"
                 " shown too)")
    if not missing:
        return line + "."
    shared = frozenset.intersection(*jobs)  # what every planned job sets: the study's preset and fixed overrides
    return line + "; not yet: " + ", ".join(" ".join(sorted(job - shared)) or "(the one job)" for job in missing) + "."


def sweep_run_id(client, parent: str) -> str:
    """The sweep's parent run as the study ran it: in a store its records were restored into, the original's id."""
    from o2o.archive import ARCHIVED_TAG

    return client.get_run(parent).data.tags.get(ARCHIVED_TAG, parent)


def page_from_records(name: str, budget: str, records: Path, out: Path, experiment: str) -> Path:
    """The study's page written from its records alone, on any machine: they are restored into a new store in a
    temporary folder (no sweep, no launcher, no MLflow store of one's own), and the page is written from it with the
    command, commits and wall time the records keep."""
    import tempfile

    from mlflow.tracking import MlflowClient

    from o2o.archive import PARENT_FILE, restore_records
    from o2o.tracking import ensure_experiment

    if not (records / PARENT_FILE).exists():
        raise UserError(f"--page-from-records: {records} holds no study records ({PARENT_FILE} is missing): give the "
                        "folder the study wrote them to (--records DIR)")
    with tempfile.TemporaryDirectory(prefix="o2o-records-") as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        client = MlflowClient(uri)
        experiment_id = ensure_experiment(client, experiment, uri)
        parent, _ = restore_records(client, experiment_id, records, records)
        tags = client.get_run(parent).data.tags
        if tags.get("study", f"{name}/{budget}") != f"{name}/{budget}":
            raise UserError(f"{records} are the records of study {tags['study']}, not {name}/{budget}: give that "
                            "study's name and budget, or its own records (--records DIR)")
        command = tags.get("study_command") or f"o2o-study {name} --budget {budget}"
        commit = tags.get("study_commit") or "not recorded"
        wall = float(tags["study_wall_s"]) if "study_wall_s" in tags else None
        return write_page(client, experiment, parent, name, budget, out, command, commit, wall)


# --------------------------------------------------------------------------- entry point


def adopt_searchpath(argv: list[str]) -> list[str]:
    """``hydra.searchpath=[file://...]`` given to o2o-study: its folders join ``O2O_CONFIG_PATH``, which this process
    (the study's presets) and the sweep it starts both read."""
    from o2o.config_sources import folders

    if not any(a.lstrip("+").startswith("hydra.searchpath=") for a in argv):
        return argv
    os.environ[CONFIG_PATH_ENV] = os.pathsep.join(str(f) for f in folders(argv))  # pkg:// sources as their folders
    return [a for a in argv if not a.lstrip("+").startswith("hydra.searchpath=")]


def main(argv: list[str] | None = None) -> None:
    argv = adopt_searchpath(list(sys.argv[1:] if argv is None else argv))
    studies = available()
    parser = OneLineParser(prog="o2o-study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help=f"one of: {', '.join(studies)}")
    parser.add_argument("--budget", default="cpu",
                        help="cpu (about an hour on a 2-core CPU), paper, or smoke (the cpu preset at the smoke size)")
    parser.add_argument("--launcher", default="local", choices=sorted(LAUNCHERS),
                        help="local: one job after another here; local-parallel: all at once; slurm: sbatch jobs")
    parser.add_argument("--out", default=str(PAGE_DIR), help="where the page goes (default docs/results; smoke pages: "
                                                             "outputs/study-pages, never docs/results)")
    parser.add_argument("--experiment", default="o2o", help="the MLflow experiment the runs go to")
    parser.add_argument("--page-only", metavar="PARENT_RUN_ID", help="write the page of a sweep that has run")
    parser.add_argument("--records", metavar="DIR",
                        help="where the study keeps its finished runs, to commit with the page and restore on another "
                             "machine (default: <out>/<name>-<budget>/records)")
    parser.add_argument("--page-from-records", action="store_true",
                        help="write the page from the study's records alone (restored into a temporary store): no "
                             "sweep, no launcher, no MLflow store needed")
    parser.add_argument("--full-records", action="store_true",
                        help="records keep every metric with its timestamps, system metrics included (by default "
                             "what the pages, the report and the regret read)")
    parser.add_argument("--new", action="store_true",
                        help="start a new sweep folder (by default the same command continues the study's latest one)")
    parser.add_argument("overrides", nargs="*", help="extra overrides for every job, e.g. hydra.sweeper.params.seed=0,1")
    args = parser.parse_intermixed_args(argv)
    try:
        run_study(args, studies)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def run_study(args, studies: dict[str, list[str]]) -> None:
    from mlflow.tracking import MlflowClient

    from o2o.tracking import default_tracking_uri, outputs_dir

    if args.name not in studies:
        raise UserError(f"no study {args.name!r}: choose one of {', '.join(studies)}")
    if args.budget not in studies[args.name]:
        raise UserError(f"study {args.name} has no {args.budget!r} budget: choose one of {', '.join(studies[args.name])}")
    out = Path(args.out)
    if args.budget == SMOKE:  # a smoke page shows that the page works, not a claim: never among the results
        if args.out == str(PAGE_DIR):
            out = outputs_dir() / "study-pages"
        elif PAGE_DIR.resolve() in (out.resolve(), *out.resolve().parents):
            raise UserError(f"a smoke-budget page proves that the page works, not a claim: write it outside "
                            f"{PAGE_DIR} (--out), e.g. the default {outputs_dir() / 'study-pages'}")
    out.mkdir(parents=True, exist_ok=True)
    records = Path(args.records) if args.records else out / f"{args.name}-{args.budget}" / "records"
    from o2o.archive import PARENT_FILE

    if args.page_from_records:
        if args.page_only or args.new or args.overrides:
            raise UserError("--page-from-records writes the page of the records as they are: it takes no --page-only, "
                            "--new or overrides")
        page = page_from_records(args.name, args.budget, records, out, args.experiment)
        print(f"results page: {page}, from the records in {records}")
        return
    if args.new and not args.page_only and (records / PARENT_FILE).exists():
        raise UserError(f"--new starts another sweep, and {records} keeps the records of the study's earlier one: "
                        "give the new sweep its own records folder (--records DIR)")
    from o2o.cli import sweep_param

    overrides = [*map(sweep_param, args.overrides), f"mlflow_experiment={args.experiment}"]
    from o2o.tracking import check_store, open_store, store_not_made

    uri = default_tracking_uri()
    check_store(uri)
    if args.page_only and store_not_made(uri):
        raise UserError(f"--page-only {args.page_only}: the store {uri} does not exist: set MLFLOW_TRACKING_URI to the "
                        "store the sweep logged to")
    client = MlflowClient(uri) if args.page_only else open_store(uri)  # a sweep's store is made here if new
    wall, code = None, 0
    if args.page_only:
        parent = args.page_only
        from mlflow.exceptions import MlflowException

        try:
            tags = client.get_run(parent).data.tags
        except MlflowException:
            raise UserError(f"--page-only {parent}: no such run in the store {default_tracking_uri()}: give the "
                            "sweep's parent run id (the study printed it; tags.sweep = 'true' in MLflow)") from None
        if tags.get("sweep") != "true":
            what = f"a run of sweep {tags['mlflow.parentRunId']}" if "mlflow.parentRunId" in tags else "a single run"
            raise UserError(f"--page-only {parent}: that is {what}, not a sweep's parent run: give the sweep's parent "
                            "run id (the study printed it; tags.sweep = 'true' in MLflow)")
        command = tags.get("study_command") or f"o2o-study {args.name} --budget {args.budget}  # sweep overrides: " + \
            tags.get("overrides", "?")
        commit = tags.get("study_commit") or git_commit() + " (when the page was written)"
        wall = float(tags["study_wall_s"]) if "study_wall_s" in tags else None
    else:
        commit = git_commit()  # the code the sweep runs, before any later edit
        folder = f"{args.name}-{args.budget}" + ("" if args.experiment == "o2o" else f"-{args.experiment}")
        sweep_dir = study_sweep_dir(outputs_dir() / "studies" / folder, args.new)
        if sweep_dir.exists():
            print(f"continuing the sweep in {sweep_dir} (finished jobs are kept, unfinished ones resume; --new "
                  "starts another)", flush=True)
        cmd = sweep_command(args.name, args.budget, args.launcher, sweep_dir, overrides)
        from o2o.cli import checked_sweep

        checked_sweep(cmd[cmd.index("o2o.cli") + 2:])  # a bad override stops here: nothing restored, no parent run
        restore(client, args.experiment, sweep_dir, records, args.name, args.budget)
        print("running:", shlex.join(cmd), flush=True)
        command = shlex.join(["o2o-study", *(argv_of(args))])
        if os.environ.get(CONFIG_PATH_ENV):  # one's own config folders: the command reruns only with them
            command = f"{CONFIG_PATH_ENV}={shlex.quote(os.environ[CONFIG_PATH_ENV])} {command}"
        if Path.cwd().resolve() != Path(__file__).resolve().parents[2]:  # one's own env modules and relative data paths
            command = f"cd {shlex.quote(str(Path.cwd()))} && {command}"
        clock = StudyClock(client, args.experiment, sweep_dir, command, commit, records, args.full_records)
        started_ms = int(time.time() * 1000)
        code = run_counting(cmd, clock)
        parent = find_parent(client, args.experiment, sweep_dir)
        print(this_part(client, parent, started_ms), flush=True)
        from o2o.archive import children

        finished = children(client, parent)
        if code and finished:
            print(f"the sweep exited with status {code}; the page shows the runs that finished", file=sys.stderr)
        wall = clock.tick(parent)
        commit = client.get_run(parent).data.tags["study_commit"]
        if not finished:  # a page of no runs would say nothing; the records of none keep nothing
            print(f"no run of the sweep has finished yet (it exited with status {code}), so no page is written: the "
                  "same command continues it", file=sys.stderr)
            raise SystemExit((128 - code if code < 0 else code) or 1)
    if args.page_only:
        from o2o.archive import write_records

        write_records(client, parent, records, args.full_records)
    page = write_page(client, args.experiment, parent, args.name, args.budget, out, command, commit, wall)
    print(f"results page: {page} (and in the sweep's MLflow run {parent}, artifacts study/); its runs' records: "
          f"{records}")
    if code:  # the page is written; the exit status still says the sweep did not finish (a signal: 128 + it)
        raise SystemExit(128 - code if code < 0 else code)


def collector_of(name: str, budget: str):
    """How the study's own collected dataset is collected again (o2o.archive.rebuild_dataset): as its preset's env
    collects it, when that is the dataset and the params the records name."""
    def collect(dataset_id: str, params: dict) -> None:
        from o2o.cli import compose_config
        from o2o.config import validate
        from o2o.data.build.collectors import collect_dataset, collector_params

        env = validate(compose_config([f"experiment=study/{name}/{'cpu' if budget == SMOKE else budget}"])).env
        if env.dataset.id != dataset_id or env.dataset.collector is None or collector_params(env) != params:
            raise UserError(f"{dataset_id}, collected with {params}, is not the dataset the preset of study {name} "
                            "collects: restore its archive from the machine that built it")
        collect_dataset(env)
    return collect


def restore(client, experiment: str, sweep_dir: Path, records: Path, name: str = "", budget: str = "") -> None:
    """The study's records of finished runs that this store lacks (a study continued on another machine), restored
    into the sweep's parent run before the sweep starts, so that their jobs do nothing; the data they trained on
    first (o2o.archive.restore_dataset)."""
    from o2o.archive import restore_dataset, restore_records
    from o2o.tracking import default_tracking_uri, ensure_experiment, open_store, store_lock

    if not records.is_dir():
        return
    for dataset_id in restore_dataset(records, collector_of(name, budget) if name else None):
        print(f"restored the dataset {dataset_id} that the study's runs trained on, from {records}", flush=True)
    uri = default_tracking_uri()
    open_store(uri)  # a new store made under its lock (jobs may make it at the same time)
    with store_lock(uri):
        experiment_id = ensure_experiment(client, experiment, uri)
    parent, restored = restore_records(client, experiment_id, sweep_dir, records)
    if restored:
        print(f"restored {restored} finished runs from {records} into MLflow run {parent}: a job of this sweep that "
              "computes what one of them computed finds it there and does nothing", flush=True)


def this_part(client, parent: str, started_ms: int) -> str:
    """What this part of a sweep left in the store: the runs that finished in it, those that ended unfinished in
    it, those still marked running (killed hard, in this part or an earlier one), and the finished runs it left as
    they were."""
    from o2o.archive import ARCHIVED_TAG, children

    runs = children(client, parent, status=None)
    ended_here = [r for r in runs if r.info.end_time is not None and r.info.end_time >= started_ms]
    finished = sum(r.info.status == "FINISHED" for r in ended_here)
    open_runs = sum(r.info.status in ("RUNNING", "SCHEDULED") for r in runs)
    kept = [r for r in runs if r.info.status == "FINISHED" and r not in ended_here]
    restored = sum(ARCHIVED_TAG in r.data.tags for r in kept)
    return (f"this part of the sweep: {finished} runs finished; {len(ended_here) - finished} ended unfinished (failed, "
            f"interrupted or preempted: the same command continues the last two); {open_runs} still marked running "
            f"(killed hard, here or in an earlier part, or running elsewhere); {len(kept)} finished before and left "
            f"as they were ({restored} restored from the study's records)")


def argv_of(args) -> list[str]:
    argv = [args.name, "--budget", args.budget]
    if args.launcher != "local":
        argv += ["--launcher", args.launcher]
    if args.experiment != "o2o":
        argv += ["--experiment", args.experiment]
    if args.full_records:
        argv += ["--full-records"]
    return argv + list(args.overrides)


if __name__ == "__main__":
    main()
