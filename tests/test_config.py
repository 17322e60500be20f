import functools
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from conftest import ROOT, compose
from o2o.config import ConfigError, validate

CONF = ROOT / "conf"
ENVS = sorted(p.stem for p in (CONF / "env").glob("*.yaml"))
ALGOS = sorted(p.stem for p in (CONF / "algo").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def _domain_of(env: str) -> str:
    defaults = yaml.safe_load((CONF / "env" / f"{env}.yaml").read_text())["defaults"]
    return next(d for d in defaults if isinstance(d, str) is False and "override /domain@_global_.domain" in d)[
        "override /domain@_global_.domain"]


# every env option with every algorithm would be hundreds of compositions; what an algorithm's composition depends on
# is the env's domain (its per-domain file), so: every env option once, and every algorithm on one env of each domain
ONE_ENV_PER_DOMAIN = sorted({_domain_of(env): env for env in reversed(ENVS)}.values())
PAIRS = sorted({(env, "calql") for env in ENVS} | {(env, algo) for env in ONE_ENV_PER_DOMAIN for algo in ALGOS})


@pytest.mark.parametrize("env,algo", PAIRS)
def test_every_env_and_algo_option_composes_and_validates(env, algo):
    cfg = validate(compose([f"env={env}", f"algo={algo}"]))
    assert cfg.env.name == env and cfg.algo.name == algo and cfg.domain.name == _domain_of(env)
    if algo in ("calql", "cql"):
        assert cfg.algo.calibrate_offline == cfg.algo.calibrate_online == (algo == "calql")


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("algo", ALGOS)
def test_every_experiment_preset_composes_with_every_algo(experiment, algo):
    validate(compose([f"experiment={experiment}", f"algo={algo}"]))


def _keys(node, prefix=""):
    """Dotted paths of the leaves a YAML mapping sets (a dict value that is empty counts as a leaf)."""
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from _keys(value, path + ".")
        else:
            yield path


def _writes(path: Path) -> tuple[str, set[str]]:
    """(owner group, absolute key paths) of one config file under conf/."""
    rel = path.relative_to(CONF)
    text = path.read_text()
    body = {k: v for k, v in (yaml.safe_load(text) or {}).items() if k != "defaults"}
    group = rel.parts[0] if len(rel.parts) > 1 else "(root)"
    if "@package _global_" in text:
        return group, set(_keys(body))
    prefix = "" if group == "(root)" else group + "."
    return group, {prefix + k for k in _keys(body)}


def test_every_config_key_has_one_owner_and_one_default():
    """A key is written by the files of one group only (experiment presets and companion methods excepted, they
    exist to combine groups), and a value is never both a schema default and a YAML value."""
    from dataclasses import MISSING, fields, is_dataclass

    from omegaconf import MISSING as OMEGA_MISSING

    from o2o.agents.registry import load_builtin
    from o2o.config import Config

    owners: dict[str, set[str]] = {}
    for path in CONF.rglob("*.yaml"):
        group, keys = _writes(path)
        if group in ("experiment", "companion", "hydra"):
            continue
        for key in keys:
            owners.setdefault(key, set()).add(group)
    shared = {k: g for k, g in owners.items() if len(g) > 1}
    assert not shared, f"keys written by several groups: {shared}"
    assert all(key.split(".")[0] == next(iter(g)) for key, g in owners.items() if next(iter(g)) != "(root)")

    def schema_defaults(cls, prefix=""):
        for f in fields(cls):
            default = f.default
            if f.default_factory is not MISSING:  # containers and nested schemas
                value = f.default_factory()
                if is_dataclass(value):
                    yield from schema_defaults(type(value), f"{prefix}{f.name}.")
                    continue
                default = value
            if default not in (OMEGA_MISSING, None) and default != {} and default != []:
                yield f"{prefix}{f.name}"

    defaulted = set(schema_defaults(Config))
    for algorithm in load_builtin().values():
        defaulted |= set(schema_defaults(algorithm.schema, "algo."))
    assert not defaulted, f"schema fields with a real default (values belong in conf/): {sorted(defaulted)}"


def test_a_per_domain_algo_file_never_repeats_its_algorithms_own_keys():
    """A per-domain file sets what differs by domain; a key its algorithm sets it may only change (WSRL pre-trains
    locomotion with CQL, not Cal-QL), never restate."""
    from o2o.config_sources import per_domain_file_of

    for algo in ALGOS:
        chain, file = {}, CONF / "algo" / f"{algo}.yaml"
        while file is not None:  # the option and the options it extends (nearer ones win)
            data = yaml.safe_load(file.read_text()) or {}
            chain = {**{k: data[k] for k in data if k != "defaults"}, **chain}
            parents = [d for d in data.get("defaults", []) if isinstance(d, str) and d != "_self_"]
            file = CONF / "algo" / f"{parents[0]}.yaml" if parents else None
        for domain_file in (CONF / "algo" / "per_domain" / algo).glob("*.yaml"):
            cfg = validate(compose([f"algo={algo}", f"env={_an_env_of(domain_file.stem)}"]))
            data = yaml.safe_load(domain_file.read_text()) or {}
            own = {k: v for k, v in data.items() if k != "defaults"}
            # what the per-domain files it extends set, through theirs (it may set a key back to the algorithm's value)
            _, includes = per_domain_file_of(f"{algo}/{domain_file.stem}", [CONF])
            extended = {k: v for path in reversed(includes[1:])
                        for k, v in (yaml.safe_load(path.read_text()) or {}).items()}
            repeated = {k for k in own if k in chain and own[k] == chain[k] and extended.get(k, own[k]) == own[k]}
            assert not repeated, f"{domain_file} repeats {repeated}"
            assert cfg.domain.name == domain_file.stem


@functools.cache
def _an_env_of(domain: str) -> str:
    return next(env for env in ENVS if validate(compose([f"env={env}"])).domain.name == domain)


def test_paper_adroit_settings():
    cfg = validate(compose(["env=adroit_door"]))
    assert cfg.schedule.offline_steps == 20_000
    assert cfg.algo.critic_hidden == [512, 512, 512] and cfg.algo.actor_hidden == [512, 512]
    assert cfg.algo.cql_weight == 1.0 and cfg.algo.mixing_ratio == 0.5
    assert (cfg.algo.reward_scale, cfg.algo.reward_bias, cfg.domain.binary_from_success) == (10.0, 5.0, True)
    assert cfg.env.dataset.id == "D4RL/door/cloned-v2"


def test_smoke_overrides_the_domain_preset():
    cfg = validate(compose(["env=adroit_door", "experiment=smoke"]))
    assert cfg.schedule.offline_steps < 100 and cfg.algo.critic_hidden == [32, 32]


def test_the_values_a_run_uses_are_the_ones_logged():
    """What MLflow logs is the resolved config: the algorithm's own mixing ratio, no second copy."""
    from omegaconf import OmegaConf

    from o2o.tracking import flatten

    cfg = compose(["algo=sac"])
    params = flatten(OmegaConf.to_container(cfg, resolve=True))
    assert params["algo.mixing_ratio"] == 0.0 and "buffer.mixing_ratio" not in params
    assert validate(cfg).algo.mixing_ratio == params["algo.mixing_ratio"]


@pytest.mark.parametrize("override, message", [
    ("algo.mixing_ratio=1.5", "algo.mixing_ratio"),
    ("algo.mixing_ratio=-0.5", "algo.mixing_ratio"),
    ("algo.gamma=1.0", "algo.gamma"),
    ("algo.gamma=0", "algo.gamma"),
    ("schedule.offline_steps=-5", "schedule.offline_steps"),
    ("schedule.online_steps=-1", "schedule.online_steps"),
    ("domain.eval_episodes=0", "domain.eval_episodes"),
    ("algo.utd_ratio=0", "algo.utd_ratio"),
    ("precision=fp8", "precision"),
    ("buffer.batch_size=0", "buffer.batch_size"),
])
def test_out_of_range_values_fail_with_their_name(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        validate(compose([override]))


@pytest.mark.parametrize("override", ["algo.gamma=abc", "env.no_such_key=1", "buffer.batch_size=1.5"])
def test_wrong_types_and_unknown_keys_fail_at_composition(override):
    from hydra.errors import HydraException

    with pytest.raises(HydraException):
        compose([override])


@pytest.mark.parametrize("args, fragment", [
    (["algo.mixing_ratio=2"], "algo.mixing_ratio must be in [0, 1] or -1"),
    (["algo=nope"], "Could not find 'algo/nope'"),
    (["env.dataset.id=o2o/none/missing-v0", "env.dataset.collector=null"], "o2o/none/missing-v0"),
    (["algo=iql", "algo.n_actions=3"], "n_actions"),
])
def test_cli_stops_with_one_clear_message(main_py, args, fragment, tmp_path):
    proc = subprocess.run(main_py + args + [f"hydra.run.dir={tmp_path}/run"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    assert fragment in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_quickstart_preset_is_the_measured_small_run():
    cfg = validate(compose(["experiment=quickstart"]))
    assert (cfg.schedule.offline_steps, cfg.schedule.online_steps) == (3000, 3000)
    assert cfg.algo.actor_hidden == cfg.algo.critic_hidden == [64, 64] and cfg.env.name == "pointmaze_umaze"
    from o2o.runtime import choose_threads  # threads=0: one thread for networks this small, on any machine
    assert cfg.threads == 0 and choose_threads(cfg.buffer.batch_size, cfg.algo.critic_hidden, torch.device("cpu"))[0] == 1


def test_integral_scientific_notation_is_an_integer_where_the_key_is_one():
    from o2o.cli import compose_config, integral_scientific

    args = ["algo=iql", "schedule.offline_steps=1e3", "schedule.online_steps=2.5E4", "algo.critic_lr=3e-4",
            "seed=0,1e1", "schedule.log_interval=1.5e-1", "experiment=smoke"]
    out = integral_scientific(args)
    assert out == ["algo=iql", "schedule.offline_steps=1000", "schedule.online_steps=25000", "algo.critic_lr=3e-4",
                   "seed=0,10", "schedule.log_interval=1.5e-1", "experiment=smoke"]
    cfg = compose_config([o for o in out if not o.startswith(("seed=", "schedule.log_interval"))])
    assert cfg.schedule.offline_steps == 1000 and cfg.algo.critic_lr == 3e-4
    assert integral_scientific(["seed=1"]) == ["seed=1"]  # nothing to rewrite: no extra composition
