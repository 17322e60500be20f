"""Hydra entry point (``python src/main.py ...`` or the ``o2o`` console script) and the Python API."""
from __future__ import annotations

import logging
import sys
import warnings
from typing import Sequence

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from o2o import metrics as M
from o2o.config import register_schema, validate
from o2o.errors import ConfigError, DiskFull, Diverged, UserError, disk_full

log = logging.getLogger("o2o")
CONFIG_MODULE = "o2o_conf"

register_schema()
# conf/hydra/launcher/submitit_*.yaml keep the plugin's names and are checked against its schema on purpose
warnings.filterwarnings("ignore", message="(?s).*is validated against ConfigStore schema with the same name.*")


def _run(cfg: DictConfig, run_dir: str, overrides: Sequence[str], hydra_runtime, summary: bool = True,
         doubts: Sequence[str] = ()) -> dict[str, float]:
    from o2o.config_sources import per_domain_report
    from o2o.pipeline import PER_DOMAIN_TAG, run_pipeline
    from o2o.tracking import PRESET_TAG

    config = validate(cfg)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    per_domain, warn = per_domain_report(hydra_runtime, config.algo)
    tags = {"overrides": " ".join(overrides) or "(defaults)", PER_DOMAIN_TAG: per_domain,
            PRESET_TAG: hydra_runtime.choices.get("experiment") or "none"}
    if not warn:
        log.info("%s", per_domain)
    return run_pipeline(config, run_dir, resolved, tags=tags, summary=summary,
                        warnings=(*((per_domain,) if warn else ()), *doubts))


def not_a_reraised_database_error(record: logging.LogRecord) -> bool:
    """MLflow logs every failed SQL statement with its traceback, then raises it; what raises reaches the terminal
    as one line (or the sweep's report), so the traceback goes to the log file only."""
    return not (record.name == "mlflow.store.db.utils" and record.getMessage().startswith("SQLAlchemy database error"))


def quiet_mlflow_console() -> None:
    """MLflow's own console handler shows warnings and errors only (its INFO lines are routine)."""
    for handler in logging.getLogger("mlflow").handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.WARNING)
            if not_a_reraised_database_error not in handler.filters:
                handler.addFilter(not_a_reraised_database_error)


def routine_lines_to_the_log_file() -> None:
    """MLflow's routine INFO lines (database set-up, system metrics, input-example checks) go to the run's log file,
    not the terminal; its warnings and errors still reach both."""
    mlflow_logger = logging.getLogger("mlflow")
    quiet_mlflow_console()
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and handler not in mlflow_logger.handlers:
            mlflow_logger.addHandler(handler)


@hydra.main(config_path=f"pkg://{CONFIG_MODULE}", config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    import mlflow  # noqa: F401 - its loggers exist from here on

    routine_lines_to_the_log_file()
    try:
        # a sweep prints one summary at its end (launchers.MlflowSweepCallback), not one per job
        try:
            final = _run(cfg, hydra_cfg.runtime.output_dir, list(hydra_cfg.overrides.task), hydra_cfg.runtime,
                         summary=hydra_cfg.mode != RunMode.MULTIRUN, doubts=one_job_of_a_sweep(hydra_cfg))
        except Exception as err:  # the store's disk or the log's filled up mid-run: one line, as for a checkpoint
            if isinstance(err, UserError) or not disk_full(err):
                raise
            raise DiskFull(f"no space left on a disk the run writes to ({str(err).splitlines()[0][:200]}): the "
                           "store keeps what was committed and the run folder its last good checkpoint; free space, "
                           "then run the same command again to resume") from None
    except (UserError, Diverged) as err:
        if hydra_cfg.mode == RunMode.MULTIRUN:
            log.error("%s", err)
            raise  # the launcher records this job as failed and goes on with the others (o2o.launchers)
        if not remove_new_run_folder(hydra_cfg.runtime.output_dir, hydra_cfg.job.name):
            _log_to_files(err)  # a run folder that holds work keeps the reason in its log; the terminal gets it below
        print(f"error: {err}", file=sys.stderr)
        sys.exit(3 if isinstance(err, Diverged) else 2)
    headline = cfg.domain.metric  # the sweep's objective: the paper's score, fine-tuned if there was fine-tuning
    return final.get(M.summary(M.ONLINE, headline), final.get(M.summary(M.OFFLINE, headline)))


def one_job_of_a_sweep(hydra_cfg) -> list[str]:
    """A single run of a preset that sweeps (a study's: ``hydra.sweeper.params``) is one of its jobs, almost surely
    not what was meant: the run starts, and says so."""
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return []
    params = hydra_cfg.sweeper.get("params") or {}
    if not params:
        return []
    preset = hydra_cfg.runtime.choices.get("experiment")
    swept = " ".join(f"{key}={value}" for key, value in params.items())
    _, name, budget = (preset.split("/") + ["", "", ""])[:3] if preset and preset.startswith("study/") else ("", "", "")
    study = f", or o2o-study {name}" + (f" --budget {budget}" if budget != "cpu" else "") if name and budget else ""
    return [f"{f'experiment={preset}' if preset else 'the config'} sweeps {swept} (hydra.sweeper.params); without -m "
            f"this runs one job, with this command's values or the config's: add -m to run the sweep{study}"]


_EXISTING_RUN_FOLDERS: set[str] = set()  # the single job's run folder and its parents that existed before Hydra started


def remember_existing_folders(run_dir: str | None) -> None:
    from pathlib import Path

    if run_dir is not None:
        folder = Path(run_dir).resolve()  # as Hydra makes it: relative to here, no ~ expansion
        _EXISTING_RUN_FOLDERS.update(str(f) for f in (folder, *folder.parents) if f.exists())


def remove_new_run_folder(output_dir: str, job_name: str) -> bool:
    """A job that stopped before its work began leaves no folder behind: the run folder this command created (and
    its parents it created, within the outputs folder), when this process holds its claim and it holds only what
    Hydra and the claim wrote. A folder that existed, another job's (its claim refused this one), or one that holds
    an MLflow run id or a checkpoint stays as it is. Returns whether the folder was removed."""
    import shutil
    from pathlib import Path

    from o2o.pipeline import RUN_CLAIM, holds_claim
    from o2o.tracking import outputs_dir

    folder = Path(output_dir).resolve()
    if not folder.is_dir() or str(folder) in _EXISTING_RUN_FOLDERS or not holds_claim(folder):
        return False
    if {p.name for p in folder.iterdir()} - {".hydra", RUN_CLAIM, f"{job_name}.log"}:
        return False
    for handler in logging.getLogger().handlers:  # Hydra's file handler writes into the folder
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == folder:
            handler.close()
    shutil.rmtree(folder, ignore_errors=True)
    stop, explicit = outputs_dir(), bool(_EXISTING_RUN_FOLDERS)  # hydra.run.dir given: its existing parents recorded
    for parent in folder.parents:
        if parent == stop or str(parent) in _EXISTING_RUN_FOLDERS or (not explicit and stop not in parent.parents):
            break
        try:
            parent.rmdir()  # only while empty
        except OSError:
            break
    return not folder.exists()


def _log_to_files(err: Exception) -> None:
    """The error into the run's log file (Hydra's file handler), not onto the console a second time."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s", (err,), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


SCIENTIFIC = r"[+-]?\d+(\.\d*)?[eE][+-]?\d+"


def integral_scientific(args: Sequence[str]) -> list[str]:
    """``key=1e3`` for an integer key becomes ``key=1000`` (RL step counts are written so); a value that is not a
    whole number stays as typed, to be refused with the reason. Sweeps' comma lists are rewritten value by value."""
    import re

    def whole(value: str) -> str | None:
        return str(int(float(value))) if re.fullmatch(SCIENTIFIC, value) and float(value).is_integer() else None

    candidates = [i for i, a in enumerate(args) if not a.startswith("-") and "=" in a
                  and any(whole(v) for v in a.split("=", 1)[1].split(","))]
    if not candidates:
        return list(args)
    from omegaconf import IntegerNode

    variants = sweep_variants([a for a in args if not a.startswith("-")])  # a sweep's first job stands for it
    first = variants[0][0] if variants else [a for a in args if not a.startswith("-")]
    typed = {args[i].split("=", 1)[0] for i in candidates}
    cfg = compose_config([a for a in first if not a.startswith(("hydra.", "hydra/")) and "=" in a
                          and "." not in a.split("=", 1)[0] and a.split("=", 1)[0] not in typed])  # groups: the schema
    out = list(args)
    for i in candidates:
        key, values = args[i].split("=", 1)
        parent, _, name = key.lstrip("+").rpartition(".")
        node = (OmegaConf.select(cfg, parent) if parent else cfg)
        node = node._get_node(name) if isinstance(node, DictConfig) and name in node else None
        if isinstance(node, IntegerNode):
            out[i] = f"{key}=" + ",".join(whole(v) or v for v in values.split(","))
    return out


def make_launchers_visible() -> None:
    """Hydra finds launchers by walking the ``hydra_plugins`` namespace's folders with pkgutil, which cannot list an
    editable install's import hook (``pip install -e .``): the o2o launchers would be "Unknown plugin class" unless
    ``src/`` happens to be on sys.path (``python src/main.py``). Their real folder joins the namespace's path."""
    import importlib.util
    from pathlib import Path

    import hydra_plugins

    spec = importlib.util.find_spec("hydra_plugins.o2o_launcher")
    folder = str(Path(spec.origin).parent.parent) if spec and spec.origin else None
    if folder and folder not in list(hydra_plugins.__path__):
        hydra_plugins.__path__.append(folder)


def main() -> None:
    from o2o.checkpoints import catch_interrupts

    make_launchers_visible()
    catch_interrupts()
    logging.raiseExceptions = False  # a log file on a full disk must not print a traceback per line
    from o2o.config_sources import load_plugins, with_searchpath
    from o2o.tracking import check_store, default_tracking_uri

    try:
        sys.argv[1:] = with_searchpath(hydra_flags_first(map(sweep_param, sys.argv[1:])))  # O2O_CONFIG_PATH's too
        if load_plugins(sys.argv[1:]):  # the algorithms of one's own config folders, before anything composes
            register_schema()
        given = sys.argv[1:]
        single = not any(arg.startswith("-") for arg in given)
        sweep = not single and set(a for a in given if a.startswith("-")) <= {"-m", "--multirun"}
        if single:
            run_dir_override(given)  # an unquoted '=' or ',' in the folder: its own line, before the syntax check's
        if single or sweep:
            check_override_syntax(given)
        sys.argv[1:] = integral_scientific(sys.argv[1:])
        args = sys.argv[1:]
        if single:  # a single job: check the config before Hydra starts
            preflight(for_preflight(args), run_dir_override(args))
            check_store(default_tracking_uri())  # one connection: a store that cannot work stops here, in seconds
            remember_existing_folders(run_dir_override(args))
        elif sweep:
            check_sweep([a for a in args if a not in ("-m", "--multirun")])
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    try:
        hydra_main()
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume from the last checkpoint", file=sys.stderr)
        sys.exit(130)
    from o2o.launchers import FAILED_JOBS, LAUNCHED_JOBS

    if FAILED_JOBS:  # the sweep ran every job; each failure was logged with its overrides
        overrides, error = FAILED_JOBS[0]
        others = f" and {len(FAILED_JOBS) - 1} more" if len(FAILED_JOBS) > 1 else ""
        message = str(error) if isinstance(error, (UserError, Diverged)) else f"{type(error).__name__}: {error}"
        print(f"error: {len(FAILED_JOBS)} of {len(LAUNCHED_JOBS)} jobs failed, the others' results are kept: "
              f"{message} (in the sweep's job with {overrides}){others}", file=sys.stderr)
        sys.exit(3 if all(isinstance(e, Diverged) for _, e in FAILED_JOBS) else 2)


SWEEP_PARAMS = "hydra.sweeper.params."
HYDRA_MODES = {"-m": "--multirun", "--multirun": "--multirun", "-r": "--run", "--run": "--run", "-c": "--cfg",
               "--cfg": "--cfg", "-i": "--info", "--info": "--info", "-sc": "--shell-completion",
               "--shell-completion": "--shell-completion"}


def sweep_param(override: str) -> str:
    """``hydra.sweeper.params.seed=0,1`` as Hydra takes it on the command line: ``++`` (a preset's params may hold
    the key or not; Hydra's own default holds none) and the value quoted (unquoted, Hydra reads the commas as a sweep
    over a key of its own and stops: "Sweeping over Hydra's configuration is not supported"). Any other override is
    left as it is."""
    key, sep, value = override.partition("=")
    if not (key.lstrip("+").startswith(SWEEP_PARAMS) and sep):
        return override
    swept = key.lstrip("+")[len(SWEEP_PARAMS):]
    if "." in swept:  # Hydra nests a dotted key under params, and its sweeper then cannot read it
        raise ConfigError(f"{key.lstrip('+')}: a sweep param with a dot cannot be given on the command line (Hydra "
                          f"nests it): sweep the key itself, -m {swept}={value.strip(chr(39) + chr(34))}")
    if "," in value and value[:1] not in "'\"":
        quote = "'" if "'" not in value else '"'
        value = f"{quote}{value}{quote}"
    return f"++{key.lstrip('+')}={value}"


def hydra_flags_first(args: Sequence[str]) -> list[str]:
    """``-m`` given after overrides (``python src/main.py experiment=smoke -m algo=a,b``) moves before them: Hydra's
    parser takes one run of overrides. Two of Hydra's modes at once (``-m`` and ``--cfg``) stop with one line."""
    args = list(args)
    modes = sorted({HYDRA_MODES[a.split("=", 1)[0]] for a in args if a.split("=", 1)[0] in HYDRA_MODES})
    if len(modes) > 1:
        raise ConfigError(f"{' and '.join(modes)} are two of Hydra's modes: give one of them")
    multirun = [a for a in args if a in ("-m", "--multirun")]
    return [*multirun, *(a for a in args if a not in ("-m", "--multirun"))]


def for_preflight(args: Sequence[str]) -> list[str]:
    """The overrides a job's config is composed from: Hydra's own settings aside, but for the config search path."""
    return [arg for arg in args if not arg.startswith(("hydra.", "hydra/", "+hydra", "~hydra"))
            or arg.startswith("hydra.searchpath=")]


def check_override_syntax(args: Sequence[str]) -> None:
    """A typo in an override's syntax (``algo=calql,,cql``, ``seed=range(0,3``): one line, not Hydra's report."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    for arg in args:
        if arg.startswith("-"):
            continue
        try:
            parser.parse_overrides([arg])
        except OverrideParseException as err:
            detail = [line.strip() for line in str(err).splitlines()
                      if line.strip() and not line.startswith(("Error parsing override", "See https://"))]
            raise ConfigError(f"override {arg!r} does not parse ({detail[0] if detail else 'a syntax error'}): see "
                              "Hydra's override grammar, e.g. key=a,b or 'key=range(0,3)'") from None


def checked_sweep(args: Sequence[str]) -> list[str]:
    """A sweep's overrides (after ``-m``) as its jobs get them (o2o-study's before it starts the sweep, as the
    sweep's own process does): syntax, whole numbers in scientific notation, then each job (:func:`check_sweep`)."""
    check_override_syntax(args)
    args = integral_scientific(args)
    check_sweep(args)
    return args


def check_sweep(args: Sequence[str]) -> None:
    """A sweep's jobs checked before it starts (o2o-study's too): its settings, each value of each swept key, the
    sweep's own params included (a study preset's ``hydra.sweeper.params``), and its store."""
    from o2o.tracking import check_store, default_tracking_uri

    check_sweep_settings(args)
    for variant, where in sweep_variants([*sweeper_param_overrides(args), *args]):
        try:
            preflight(for_preflight(variant), inert=False)  # a key may be read by some of a sweep's jobs
        except UserError as err:
            raise type(err)(f"{err}{where}") from None
    check_store(default_tracking_uri())


def sweeper_param_overrides(args: Sequence[str]) -> list[str]:
    """The jobs' overrides that the sweep's own params give (``hydra.sweeper.params``: a study preset's, or the
    command line's), but for the keys the command line gives, whose values replace them (Hydra's basic sweeper)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from o2o.report import override_key

    try:
        params = compose_config(list(args), return_hydra_config=True).hydra.sweeper.get("params") or {}
    except (HydraException, OmegaConfBaseException, AssertionError):  # the preflight says what is wrong
        return []
    given = {override_key(a) for a in args if "=" in a and not override_key(a).startswith("hydra")}
    return [f"{key}={value}" for key, value in params.items() if override_key(key) not in given]


def check_sweep_settings(args: Sequence[str]) -> None:
    """What only a sweep has: each key given once, each of its values once (a repeated value is the same job twice;
    Hydra keeps the last of a repeated key without a word), Hydra's own groups (the launcher) and a sweep folder
    that can be written, none of whose job folders another process holds."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from o2o.tracking import check_writable_folder

    swept = {}
    for override in OverridesParser.create().parse_overrides(list(args)):
        key = override.get_key_element()
        if key in swept:  # a later value of a key replaces a list of values: the list's jobs would be dropped
            raise ConfigError(f"{key} is given twice ({swept[key]} and {override.input_line}): Hydra would keep only "
                              "the last; give it once, with all its values (key=a,b)")
        if override.is_sweep_override():
            swept[key] = override.input_line
        try:
            values = list(override.sweep_string_iterator()) if override.is_sweep_override() else []
        except Exception:  # glob() and other sweeps that need the config to expand
            values = []
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise ConfigError(f"{override.input_line} lists {', '.join(repeated)} more than once: the same job would "
                              "run twice into one folder; list each value once")
    variants = sweep_variants(args)
    hydra_args = [a for a in (variants[0][0] if variants else []) if a.lstrip("+~").startswith(("hydra/", "hydra."))
                  and not a.startswith("hydra.searchpath=")]
    if hydra_args:
        try:
            cfg = compose_config([*for_preflight(variants[0][0]), *hydra_args], return_hydra_config=True)
        except (HydraException, OmegaConfBaseException) as err:
            raise ConfigError(_one_line_hydra_error(err, args)) from None
        check_writable_folder(str(cfg.hydra.sweep.dir), "hydra.sweep.dir")
        from pathlib import Path

        from o2o.pipeline import refuse_a_claimed_sweep_dir

        refuse_a_claimed_sweep_dir(Path(str(cfg.hydra.sweep.dir)))


def sweep_variants(args: Sequence[str]) -> list[tuple[list[str], str]]:
    """A sweep's overrides as jobs to check before it starts: the first value of every swept key, then each other
    value of each key in turn (not every combination: one bad value is found without composing them all). Each comes
    with the words that name its job in an error. A sweep Hydra's parser cannot expand is left to Hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(list(args))
        values = [list(o.sweep_string_iterator()) if o.is_sweep_override() else None for o in parsed]
    except Exception:  # glob() and other sweeps that need the config to expand
        return []

    def line(override, value) -> str:
        return f"{override.get_key_element()}={value}"

    base = [line(o, v[0]) if v else o.input_line for o, v in zip(parsed, values)]
    variants = [(base, "")]
    for i, (override, options) in enumerate(zip(parsed, values)):
        for value in (options or [])[1:]:
            job = [*base[:i], line(override, value), *base[i + 1:]]
            variants.append((job, f" (in the sweep's job with {line(override, value)})"))
    return variants


def preflight(overrides: Sequence[str], run_dir: str | None = None, inert: bool = True) -> None:
    """Compose, resolve and check the config as the job will, turning Hydra's multi-line errors into one line;
    ``inert``: refuse overrides the job does not read."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = compose_config(overrides)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(_one_line_hydra_error(err, overrides)) from None
    except AssertionError:  # OmegaConf asserts when an override sets a key under a null node
        raise ConfigError(_override_under_null(overrides)) from None
    import os

    try:
        path = OmegaConf.select(cfg, "env.dataset.path", default=None)
    except Exception:  # an interpolation that does not resolve: validate says so
        path = None
    if inert and isinstance(path, str) and path and not os.path.lexists(path):  # a single job's data is here
        where = "" if os.path.isabs(path) else f" (a relative path is read from the folder the command runs in: {os.path.abspath(path)})"
        raise ConfigError(f"env.dataset.path={path} does not exist{where}: give the D4RL HDF5 file (or the folder of "
                          "AWAC's files) to read")
    config = validate(cfg)
    refuse_borrowed_names(config, overrides)
    if inert:  # a single job, run here: its device must be here too (a sweep's jobs may run elsewhere)
        refuse_inert(config, [o for o in overrides if not o.startswith("hydra.")])
        from o2o.runtime import resolve_device

        resolve_device(config.device)
    from o2o.tracking import check_writable_folder, outputs_dir

    check_writable_folder(run_dir or str(outputs_dir()), "hydra.run.dir" if run_dir else "the outputs folder (O2O_OUTPUTS)")
    if config.env.dataset.id:  # a dataset to download or collect is written there; a present one is only read
        from o2o.data.minari import minari_is_local, minari_root

        if not minari_is_local(config.env.dataset.id):
            check_writable_folder(minari_root(), f"the Minari datasets folder (MINARI_DATASETS_PATH), where "
                                  f"{config.env.dataset.id} would be written,")
    if run_dir:  # an existing run dir refuses another job and another config before Hydra writes its records there
        from pathlib import Path

        from o2o.checkpoints import Checkpoints
        from o2o.pipeline import load_resume_state, refuse_a_claimed_run_dir

        if Path(run_dir).is_dir():
            refuse_a_claimed_run_dir(Path(run_dir))
        load_resume_state(Checkpoints(Path(run_dir)), OmegaConf.to_container(cfg, resolve=True), Path(run_dir))


def run_dir_override(args: Sequence[str]) -> str | None:
    """The last ``hydra.run.dir=`` value, unquoted; Hydra reads ``=`` and ``,`` in an unquoted value as syntax."""
    values = [arg.split("=", 1)[1] for arg in args if arg.startswith("hydra.run.dir=")]
    if not values:
        return None
    value = values[-1]
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    elif any(c in value for c in "=,"):
        raise ConfigError(f"hydra.run.dir={value}: Hydra reads '=' and ',' in a value as syntax; quote the path, "
                          f"e.g. 'hydra.run.dir=\"{value}\"', or choose a folder without them")
    if not value.strip():
        raise ConfigError("hydra.run.dir is empty (the run would write into the current folder): give a folder, or "
                          "leave it out for a dated folder under outputs/runs/")
    return value


def refuse_borrowed_names(config, overrides: Sequence[str]) -> None:
    """``algo.name`` and ``env.name`` label the run in MLflow, its folder and every report: a variant may take a name
    of its own, not the name of another algorithm or env (its runs would be counted as that one's)."""
    from o2o.config_sources import group_options

    for group, chosen in (("algo", config.algo.name), ("env", config.env.name)):
        if not any(o.lstrip("+").split("=", 1)[0] == f"{group}.name" for o in overrides):
            continue
        option = compose_config(overrides, return_hydra_config=True).hydra.runtime.choices[group]
        if chosen != option and chosen in group_options(group, overrides):
            raise ConfigError(f"{group}.name={chosen} is the name of another option ({group}={chosen}) while this run "
                              f"is {group}={option}: its runs would be counted as {chosen}'s; give the variant a name "
                              "of its own")


def refuse_inert(config, overrides: Sequence[str]) -> None:
    """A key typed on the command line that this run does not read stops it: its value would be logged as if it
    applied (presets may set such keys for the algorithms of a sweep that do read them)."""
    from o2o.config import inert_keys, inert_reason

    inert = inert_keys(config)
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if "=" not in override or "." not in key and key not in inert:
            continue
        why = inert_reason(key, inert)
        if why and not (key.endswith((".bonus", ".value")) or key in ("retrain.steps", "retrain.interval")):
            raise ConfigError(f"{key} does nothing in this run: {why}; drop the override")


def _override_under_null(overrides: Sequence[str]) -> str:
    """Which ``a.b.c=v`` has a null ``a.b`` in the config the other overrides compose (e.g. an env without a collector)."""
    from o2o.config import known_keys

    groups = [o for o in overrides if "." not in o.split("=", 1)[0]]
    cfg = compose_config(groups)
    nulls = {key for key in known_keys(cfg) if OmegaConf.select(cfg, key) is None}  # a null node is listed as a key
    for override in overrides:
        parts = override.split("=", 1)[0].lstrip("+").split(".")
        for depth in range(1, len(parts)):
            if ".".join(parts[:depth]) in nulls:
                chosen = [o for o in groups if o.split("=", 1)[0].lstrip("+") == parts[0]]
                return (f"{'.'.join(parts)}: {'.'.join(parts[:depth])} is null with "
                        f"{chosen[-1] if chosen else 'the defaults'}; drop the override")
    return f"an override sets a key under a null node: {' '.join(overrides)}"


def did_you_mean(key: str, cfg: DictConfig) -> str | None:
    """The key the user most likely meant: a close key of the same group first; else among keys with a close last
    name, one that the run reads (``algo.mixing_ratio`` before ``retrain.mixing_ratio`` when retraining is off)."""
    import difflib

    from o2o.config import inert_keys, inert_reason, known_keys, validate

    keys = known_keys(cfg)
    group = key.split(".")[0] + "."
    same_group = difflib.get_close_matches(key, [k for k in keys if k.startswith(group)], n=1, cutoff=0.75)
    if same_group:
        return same_group[0]
    leaf = key.rsplit(".", 1)[-1]
    by_word = [k for k in keys if k.startswith(group) and "." not in k[len(group):]  # algo.lr: algo.actor_lr, ...
               and difflib.get_close_matches(leaf, k[len(group):].split("_"), n=1, cutoff=0.6)]
    if 0 < len(by_word) <= 3:
        return " or ".join([", ".join(by_word[:-1]), by_word[-1]] if len(by_word) > 1 else by_word)
    leaves = difflib.get_close_matches(leaf, sorted({k.rsplit(".", 1)[-1] for k in keys}), n=3, cutoff=0.6)
    candidates = [k for k in keys if k.rsplit(".", 1)[-1] in leaves]
    try:
        inert = inert_keys(validate(cfg))
    except ConfigError:
        inert = {}
    read = [k for k in candidates if not inert_reason(k, inert)]
    ranked = sorted(read or candidates, key=lambda k: -difflib.SequenceMatcher(None, key, k).ratio())
    if ranked:
        return ranked[0]
    close = difflib.get_close_matches(key, keys, n=1)
    return close[0] if close else None


def _one_line_hydra_error(err: Exception, overrides: Sequence[str]) -> str:
    """Hydra's message, first line; an unknown key gets "did you mean" (never Hydra's "+key" hint, which would be ignored)."""
    import difflib
    import re

    text = str(err)
    cause = str(err.__cause__ or "")
    typed = re.search(r"Value '(.*)' of type '(\w+)' could not be converted to (\w+)\s+full_key: (\S+)", cause)
    if typed:
        value, _, expected, key = typed.groups()
        kind = {"Integer": "an integer", "Float": "a number", "Boolean": "true or false"}.get(expected, expected)
        numeric = re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", value) is not None
        hint = " (1e3 is accepted where it is a whole number)" if expected == "Integer" and numeric else ""
        given = next((o for o in overrides if o.split("=", 1)[0].lstrip("+") == key), key)
        return f"{given}: {key} must be {kind}, got {value!r}{hint}"
    listed = re.search(r"Invalid value assigned: (\w+) is not a ListConfig.*\s+full_key: (\S+)", cause, re.S)
    if listed:
        key = listed.group(2)
        given = next((o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+") == key), "?")
        example = {"extra_metrics": "[success_rate]", "obs_keys": "[observation]",
                   "target_bounds": "[null,0.5]"}.get(key.rsplit(".", 1)[-1], "[256,256]")  # else layer widths
        return f"{key} must be a list, e.g. {key}={example}, got {given!r}"
    if "Ambiguous value for argument" in text:  # key=a,b is a sweep
        given = re.search(r"Ambiguous value for argument '([^']+)'", text)
        return (f"{given.group(1) if given else 'a comma list'} lists several values, which is a sweep: add -m "
                "(python src/main.py -m ...), or give one value (a list is key=[a,b])")
    boolean = re.search(r"Value '(.*)' is not a valid bool.*\s+full_key: (\S+)", cause, re.S)
    if boolean:
        return f"{boolean.group(2)} must be true or false, got {boolean.group(1)!r}"
    if text.startswith("Error merging override ") and cause:  # a value of the wrong kind: say which, in one line
        return f"{text[len('Error merging override '):]}: {cause.splitlines()[0]}"
    in_yaml = re.search(r"In '([^']+)': ConfigKeyError raised while composing config:\s*Key '([^']+)' not in "
                        r"'(\w+)'\s+full_key: (\S+)", text)
    if in_yaml:  # a YAML (of one's own) sets a key its schema does not have
        source, leaf, schema, key = in_yaml.groups()
        close = difflib.get_close_matches(leaf, schema_fields(schema), n=1, cutoff=0.6)
        return (f"{source}.yaml sets {key}, which {schema} does not have: "
                + (f"did you mean {key.rpartition('.')[0] + '.' if '.' in key else ''}{close[0]}?" if close
                   else "remove it, or add it to the schema"))
    unknown = re.search(r"Could not override '([^']+)'", text)
    if unknown:
        key = unknown.group(1)
        close = did_you_mean(key, compose_config([o for o in overrides if not o.startswith(key + "=")]))
        return f"unknown key {key}" + (f": did you mean {close}?" if close else "")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    schema = re.search(r"(?:In '([^']+)': )?Could not find 'schema/algo/([^']+)'", lines[0]) if lines else None
    if schema:  # an algo YAML names a schema no algorithm registered: one's own module lacks or misnames it
        from o2o.agents.registry import ALGORITHMS

        yaml, name = schema.group(1) or "an algo YAML", schema.group(2)
        return (f"{yaml} names the schema {name!r} (/schema/algo@_here_: {name}), and no algorithm is registered as "
                f"{name!r}: the module beside it (algo/<name>.py in your config folder) must decorate its agent with "
                f"@register({name!r}, ItsConfig) (docs/extending.md); registered: {', '.join(sorted(ALGORITHMS))}")
    if len(lines) > 1 and lines[1].startswith("Available options"):  # a missing group option: list them
        options = []
        for line in lines[2:]:
            if line.startswith("Config search path"):
                break
            options.append(line)
        return f"{lines[0]} {lines[1]} {', '.join(options)}"
    return " ".join(lines[:2]) if lines else type(err).__name__

def schema_fields(schema_name: str) -> list[str]:
    """The fields of the config schema of that class name: an algorithm's (built-in or one's own, registered when
    its folder was loaded) or one of o2o.config's."""
    import dataclasses

    from o2o import config as schemas
    from o2o.agents.registry import ALGORITHMS

    candidates = [a.schema for a in ALGORITHMS.values()] + [v for v in vars(schemas).values() if isinstance(v, type)]
    schema = next((c for c in candidates if c.__name__ == schema_name and dataclasses.is_dataclass(c)), None)
    return [f.name for f in dataclasses.fields(schema)] if schema is not None else []


def compose_config(overrides: Sequence[str] = (), return_hydra_config: bool = False) -> DictConfig:
    """The composed (unvalidated) config for command-line style overrides, without running anything: the project's
    ``conf/`` and one's own config folders (``hydra.searchpath=`` among the overrides, ``O2O_CONFIG_PATH``), whose
    algorithms are imported first."""
    from hydra import compose, initialize_config_module

    from o2o.config_sources import load_plugins, with_searchpath

    overrides = with_searchpath(overrides)
    if load_plugins(overrides):
        register_schema()
    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=return_hydra_config)


def run(env: str = "pointmaze_umaze", algo: str = "calql", overrides: Sequence[str] = (),
        run_dir: str | None = None) -> dict[str, float]:
    """Run one job from Python, with the same config groups as the command line.

    >>> run(env="pointmaze_umaze", algo="calql", overrides=["experiment=smoke", "seed=1"])
    """
    import time

    import mlflow  # noqa: F401 - its loggers exist from here on

    quiet_mlflow_console()
    overrides = [f"env={env}", f"algo={algo}", *overrides]
    cfg = compose_config(overrides, return_hydra_config=True)
    hydra_runtime = cfg.hydra.runtime
    with open_dict(cfg):
        del cfg["hydra"]
    if run_dir is None:
        from o2o.config import job_id
        from o2o.tracking import outputs_dir

        run_dir = str(outputs_dir() / "runs" / env / algo / f"seed{cfg.seed}" /
                      f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_{job_id()}")
    return _run(cfg, run_dir, overrides, hydra_runtime)


if __name__ == "__main__":  # python -m o2o.cli, as o2o-study runs its sweeps
    main()
