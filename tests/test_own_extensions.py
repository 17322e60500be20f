"""A method, an env and a dataset of one's own, each in a file outside the project (examples/), and the pipeline
coming with them: the CLI, sweeps, o2o-study, MLflow, the compiled update, checkpoints and the exported policy. Also
the extension points themselves: the registry, the per-domain fallback, metric means per key, Gymnasium's checks."""
import json
import logging
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import ALGOS, ROOT, SMOKE, SMOKE_ANY_ENV, compose
from o2o import metrics as M
from o2o.buffers import Batch
from o2o.cli import compose_config
from o2o.config import validate
from o2o.errors import ConfigError

EXAMPLES = ROOT / "examples"
QUIET = ["mlflow.system_metrics=false", "progress=false"]


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    """examples/ copied elsewhere, with the dataset its env module writes."""
    folder = tmp_path_factory.mktemp("own") / "examples"
    shutil.copytree(EXAMPLES, folder, ignore=shutil.ignore_patterns("*.hdf5", "__pycache__"))
    subprocess.run([sys.executable, "point_reach.py", "point_reach.hdf5"], cwd=folder, check=True, capture_output=True)
    return folder


def searchpath(folder: Path) -> str:
    return f"hydra.searchpath=[file://{folder / 'conf'}]"


# --------------------------------------------------------------------------- the registry and the agent contract


def test_every_algorithm_option_is_a_registered_schema_with_its_agent():
    from o2o.agents.core import ActorCritic
    from o2o.agents.registry import ALGORITHMS, agent_class

    for algo in ALGOS:
        cfg = validate(compose([f"algo={algo}"])).algo
        assert any(type(cfg) is a.schema for a in ALGORITHMS.values()), algo
        assert issubclass(agent_class(cfg), ActorCritic)


def test_shared_code_names_no_algorithm():
    """The pipeline, the stages and the compiled update read the registry; no algorithm's name is written there."""
    names = {p.stem for p in (ROOT / "conf" / "algo").glob("*.yaml")}
    shared = [ROOT / "src" / "o2o" / f for f in ("pipeline.py", "agents/core.py", "agents/compiled.py",
                                                 "agents/registry.py", "stages/common.py", "stages/online.py",
                                                 "stages/offline.py", "config_sources.py")]
    for path in shared:
        text = path.read_text()
        for name in names:
            assert f'"{name}"' not in text and f"'{name}'" not in text, f"{path.name} names {name}"


def test_a_metric_emitted_on_one_update_in_n_is_logged_at_its_own_mean():
    from o2o.stages.common import MetricAverager

    averager = MetricAverager()
    for i in range(20):
        update = {"critic_loss": torch.tensor(float(i))}
        if i % 5 == 4:  # the delayed actor: updates 4, 9, 14, 19
            update["actor_loss"] = torch.tensor(10.0 * i)
        averager.add(update)
    means = averager.pop_means()
    assert means["critic_loss"] == pytest.approx(np.mean(range(20)))
    assert means["actor_loss"] == pytest.approx(10.0 * np.mean([4, 9, 14, 19]))
    # a checkpoint taken mid-window keeps the counts; one written before per-key counts reads as one count for all
    averager.add({"critic_loss": torch.tensor(1.0), "actor_loss": torch.tensor(3.0)})
    averager.add({"critic_loss": torch.tensor(3.0)})
    assert MetricAverager(averager.state()).pop_means() == {"critic_loss": 2.0, "actor_loss": 3.0}
    old = MetricAverager({"sums": {"critic_loss": torch.tensor(4.0)}, "count": 2})
    assert old.pop_means() == {"critic_loss": 2.0}


@pytest.mark.parametrize("algo", ["rlpd", "wsrl"])
def test_the_logged_temperature_is_the_one_the_agent_holds(algo, tmp_path, monkeypatch):
    """RLPD steps its temperature once per 20 updates, WSRL online once per 4: each flush logs the value the agent had,
    not that value divided by 20 or 4 (the mean over every update of the window)."""
    from o2o import run
    from o2o.stages.common import PhaseLoop

    held = {}
    flush = PhaseLoop.flush

    def recording(self, at):
        held[(self.phase, at)] = self.agent.alpha.item()
        flush(self, at)

    monkeypatch.setattr(PhaseLoop, "flush", recording)
    run(env="pointmaze_umaze", algo=algo, run_dir=str(tmp_path), overrides=[
        *SMOKE, *QUIET, "mlflow.log_models=false", "mlflow_experiment=o2o-alpha", "schedule.online_steps=1000",
        "schedule.eval_interval_online=0"])
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    (run_id,) = [r.info.run_id for r in client.search_runs(
        [client.get_experiment_by_name("o2o-alpha").experiment_id], f"tags.algo = '{algo}'")]
    logged = {m.step: m.value for m in client.get_metric_history(run_id, M.train(M.ONLINE, "alpha"))}
    assert len(logged) >= 3
    for step, value in logged.items():
        # online, a flush follows each episode (300 updates here: 15 temperature steps for RLPD, 75 for WSRL): the
        # logged value is their mean, which each step moves by about the learning rate (1e-4 to 3e-4) in relative
        # terms; the diluted mean was 20 (RLPD) or 4 (WSRL) times smaller
        assert value == pytest.approx(held[(M.ONLINE, step)], rel=2e-2), (step, value, held[(M.ONLINE, step)])


# --------------------------------------------------------------------------- per-domain values


def test_an_algorithm_without_a_per_domain_file_uses_its_own_values_and_says_so(own):
    from o2o.config_sources import per_domain_report

    cfg = compose_config(["env=point_reach", "algo=calql", searchpath(own)], return_hydra_config=True)
    algo = validate(compose_config(["env=point_reach", "algo=calql", searchpath(own)])).algo
    assert (algo.actor_hidden, algo.mixing_ratio, algo.reward_scale) == ([256, 256], -1.0, 1.0)  # cql.yaml's
    assert per_domain_report(cfg.hydra.runtime, algo) == (
        "per-domain values: none for calql on reach (no algo/per_domain/calql/reach.yaml): the algorithm's own values",
        False)
    door = compose_config(["env=adroit_door", "algo=calql"], return_hydra_config=True)
    line, _ = per_domain_report(door.hydra.runtime, validate(compose(["env=adroit_door", "algo=calql"])).algo)
    assert line.startswith("per-domain values: algo/per_domain/calql/adroit.yaml (extending cql/adroit): ")
    assert "critic_hidden=[512, 512, 512]" in line and "reward_scale=10.0" in line


def test_a_preset_of_ones_own_that_leaves_out_the_per_domain_values_it_extends_says_which_and_how_to_keep_them(
        tmp_path, caplog, own):
    """YAMLs of one's own extending calql (one through the other) run on their own values where they have no
    per-domain file (Hydra picks ``algo/per_domain/<its name>/<domain>``): the run warns which of calql's values it
    does not use, which its presets change, and the file that brings calql's in; with that file it runs on calql's
    values and its own, and says nothing more; an empty file keeps its own values, also without a word."""
    from o2o.config_sources import per_domain_report

    conf = tmp_path / "conf"
    (conf / "algo").mkdir(parents=True)
    (conf / "algo" / "calql_wide.yaml").write_text("defaults:\n  - calql\n  - _self_\n\nname: calql_wide\n"
                                                   "critic_hidden: [1024, 1024]\n")
    (conf / "algo" / "calql_wider.yaml").write_text("defaults:\n  - /algo/calql_wide@_here_\n  - _self_\n\n"
                                                    "name: calql_wider\nactor_hidden: [64, 64]\n")

    def report(*overrides, env="adroit_door", algo="calql_wider", folders=(conf,)):
        given = [f"env={env}", f"algo={algo}", f"hydra.searchpath=[{','.join(f'file://{f}' for f in folders)}]",
                 *overrides]
        config = validate(compose_config(given))
        runtime = compose_config(given, return_hydra_config=True).hydra.runtime
        return config.algo, per_domain_report(runtime, config.algo)

    algo, (line, warn) = report()
    assert (algo.actor_hidden, algo.critic_hidden, algo.reward_scale) == ([64, 64], [1024, 1024], 1.0)  # Adroit: 10
    file = conf / "algo" / "per_domain" / "calql_wider" / "adroit.yaml"
    assert warn and line == (
        "per-domain values: none for calql_wider on adroit (no algo/per_domain/calql_wider/adroit.yaml): the "
        "algorithm's own values; algo=calql_wider extends calql, whose values for the adroit domain (env=adroit_door) "
        "this run does not use: cql_weight=1.0, mixing_ratio=0.5, reward_scale=10.0, reward_bias=5.0; your presets "
        f"change actor_hidden to [64, 64], critic_hidden to [1024, 1024]. To use calql's, write {file} with "
        "`defaults: [/algo/per_domain/calql/adroit@_here_]` and then your actor_hidden, critic_hidden again (a "
        "per-domain file comes after the algorithm's YAML); to keep your own values on purpose, write that file empty")
    # values given on the command line as calql's are used, so not named
    _, (line, _) = report("algo.reward_scale=10", "algo.reward_bias=5")
    assert "does not use: cql_weight=1.0, mixing_ratio=0.5; your presets" in line
    # on a domain where calql has no values of its own, there is nothing to leave out
    assert report(env="point_reach", folders=(conf, own / "conf"))[1][1] is False
    # a run says so at its start, as a warning, and keeps the line in its MLflow tag
    from o2o import run

    with caplog.at_level(logging.WARNING, logger="o2o"):
        run(env="pointmaze_umaze", algo="calql_wide", run_dir=str(tmp_path / "run"), overrides=[
            searchpath(tmp_path), *SMOKE, *QUIET, "mlflow.log_models=false", "mlflow_experiment=o2o-preset",
            "schedule.online_steps=0"])
    (warned,) = [r.getMessage() for r in caplog.records if "extends calql" in r.getMessage()]
    assert warned.startswith("per-domain values: none for calql_wide on pointmaze")
    assert "whose values for the pointmaze domain (env=pointmaze_umaze) this run does not use" in warned
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    (logged,) = client.search_runs([client.get_experiment_by_name("o2o-preset").experiment_id])
    assert logged.data.tags["per_domain"] == warned
    # run again into the finished run's folder: nothing is computed, so nothing is warned again
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="o2o"):
        run(env="pointmaze_umaze", algo="calql_wide", run_dir=str(tmp_path / "run"), overrides=[
            searchpath(tmp_path), *SMOKE, *QUIET, "mlflow.log_models=false", "mlflow_experiment=o2o-preset",
            "schedule.online_steps=0"])
    assert not [r for r in caplog.records if "extends calql" in r.getMessage()]

    # a per-domain file of the preset in between is the one to include
    (conf / "algo" / "per_domain" / "calql_wide").mkdir(parents=True)
    (conf / "algo" / "per_domain" / "calql_wide" / "adroit.yaml").write_text(
        "defaults:\n  - /algo/per_domain/calql/adroit@_here_\n\ncritic_hidden: [1024, 1024]\n")
    _, (line, warn) = report()
    assert warn and "algo=calql_wider extends calql_wide, whose values for the adroit domain" in line
    assert "`defaults: [/algo/per_domain/calql_wide/adroit@_here_]` and then your actor_hidden again" in line
    algo, (line, warn) = report(algo="calql_wide")
    assert not warn and (algo.critic_hidden, algo.reward_scale) == ([1024, 1024], 10.0)

    file.parent.mkdir(parents=True)
    file.write_text("defaults:\n  - /algo/per_domain/calql_wide/adroit@_here_\n\nactor_hidden: [64, 64]\n")
    algo, (line, warn) = report()
    assert (algo.actor_hidden, algo.critic_hidden, algo.reward_scale) == ([64, 64], [1024, 1024], 10.0)
    assert not warn and line.startswith("per-domain values: algo/per_domain/calql_wider/adroit.yaml (extending "
                                        "calql_wide/adroit, calql/adroit, cql/adroit): ")
    file.write_text("")
    algo, (line, warn) = report()
    assert not warn and (algo.critic_hidden, algo.reward_scale) == ([1024, 1024], 1.0)


def test_the_projects_presets_keep_the_per_domain_values_of_what_they_extend():
    """A preset of the project (cql_sac, wsrl, ...) sets, on every domain where the algorithm it extends has
    per-domain values, each of those keys in its own per-domain files, to the parent's value unless its own file
    changes it, so that none falls back to a YAML's value; td3bc leaves ReBRAC's out on purpose."""
    import yaml

    from o2o.config_sources import extended_algorithms, per_domain_file_of

    def written(choice):  # the values of a per-domain file and those it includes; and its own
        _, chain = per_domain_file_of(choice, [ROOT / "conf"])
        values = [{k: v for k, v in (yaml.safe_load(path.read_text()) or {}).items() if k != "defaults"}
                  for path in chain]
        return {k: v for one in reversed(values) for k, v in one.items()}, (values[0] if values else {})

    algo_folder = ROOT / "conf" / "algo"
    own_recipe_everywhere = {"td3bc": "sfujim/TD3_BC's main.py sets the same values for every task"}
    checked, wrong = set(), []
    for path in sorted(algo_folder.glob("*.yaml")):
        parents = [p for p in extended_algorithms(path) if (algo_folder / f"{p}.yaml").is_file()]
        if not parents or path.stem in own_recipe_everywhere:
            continue
        checked.add(path.stem)
        for parent in parents:
            for domain in sorted(p.stem for p in (algo_folder / "per_domain" / parent).glob("*.yaml")):
                theirs, _ = written(f"{parent}/{domain}")
                ours, changed = written(f"{path.stem}/{domain}")
                wrong += [f"{path.stem}/{domain}: {k} (from {parent})" for k in theirs
                          if k not in ours or (k not in changed and ours[k] != theirs[k])]
    assert checked == {"calql", "cql_sac", "hybrid_rl", "rlpd", "wsrl"}
    assert wrong == []
    assert extended_algorithms(algo_folder / "td3bc.yaml") == ["rebrac"]
    assert not (algo_folder / "per_domain" / "td3bc").exists()


# --------------------------------------------------------------------------- envs


ENV_OPTIONS = sorted(p.stem for p in (ROOT / "conf" / "env").glob("*.yaml"))


@pytest.mark.parametrize("env", [*ENV_OPTIONS, "point_reach"])
def test_every_env_passes_gymnasiums_checker_and_has_a_spec(env, own, monkeypatch):
    from gymnasium.utils.env_checker import check_env

    from o2o.envs import make_env

    monkeypatch.chdir(own)
    cfg = validate(compose_config([f"env={env}", searchpath(own)]))
    made = make_env(cfg.env, cfg.domain, seed=0)
    assert made.spec is not None and made.spec.id
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its advice (unbounded Box spaces, check the unwrapped env) is not a failure
        check_env(made, skip_render_check=True)


def test_hydras_own_flags_follow_the_overrides_with_ones_own_config_folder(own, main_py):
    """O2O_CONFIG_PATH adds a hydra.searchpath override; Hydra's flags after the user's overrides still parse."""
    done = subprocess.run(main_py + ["env=point_reach", "algo=td3_bc", "--cfg", "job"], cwd=own, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "O2O_CONFIG_PATH": str(own / "conf")})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "name: td3_bc" in done.stdout and "gym_id: point_reach" in done.stdout
    from o2o.config_sources import with_searchpath

    added = f"hydra.searchpath=[file://{own / 'conf'}]"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("O2O_CONFIG_PATH", str(own / "conf"))
        assert with_searchpath(["-m", "a=1", "b=2"]) == ["-m", added, "a=1", "b=2"]  # with the overrides, after -m
        assert with_searchpath(["a=1", "--cfg", "job"]) == [added, "a=1", "--cfg", "job"]
        assert with_searchpath(["--cfg", "job"]) == [added, "--cfg", "job"]
        assert with_searchpath(["--info"]) == [added, "--info"]  # not taken for --info's optional value


def test_an_env_module_that_cannot_be_imported_stops_with_one_line(own, main_py):
    done = subprocess.run(main_py + ["env=point_reach", "algo=td3_bc", searchpath(own), "env.gym_id=nowhere:Env-v0",
                                     *SMOKE_ANY_ENV], cwd=own, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: env.gym_id names the module 'nowhere'") and "\n" not in done.stderr.strip()


SILENT_ENV = """
import gymnasium as gym
import numpy as np


class Silent(gym.Env):  # says nothing of success: a domain scored by the success rate would read 0 from it
    observation_space = gym.spaces.Box(-1, 1, (2,), np.float32)
    action_space = gym.spaces.Box(-1, 1, (2,), np.float32)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        return np.zeros(2, np.float32), 0.0, False, False, {}


gym.register("Silent-v0", entry_point=Silent, max_episode_steps=10)


class Wide(Silent):  # acts in [-2, 2]: a tanh policy would reach half of it
    action_space = gym.spaces.Box(-2, 2, (2,), np.float32)


gym.register("Wide-v0", entry_point=Wide, max_episode_steps=10)
"""


def test_an_env_that_reports_no_success_or_is_named_without_its_module_stops_with_one_line(own, main_py, tmp_path):
    (tmp_path / "silent_reach.py").write_text(SILENT_ENV)
    command = main_py + ["env=point_reach", "algo=td3_bc", searchpath(own), *SMOKE_ANY_ENV,
                         f"hydra.run.dir={tmp_path / 'run'}", "mlflow_experiment=o2o-silent"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)  # the data are in own/
    assert done.returncode == 2 and done.stderr.strip() == (
        f"error: env.dataset.path=point_reach.hdf5 does not exist (a relative path is read from the folder the command "
        f"runs in: {tmp_path / 'point_reach.hdf5'}): give the D4RL HDF5 file (or the folder of AWAC's files) to read")
    command.append(f"env.dataset.path={own / 'point_reach.hdf5'}")
    done = subprocess.run(command + ["env.gym_id=silent_reach:Silent-v0"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "\n" not in done.stderr.strip(), done.stderr
    assert done.stderr.strip() == (
        "error: silent_reach:Silent-v0's steps report no info['success'], which domain reach's metric success_rate and "
        "end_on_success read: set info['success'] (a bool) at every step of the env, or give it a domain that reads "
        "none of them")
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").glob("checkpoints/*"))
    done = subprocess.run(command + ["env.gym_id=silent_reach:Wide-v0"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip() == (
        "error: silent_reach:Wide-v0's actions are Box(-2.0, 2.0, (2,), float32), and every policy here acts in "
        "[-1, 1] (a tanh): rescale the env's actions to [-1, 1] (gymnasium.wrappers.RescaleAction where it is "
        "registered)")
    # the example's env by its bare id: the module that registers it is never imported
    done = subprocess.run(command + ["env.gym_id=PointReach-v0"], cwd=own, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "\n" not in done.stderr.strip(), done.stderr
    assert done.stderr.strip().startswith("error: env.gym_id=PointReach-v0 cannot be made: Environment `PointReach` "
                                          "doesn't exist")
    assert done.stderr.strip().endswith("an env of your own is named with the module that registers it, "
                                        "module:EnvId (env.gym_id=my_envs:MyEnv-v0)")


def test_a_copy_of_an_algorithm_file_takes_its_name_over_and_another_class_under_it_is_refused(tmp_path):
    """One process may load the same algorithm file from two config folders (two studies in a row); a different
    class under a taken name is a clash."""
    from conftest import exploding_algorithm
    from o2o.agents.registry import ALGORITHMS, load_plugins

    first = exploding_algorithm(tmp_path / "first", name="exploding")
    second = exploding_algorithm(tmp_path / "second", name="exploding")
    load_plugins([first])
    load_plugins([second])
    assert ALGORITHMS["exploding"].agent.__module__.startswith("o2o_plugin_exploding_")
    assert ALGORITHMS["exploding"].agent.__module__ in {m for m in sys.modules if "exploding" in m} and str(second) in \
        sys.modules[ALGORITHMS["exploding"].agent.__module__].__file__
    other = tmp_path / "other" / "algo" / "exploding.py"
    other.parent.mkdir(parents=True)
    other.write_text((second / "algo" / "exploding.py").read_text() + "\n# another version\n")
    with pytest.raises(ConfigError, match="two algorithms are registered as 'exploding'"):
        load_plugins([other.parent.parent])
    builtin = tmp_path / "builtin" / "algo" / "iql.py"  # an unchanged copy of a built-in file keeps clashing
    builtin.parent.mkdir(parents=True)
    shutil.copy(Path(sys.modules[ALGORITHMS["iql"].agent.__module__].__file__), builtin)
    with pytest.raises(ConfigError, match="two algorithms are registered as 'iql'"):
        load_plugins([builtin.parent.parent])


def test_a_config_folder_that_is_missing_or_an_algorithm_that_fails_to_import_stops_with_one_line(own, tmp_path,
                                                                                                    main_py):
    done = subprocess.run(main_py + [f"hydra.searchpath=[file://{tmp_path / 'nope'}]"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "is not a folder" in done.stderr and done.stderr.count("\n") == 1
    broken = tmp_path / "broken"
    shutil.copytree(own / "conf", broken)
    (broken / "algo" / "td3_bc.py").write_text("import not_a_module\n")
    done = subprocess.run(main_py + [f"hydra.searchpath=[file://{broken}]", "algo=td3_bc"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "td3_bc.py cannot be imported: ModuleNotFoundError" in done.stderr
    # the module imports but registers under another name (or not at all): the YAML's schema is nobody's
    source = (own / "conf" / "algo" / "td3_bc.py").read_text()
    assert '@register("td3_bc", TD3BCConfig)' in source
    (broken / "algo" / "td3_bc.py").write_text(source.replace('@register("td3_bc", TD3BCConfig)',
                                                              '@register("td3bc_mine", TD3BCConfig)'))
    done = subprocess.run(main_py + [f"hydra.searchpath=[file://{broken}]", "algo=td3_bc"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert ("algo/td3_bc names the schema 'td3_bc' (/schema/algo@_here_: td3_bc), and no algorithm is registered as "
            "'td3_bc': the module beside it (algo/<name>.py in your config folder) must decorate its agent with "
            "@register('td3_bc', ItsConfig)") in done.stderr and "td3bc_mine" in done.stderr


# --------------------------------------------------------------------------- the example algorithm on the core


def td3_bc(own, **fields):
    cfg = validate(compose_config(["env=point_reach", "algo=td3_bc", searchpath(own)])).algo
    for key, value in {"actor_hidden": [16, 16], "critic_hidden": [16, 16], **fields}.items():
        setattr(cfg, key, value)
    return cfg


def batches(n, obs_dim=2, act_dim=2, size=16):
    g = torch.Generator().manual_seed(1)
    return [Batch(torch.randn(size, obs_dim, generator=g), torch.rand(size, act_dim, generator=g) * 2 - 1,
                  torch.randn(size, generator=g), torch.randn(size, obs_dim, generator=g),
                  (torch.rand(size, generator=g) < 0.2).float(), torch.randn(size, generator=g)) for _ in range(n)]


def test_td3_bc_moves_its_targets_on_actor_steps_only_and_compiles_to_the_eager_numbers(own):
    from o2o.agents.core import ObservationStats
    from o2o.agents.registry import agent_class

    cfg = td3_bc(own)
    stats = ObservationStats(np.array([0.5, -0.5], np.float32), np.array([2.0, 0.5], np.float32))
    agents = []
    for backend in (None, "aot_eager"):
        torch.manual_seed(0)
        agent = agent_class(cfg)(2, 2, cfg, torch.device("cpu"), obs_stats=stats)
        if backend:
            agent.compile_update(backend=backend)
        agents.append(agent)
    for i, batch in enumerate(batches(4)):
        targets = [[p.clone() for p in a.critic_target.parameters()] + [p.clone() for p in a.actor_target.parameters()]
                   for a in agents]
        torch.manual_seed(10 + i)
        eager = agents[0].update(batch)
        torch.manual_seed(10 + i)
        compiled = agents[1].update(batch)
        actor_step = i % 2 == 1  # policy_freq 2: the second update of each pair
        assert set(eager) == set(compiled) and (M.ACTOR_LOSS in eager) == actor_step
        for key in eager:
            torch.testing.assert_close(compiled[key], eager[key], rtol=1e-5, atol=1e-6)
        for agent, before in zip(agents, targets):
            after = [*agent.critic_target.parameters(), *agent.actor_target.parameters()]
            assert any(not torch.equal(a, b) for a, b in zip(after, before)) == actor_step
    for a, b in zip(agents[0].state_dict().values(), agents[1].state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # the statistics live in the state dict: an agent built without them takes them from a checkpoint
    assert torch.equal(agents[0].state_dict()["actor.normalizer.std"], torch.tensor([2.001, 0.501]))
    blank = agent_class(cfg)(2, 2, cfg, torch.device("cpu"))
    blank.load_state_dict(agents[0].state_dict())
    obs = torch.tensor([[0.3, 0.9]])
    torch.testing.assert_close(blank.actor.act(obs, True, None), agents[0].actor.act(obs, True, None))


def test_the_example_td3_bc_computes_what_the_built_in_td3bc_computes(own):
    """The example's plain TD3+BC and the project's ``algo=td3bc`` (ReBRAC's agent with its additions off): the same
    losses and the same step from the same weights and noise."""
    from o2o.agents.core import ObservationStats
    from o2o.agents.registry import agent_class

    plugin_cfg = td3_bc(own)
    builtin_cfg = validate(compose_config(["env=point_reach", "algo=td3bc", searchpath(own)])).algo
    builtin_cfg.actor_hidden, builtin_cfg.critic_hidden = [16, 16], [16, 16]
    stats = ObservationStats(np.array([0.5, -0.5], np.float32), np.array([2.0, 0.5], np.float32))
    plugin = agent_class(plugin_cfg)(2, 2, plugin_cfg, torch.device("cpu"), obs_stats=stats)
    builtin = agent_class(builtin_cfg)(2, 2, builtin_cfg, torch.device("cpu"), obs_stats=stats)
    builtin.load_state_dict(plugin.state_dict())  # the same layout: actor, critics, targets, normalisers
    for i, batch in enumerate(batches(4)):
        torch.manual_seed(10 + i)
        ours = plugin.update(batch)
        torch.manual_seed(10 + i)
        theirs = builtin.update(batch)
        for key in (M.CRITIC_LOSS, "td_target", M.Q_DATA) + ((M.ACTOR_LOSS, "bc_loss", "lambda") if i % 2 else ()):
            torch.testing.assert_close(theirs[key], ours[key], rtol=1e-6, atol=1e-6, msg=key)
    for a, b in zip(plugin.state_dict().values(), builtin.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- through the CLI, sweeps and o2o-study


def test_ones_own_algorithm_env_and_data_run_through_the_cli_and_export_a_policy_for_raw_observations(own, main_py):
    import h5py
    import mlflow

    done = subprocess.run(main_py + ["env=point_reach", "algo=td3_bc", searchpath(own), *SMOKE_ANY_ENV, *QUIET,
                                     "mlflow_experiment=o2o-own"], cwd=own, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "per-domain values: none for td3_bc on reach" in done.stdout
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([client.get_experiment_by_name("o2o-own").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["algo.name"] == "td3_bc"
    assert run.data.tags["per_domain"].startswith("per-domain values: none")
    metrics = run.data.metrics
    for key in (M.train(M.OFFLINE, "bc_loss"), M.train(M.OFFLINE, "lambda"), M.train(M.ONLINE, M.CRITIC_LOSS),
                M.evaluation(M.ONLINE, M.SUCCESS_RATE), M.evaluation(M.ONLINE, M.NORMALIZED_RETURN),
                M.CUMULATIVE_REGRET, M.final(M.summary(M.ONLINE, M.SUCCESS_RATE))):
        assert key in metrics, key

    with h5py.File(own / "point_reach.hdf5") as f:
        observations = f["observations"][:]
    from o2o.checkpoints import Checkpoints

    model = Checkpoints(Path(run.data.tags["run_dir"])).load().agent["model"]
    np.testing.assert_allclose(model["actor.normalizer.mean"].numpy(), observations.mean(0), rtol=1e-5)
    np.testing.assert_allclose(model["actor.normalizer.std"].numpy(), observations.std(0) + 1e-3, rtol=1e-5)
    # the exported policy acts on raw observations as the agent does (its normaliser travels inside it)
    from o2o.agents.registry import agent_class

    cfg = td3_bc(own, actor_hidden=[32, 32], critic_hidden=[32, 32])
    agent = agent_class(cfg)(2, 2, cfg, torch.device("cpu"))
    agent.load_state_dict(model)
    raw = observations[:5]
    policy = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/policy")
    expected = agent.actor.act(torch.as_tensor(raw), True, None).detach().numpy()
    np.testing.assert_allclose(policy.predict(raw), expected, rtol=1e-5, atol=1e-6)


def test_a_study_of_ones_own_sweeps_ones_own_algorithm_and_cal_ql(own, tmp_path, monkeypatch):
    """``o2o-study`` with the folder on O2O_CONFIG_PATH: its own study preset, a ``-m`` sweep of its algorithm beside
    a built-in one (which has no per-domain file for the new domain and runs on its own values)."""
    from o2o.study import main

    monkeypatch.chdir(own)
    monkeypatch.setenv("O2O_CONFIG_PATH", str(own / "conf"))
    main(["reach_td3bc", "--budget", "smoke", "--out", str(tmp_path), "--experiment", "o2o-own-study", "seed=0",
          "threads=1", "mlflow.log_models=false", *QUIET])
    page = (tmp_path / "reach_td3bc-smoke.md").read_text()
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("o2o-own-study")
    parent = client.search_runs([exp.experiment_id], "tags.sweep = 'true'")[0]
    assert parent.info.run_id in page
    # the command reruns from the folder it ran in (the env's module and the data's relative path are there)
    assert f"\ncd {own} && O2O_CONFIG_PATH={own / 'conf'} o2o-study reach_td3bc --budget smoke" in page
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.data.tags["algo"] for r in children) == ["calql", "td3_bc"]
    assert all(r.info.status == "FINISHED" for r in children)
    records = list((tmp_path / "reach_td3bc-smoke" / "records").glob("*.json.gz"))
    assert len(records) == 2


def test_a_study_whose_job_fails_writes_its_page_and_exits_with_the_sweeps_status(own, tmp_path, monkeypatch):
    from conftest import exploding_algorithm
    from o2o.study import main

    monkeypatch.chdir(own)
    monkeypatch.setenv("O2O_CONFIG_PATH", f"{own / 'conf'}:{exploding_algorithm(tmp_path / 'conf')}")
    with pytest.raises(SystemExit) as stopped:
        main(["reach_td3bc", "--budget", "smoke", "--out", str(tmp_path), "--experiment", "o2o-own-failing", "seed=0",
              "hydra.sweeper.params.algo=exploding,td3_bc", "threads=1", "mlflow.log_models=false", *QUIET])
    assert stopped.value.code == 2  # the sweep's: one of its jobs failed
    page = (tmp_path / "reach_td3bc-smoke.md").read_text()
    assert "| td3_bc |" in page  # the page of the run that finished, and which run did not
    assert "1 finished run. 1 of the 2 runs planned by the sweep has finished; not yet: algo=exploding." in page


def test_a_study_with_no_finished_run_writes_no_page_and_says_the_same_command_continues(own, tmp_path, monkeypatch,
                                                                                           capsys):
    from conftest import exploding_algorithm
    from o2o.study import main

    monkeypatch.chdir(own)
    monkeypatch.setenv("O2O_CONFIG_PATH", f"{own / 'conf'}:{exploding_algorithm(tmp_path / 'conf')}")
    with pytest.raises(SystemExit) as stopped:
        main(["reach_td3bc", "--budget", "smoke", "--out", str(tmp_path), "--experiment", "o2o-own-none", "seed=0",
              "hydra.sweeper.params.algo=exploding", "threads=1", *QUIET])
    assert stopped.value.code == 2  # the sweep's status
    err = capsys.readouterr().err
    assert "no run of the sweep has finished yet (it exited with status 2), so no page is written" in err
    assert "the page shows the runs that finished" not in err
    assert not (tmp_path / "reach_td3bc-smoke.md").exists()


def test_a_dataset_recorded_in_ones_own_env_is_checked_against_it(own, monkeypatch):
    """A Minari dataset records gymnasium's id without the module (``PointReach-v0``): the env option's
    ``point_reach:PointReach-v0`` runs the same task, and its kwargs are read from the module's registration."""
    from o2o.data.checks import check_recorded_env
    from o2o.errors import DatasetError

    monkeypatch.chdir(own)
    cfg = validate(compose_config(["env=point_reach", searchpath(own)])).env
    check_recorded_env({"id": "PointReach-v0", "max_episode_steps": 60, "kwargs": {}}, cfg, "recorded")
    with pytest.raises(DatasetError, match="records env id 'OtherReach-v0'"):
        check_recorded_env({"id": "OtherReach-v0"}, cfg, "recorded")
