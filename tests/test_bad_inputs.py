"""The catalogue of bad inputs: each stops before any work with exit 2 and one ``error:`` line, no traceback,
and leaves an existing run dir and MLflow store byte for byte as they were."""
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from conftest import ROOT, SMOKE, SMOKE_ANY_ENV
from o2o.errors import UserError

BAD = {  # name: (overrides, environment changes, a piece of the expected line)
    "unknown algo": (["algo=nope"], {}, "Could not find 'algo/nope'"),
    "unknown env": (["env=nope"], {}, "Available options in 'env': adroit_door"),
    "unknown schedule": (["schedule=nope"], {}, "Could not find 'schedule/nope'"),
    "unknown experiment": (["experiment=nope"], {}, "Available options in 'experiment': quickstart, smoke"),
    "seed not an int": (["seed=abc"], {}, "seed=abc"),
    "gamma above 1": (["algo.gamma=2"], {}, "algo.gamma must be in (0, 1)"),
    "gamma 0": (["algo.gamma=0"], {}, "algo.gamma must be in (0, 1)"),
    "mixing ratio 2": (["algo.mixing_ratio=2"], {}, "algo.mixing_ratio must be in [0, 1]"),
    "appended unknown key": (["+algo.foo=1"], {}, "unknown key algo.foo"),
    "typo in a key": (["buffer.batch_sise=64"], {}, "unknown key buffer.batch_sise: did you mean buffer.batch_size?"),
    "appended typo": (["+algo.critic_lrr=1"], {}, "did you mean algo.critic_lr?"),
    "batch size 0": (["buffer.batch_size=0"], {}, "buffer.batch_size must be > 0"),
    "capacity beyond memory": (["buffer.online_capacity=1000000000", "schedule.online_steps=1000000000"], {},
                               "lower buffer.online_capacity"),
    "unknown device": (["device=tpu"], {}, "device must be auto, cpu or cuda"),
    "unknown precision": (["precision=fp16"], {}, "precision must be auto, fp32 or bf16"),
    "negative threads": (["threads=-1"], {}, "threads must be >= 0"),
    "negative online steps": (["schedule.online_steps=-5"], {}, "schedule.online_steps must be >= 0"),
    "horizon 0": (["env.max_episode_steps=0"], {}, "env.max_episode_steps must be > 0"),
    "no hidden layers": (["algo.actor_hidden=[]"], {}, "non-empty lists of positive widths"),
    "negative learning rate": (["algo.critic_lr=-1"], {}, "algo.critic_lr must be > 0"),
    "tau above 1": (["algo.tau=2"], {}, "algo.tau must be in (0, 1]"),
    "unknown schedule kind": (["algo.update_schedule=sometimes"], {}, "algo.update_schedule must be episode or step"),
    "Cal-QL's bound on the step schedule": (["algo.update_schedule=step"], {}, "algo.update_schedule=step with "
                                            "algo.calibrate_online=true: Cal-QL's bound reads an episode's V_ref"),
    "negative warm-up": (["algo.warmup_steps=-1"], {}, "algo.warmup_steps must be >= 0"),
    "empty ensemble": (["algo.ensemble_size=0"], {}, "algo.ensemble_size must be >= 1"),
    "subset beyond ensemble": (["algo.target_subset=99"], {}, "algo.target_subset must be in [1"),
    "reward scale 0": (["algo.reward_scale=0"], {}, "algo.reward_scale must be non-zero"),
    "unknown actor reduction": (["algo.actor_q=max"], {}, "algo.actor_q must be min or mean"),
    "iql expectile 1.5": (["algo=iql", "algo.expectile=1.5"], {}, "algo.expectile must be in (0, 1)"),
    "iql unknown lr schedule": (["algo=iql", "algo.actor_lr_schedule=linear"], {}, "constant or cosine"),
    "iql dropout 1": (["algo=iql", "algo.actor_dropout=1.0"], {}, "algo.actor_dropout must be in [0, 1)"),
    "unknown metric": (["domain.metric=return"], {}, "domain metric 'return' is not one of"),
    "unknown extra metric": (["domain.extra_metrics=[nope]"], {}, "domain metric 'nope' is not one of"),
    "no evaluation episodes": (["domain.eval_episodes=0"], {}, "domain.eval_episodes must be >= 1"),
    "broken interpolation": (["schedule.log_interval=${nope}"], {}, "Interpolation key 'nope' not found"),
    "empty experiment name": (["mlflow_experiment="], {}, "mlflow_experiment must be a non-empty name"),
    "reference scores reversed": (["env.ref_min_score=5", "env.ref_max_score=1"], {}, "must exceed env.ref_min_score"),
    "no dataset": (["env.dataset.id=null"], {}, "set exactly one of env.dataset.id"),
    "two datasets": (["env.dataset.path={tmp}/corrupt.hdf5"], {}, "are both set, and a run reads one dataset: add "
                                                                 "env.dataset.id=null"),
    "a path that does not exist beside a dataset id": (["env.dataset.path=/nope"], {},
                                                       "env.dataset.path=/nope does not exist"),
    "a sweep without -m": (["algo=calql,cql"], {}, "algo=calql,cql lists several values, which is a sweep: add -m"),
    "a close key of the same group": (["algo.lr=1"], {}, "unknown key algo.lr: did you mean algo.actor_lr or algo.critic_lr?"),
    "unknown observation key": (["env.obs_keys=[nope]"], {}, "env.obs_keys ['nope'] are not in"),
    "unknown gym id": (["env.gym_id=Nope-v0"], {}, "env.gym_id=Nope-v0 cannot be made"),
    "unknown env kwarg": (["+env.gym_kwargs.nope=1"], {}, "env.gym_kwargs do not fit"),
    "missing hdf5": (["env.dataset.id=null", "env.dataset.path={tmp}/missing.hdf5"], {}, "does not exist"),
    "hdf5 is a folder": (["env.dataset.id=null", "env.dataset.path={tmp}"], {}, "a folder of AWAC files, which exist for"),
    "corrupt hdf5": (["env.dataset.id=null", "env.dataset.path={tmp}/corrupt.hdf5"], {}, "cannot be read as a D4RL HDF5"),
    # AWAC's door files (a folder holding door2_sparse.npy and door_bc_sparse4.npy) in forms they never have
    **{f"awac {kind}": (["env=adroit_door", "env.dataset.id=null", f"env.dataset.path={{tmp}}/awac-{kind}"], {}, line)
       for kind, line in (("truncated", "cannot be read as AWAC's pickled trajectory array"),
                          ("wrong keys", "holds something else, not AWAC's trajectories"),
                          ("ints", "holds an array of int64, not AWAC's trajectories"),
                          ("floats", "holds an array of float64, not AWAC's trajectories"),
                          ("runs code", "is not part of AWAC's trajectory files; refusing to load it"))},
    "sweep with a bad value": (["-m", "algo.gamma=2"], {}, "algo.gamma must be in (0, 1), got 2.0"),
    "sweep with a bad option": (["-m", "algo=calql,nope"], {}, "Could not find 'algo/nope'"),
    "a sweep param of the wrong type": (["-m", "hydra.sweeper.params.seed=0,abc"], {},
                                        "seed must be an integer, got 'abc' (in the sweep's job with seed=abc)"),
    "two of Hydra's modes": (["-m", "algo=calql,cql", "--cfg", "job"], {},
                             "--cfg and --multirun are two of Hydra's modes: give one of them"),
    "sweep with a bad value among good ones": (["-m", "algo.gamma=0.9,0.99,1.5"], {},
                                               "got 1.5 (in the sweep's job with algo.gamma=1.5)"),
    "nothing to run": (["schedule.offline_steps=0", "schedule.online_steps=0"], {}, "nothing to run"),
    "online buffer below a batch": (["buffer.online_capacity=10"], {}, "holds less than one batch"),
    "batch larger than the data": (["buffer.batch_size=5000"], {}, "offline transitions of minari:o2o/pointmaze"),
    "registered model name with / and :": (["mlflow.registered_model=a/b:c"], {}, "model names cannot contain '/' or ':'"),
    "experiment name too long": (["mlflow_experiment=" + "x" * 6000], {}, "MLflow takes at most 500"),
    "empty hdf5": (["env.dataset.id=null", "env.dataset.path={tmp}/empty.hdf5"], {}, "cannot be read as a D4RL HDF5"),
    "truncated hdf5": (["env.dataset.id=null", "env.dataset.path={tmp}/truncated.hdf5"], {}, "cannot be read"),
    "hdf5 without D4RL keys": (["env.dataset.id=null", "env.dataset.path={tmp}/nokeys.hdf5"], {}, "is not a D4RL dataset"),
    "NaN in the data": (["env.dataset.id=null", "env.dataset.path={tmp}/nan.hdf5"], {}, "non-finite values"),
    "data of another env": (["env.dataset.id=null", "env.dataset.path={tmp}/wrongshape.hdf5"], {}, "does not match env"),
    "reversed reference scores": (["env.dataset.id=null", "env.dataset.path={tmp}/reversed_refs.hdf5"], {},
                                  "they must be finite with max above min"),
    "NaN reference score": (["env.dataset.id=null", "env.dataset.path={tmp}/nan_refs.hdf5"], {},
                            "they must be finite with max above min"),
    "terminals of 0.5": (["env.dataset.id=null", "env.dataset.path={tmp}/half_terminals.hdf5"], {},
                         "terminals holds values other than 0 and 1"),
    "seed not a number": (["seed=abc"], {}, "seed must be an integer, got 'abc'"),
    "seed not whole": (["seed=1.5"], {}, "seed must be an integer, got '1.5' (1e3 is accepted where it is a whole"),
    "seed empty": (["seed="], {}, "seed must be an integer, got ''"),
    "steps not whole in scientific notation": (["schedule.offline_steps=1.5e-1"], {},
                                               "schedule.offline_steps must be an integer, got '0.15'"),
    "layers not a list": (["algo.actor_hidden=abc"], {}, "algo.actor_hidden must be a list, e.g. "),
    "metrics not a list": (["domain.extra_metrics=success_rate"], {},
                           "domain.extra_metrics must be a list, e.g. domain.extra_metrics=[success_rate]"),
    "a reference layer of negative width": (["reference=regression", "reference.hidden=[-1]"], {},
                                            "reference=regression needs reference.hidden, a non-empty list of positive "
                                            "widths, got [-1]"),
    "a reference layer of width 0": (["reference=td", "reference.hidden=[0]"], {}, "got [0]"),
    "an RND layer of width 0": (["exploration=rnd", "exploration.rnd_hidden=[0]"], {},
                                "exploration=rnd needs exploration.rnd_hidden, a non-empty list of positive widths"),
    "a negative RND learning rate": (["exploration=rnd", "exploration.rnd_lr=-1"], {},
                                     "exploration=rnd needs exploration.rnd_lr > 0, got -1.0"),
    "a reference fit of no steps": (["reference=regression", "reference.fit_steps=0"], {},
                                    "reference=regression needs reference.fit_steps > 0, got 0"),
    "retraining key without retraining": (["retrain.mixing_ratio=0.5"], {},
                                          "retrain.mixing_ratio does nothing in this run: offline retraining is off"),
    "pre-training steps for an algorithm that does not pre-train": (
        ["algo=sac", "schedule.offline_steps=20000"], {}, "schedule.offline_steps does nothing in this run: sac does not pre-train"),
    "bonus coefficient without a bonus": (["exploration.coef=3"], {}, "exploration.coef does nothing in this run"),
    "a misspelt mixing ratio": (["buffer.mix_ratio=0.5"], {}, "unknown key buffer.mix_ratio: did you mean algo.mixing_ratio?"),
    "key under a null node": (["env=adroit_door", "env.dataset.collector.steps=5"], {},
                              "env.dataset.collector is null with env=adroit_door; drop the override"),
    "dataset not downloadable": (["env=adroit_door"], {}, "o2o-data build-adroit"),
    "half-written dataset": (["env=adroit_door"], {"MINARI_DATASETS_PATH": "{tmp}/partial"}, "is incomplete"),
    "unknown store scheme": ([], {"MLFLOW_TRACKING_URI": "foo://bar"}, "cannot be opened"),
    "store not a database": ([], {"MLFLOW_TRACKING_URI": "sqlite:///{tmp}/notdb.db"}, "file is not a database"),
    "unreachable tracking server": ([], {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}, "is unreachable"),
    "corrupt checkpoint": (["hydra.run.dir={tmp}/corrupt-run"], {}, "cannot be read"),
    "negative seed": (["seed=-1"], {}, "seed must be in [0, 2147483647], got -1"),
    "seed beyond numpy's range": (["seed=99999999999999"], {}, "seed must be in [0, 2147483647]"),
    "rewards of shape (N, 1)": (["env.dataset.id=null", "env.dataset.path={tmp}/rewards_n1.hdf5"], {},
                                "rewards has shape (10, 1); D4RL stores it as (N,)"),
    "rewards of shape (N, 3)": (["env.dataset.id=null", "env.dataset.path={tmp}/rewards_n3.hdf5"], {},
                                "rewards has shape (10, 3)"),
    "arrays of unequal lengths": (["env.dataset.id=null", "env.dataset.path={tmp}/unequal.hdf5"], {},
                                  "its arrays differ in length (observations 10, actions 10, rewards 7"),
    "zero transitions": (["env.dataset.id=null", "env.dataset.path={tmp}/zero.hdf5"], {}, "holds no steps"),
    "one transition without an episode end": (["env.dataset.id=null", "env.dataset.path={tmp}/one.hdf5"], {},
                                              "holds no transitions"),
    "observations stored as a group": (["env.dataset.id=null", "env.dataset.path={tmp}/obs_group.hdf5"], {},
                                       "observations is a group of ['x'], not one array"),
    "run dir under /proc": (["hydra.run.dir=/proc/o2o-run"], {}, "hydra.run.dir /proc/o2o-run cannot be written"),
    "run dir at a file": (["hydra.run.dir={tmp}/corrupt.hdf5"], {}, "cannot be written ({tmp}/corrupt.hdf5 is a file)"),
    "run dir with =": (["hydra.run.dir={tmp}/a=b"], {}, "Hydra reads '=' and ',' in a value as syntax; quote the path"),
    "run dir with ,": (["hydra.run.dir={tmp}/a,b"], {}, "quote the path, e.g. 'hydra.run.dir=\"{tmp}/a,b\"'"),
    "garbage resolved config": (["hydra.run.dir={tmp}/garbage-config-run"], {},
                                "resolved_config.yaml cannot be read (ParserError)"),
    "run of a deleted MLflow run": (["hydra.run.dir={tmp}/deleted-run"], {}, "which was deleted in sqlite"),
    "run dir of another store": (["hydra.run.dir={tmp}/other-store-run"], {}, "which the store sqlite"),
    "outputs under a file": ([], {"O2O_OUTPUTS": "{tmp}/corrupt.hdf5/outputs"},
                             "the outputs folder (O2O_OUTPUTS) {tmp}/corrupt.hdf5/outputs cannot be written"),
    "Minari folder under a file": ([], {"MINARI_DATASETS_PATH": "{tmp}/corrupt.hdf5/minari"},
                                   "the Minari datasets folder (MINARI_DATASETS_PATH)"),
    "networks beyond memory": (["algo.critic_hidden=[100000,100000,100000]"], {},
                               "use smaller networks or batches"),
    "batch beyond memory": (["buffer.batch_size=100000000", "schedule.online_steps=0"], {}, "use smaller networks or batches"),
    "more threads than cores": (["threads=4096"], {}, "threads=4096 is more than the"),
    "system metrics every 0.1 ms": (["mlflow.system_metrics_interval_s=0.0001"], {},
                                    "mlflow.system_metrics_interval_s must be >= 1 (seconds)"),
    "whitespace experiment name": (["mlflow_experiment=' '"], {}, "mlflow_experiment must be a non-empty name"),
    "reward scale NaN": (["algo.reward_scale=nan"], {}, "algo.reward_scale must be a finite number, got nan"),
    "learning rate inf": (["algo.critic_lr=inf"], {}, "algo.critic_lr must be a finite number, got inf"),
    "store that is a folder": ([], {"MLFLOW_TRACKING_URI": "sqlite:///{tmp}/partial"}, "names a folder, not a sqlite file"),
    "store of a newer MLflow": ([], {"MLFLOW_TRACKING_URI": "sqlite:///{tmp}/newer.db"},
                                "was written by a newer MLflow than this one"),
    "bad dataset, default run folder and store": (
        ["env.dataset.id=null", "env.dataset.path={tmp}/missing.hdf5"],
        {"O2O_OUTPUTS": "{tmp}/fresh-outputs", "MLFLOW_TRACKING_URI": None}, "does not exist"),
    "empty tracking URI": ([], {"MLFLOW_TRACKING_URI": ""}, "MLFLOW_TRACKING_URI is set but empty"),
    "sqlite store in a folder that does not exist": ([], {"MLFLOW_TRACKING_URI": "sqlite:///{tmp}/no/such/m.db"},
                                                     "the folder {tmp}/no/such does not exist: create it"),
    "PostgreSQL store without a server": ([], {"MLFLOW_TRACKING_URI": "postgresql://o2o:o2o@127.0.0.1:9/mlflow"},
                                          "MLflow store postgresql://o2o:***@127.0.0.1:9/mlflow cannot be reached"),
    "steps beyond any run": (["schedule.online_steps=1e30"], {}, "schedule.online_steps=1e+30 is more than 1e9 steps"),
    "RLPD with one critic where its target is a min over 2": (
        ["env=adroit_door", "algo=rlpd", "algo.ensemble_size=1"], {},
        "algo.target_subset must be in [1, algo.ensemble_size=1], got 2"),
    "a typo in a sweep's syntax": (["-m", "algo=calql,,cql"], {}, "override 'algo=calql,,cql' does not parse"),
    "a typo in a range": (["seed=range(0,3"], {}, "override 'seed=range(0,3' does not parse (no viable alternative"),
    **{f"hdf5 with {what}": (["env.dataset.id=null", f"env.dataset.path={{tmp}}/{name}.hdf5"], {}, line)
       for what, name, line in (("rewards as byte strings", "bytes_rewards", "rewards is stored as |S3"),
                                ("int64 observations", "int_obs", "observations is stored as int64; D4RL stores float32"),
                                ("next_observations of another width", "wide_next", "next_observations are 4 wide"),
                                ("every step terminal", "all_terminal", "every one of its 10 steps is terminal"))},
    "dataset is a FIFO": (["env.dataset.id=null", "env.dataset.path={tmp}/fifo.hdf5"], {}, "is a FIFO, not an HDF5"),
    "dataset is /dev/zero": (["env.dataset.id=null", "env.dataset.path=/dev/zero"], {}, "is a device, not an HDF5"),
    "dataset is a symlink loop": (["env.dataset.id=null", "env.dataset.path={tmp}/loop.hdf5"], {},
                                  "cannot be reached (Too many levels of symbolic links)"),
}
BAD.update({  # further inputs found by trying, beyond the ones issues reported
    "a negative layer width": (["algo.critic_hidden=[256,-1]"], {}, "non-empty lists of positive widths"),
    "a layer of width 0": (["algo.actor_hidden=[0]"], {}, "non-empty lists of positive widths"),
    "negative batch size": (["buffer.batch_size=-3"], {}, "buffer.batch_size must be > 0, got -3"),
    "no updates per step": (["algo.utd_ratio=0"], {}, "algo.utd_ratio must be >= 1, got 0"),
    "actor never updated": (["algo.actor_update_interval=0"], {}, "algo.actor_update_interval must be >= 1"),
    "gamma 1": (["algo.gamma=1"], {}, "algo.gamma must be in (0, 1), got 1.0"),
    "tau 0": (["algo.tau=0"], {}, "algo.tau must be in (0, 1], got 0.0"),
    "log interval 0": (["schedule.log_interval=0"], {}, "schedule.log_interval must be >= 1, got 0"),
    "negative evaluation episodes": (["domain.eval_episodes=-1"], {}, "domain.eval_episodes must be >= 1, got -1"),
    "seed 1e20": (["seed=1e20"], {}, "seed must be in [0, 2147483647], got 100000000000000000000"),
    "seed in hex": (["seed=0x10"], {}, "seed must be an integer, got '0x10'"),
    "mixing ratio -0.5": (["algo.mixing_ratio=-0.5"], {}, "or -1 (proportional), got -0.5"),
    "unknown reference value": (["reference.value=nope"], {}, "reference.value must be one of mc, regression, td"),
    "unknown reference option": (["reference=nope"], {}, "Available options in 'reference': mc, quantile"),
    "quantile above 1": (["reference=quantile", "reference.tau=2"], {}, "needs reference.tau in [0, 1], got 2.0"),
    "unknown exploration option": (["exploration=nope"], {}, "Could not find 'exploration/nope'"),
    "negative bonus": (["exploration=rnd", "exploration.coef=-1"], {}, "exploration=rnd needs exploration.coef > 0"),
    "online buffer of 0": (["buffer.online_capacity=0"], {}, "buffer.online_capacity must be > 0, got 0"),
    "a switch set to maybe": (["algo.calibrate_offline=maybe"], {}, "algo.calibrate_offline must be true or false, got 'maybe'"),
    "compile maybe": (["compile=maybe"], {}, "compile must be auto, true or false, got 'maybe'"),
    "threads 1.5": (["threads=1.5"], {}, "threads must be an integer, got '1.5'"),
    "appended unknown env key": (["+env.nope=1"], {}, "unknown key env.nope"),
    "env kwargs not a mapping": (["env.gym_kwargs=5"], {}, "env.gym_kwargs=5: Cannot assign int to Dict"),
    "no observation keys for a dict observation": (["env.obs_keys=[]"], {}, "env.obs_keys is empty, but"),
    "empty metric": (["domain.metric="], {}, "domain metric '' is not one of"),
    "negative checkpoint interval": (["schedule.checkpoint_interval=-1"], {}, "schedule.checkpoint_interval must be >= 0"),
    "registered model name too long": (["mlflow.registered_model=" + "m" * 600], {}, "MLflow's store keeps at most 256"),
    "experiment name with a newline": (["mlflow_experiment='a\nb'"], {}, "holds a control character (a newline?)"),
    "empty run folder": (["hydra.run.dir="], {}, "hydra.run.dir is empty (the run would write into the current folder)"),
    "Minari id that climbs folders": (["env.dataset.id=../../../etc/passwd"], {}, "is not a Minari id"),
    "Minari id with spaces": (["env.dataset.id='a b c'"], {}, "env.dataset.id='a b c' is not a Minari id"),
    "algorithm renamed as another": (["algo.name=cql"], {}, "algo.name=cql is the name of another option (algo=cql) "
                                                           "while this run is algo=calql"),
    "env renamed as another": (["env.name=adroit_door"], {}, "env.name=adroit_door is the name of another option"),
    "hdf5 actions of another width": (["env.dataset.id=null", "env.dataset.path={tmp}/wide_actions.hdf5"], {},
                                      "dataset observations (6,) and actions (5,), env observations (6,) and actions (2,)"),
    "hdf5 reference scores as words": (["env.dataset.id=null", "env.dataset.path={tmp}/word_refs.hdf5"], {},
                                       "could not convert string to float: 'low'"),
    "hdf5 complex observations": (["env.dataset.id=null", "env.dataset.path={tmp}/complex_obs.hdf5"], {},
                                  "observations is stored as complex64"),
    "hdf5 timeouts of -1": (["env.dataset.id=null", "env.dataset.path={tmp}/negative_timeouts.hdf5"], {},
                            "timeouts holds values other than 0 and 1"),
    "AWAC folder without its files": (["env=adroit_door", "env.dataset.id=null", "env.dataset.path={tmp}/awac-empty"],
                                      {}, "holds no door2_sparse.npy and door_bc_sparse4.npy"),
    "config folder that does not exist": ([], {"O2O_CONFIG_PATH": "{tmp}/nope"}, "is not a folder: give the folder"),
    "own algorithm with a syntax error": ([], {"O2O_CONFIG_PATH": "{tmp}/conf-syntax"}, "cannot be imported: SyntaxError"),
    "own algorithm that raises on import": ([], {"O2O_CONFIG_PATH": "{tmp}/conf-raises"},
                                            "cannot be imported: RuntimeError: raised on import"),
    "own algorithm under a built-in name": ([], {"O2O_CONFIG_PATH": "{tmp}/conf-clash"},
                                            "two algorithms are registered as 'cql'"),
    "own preset with a misspelt key": (["algo=calql_typo"], {"O2O_CONFIG_PATH": "{tmp}/conf-typo"},
                                       "algo/calql_typo.yaml sets algo.cql_weigth, which CQLConfig does not have: "
                                       "did you mean algo.cql_weight?"),
    "hdf5 whose steps end no episode": (["env.dataset.id=null", "env.dataset.path={tmp}/no_ends.hdf5"], {},
                                        "no_ends.hdf5: none of its 999 transitions ends an episode"),
    "npz without the state OGBench relabels from": (["env=ogbench_cube_single", "env.dataset.ogbench=null",
                                                      "env.dataset.path={tmp}/noqpos.npz"], {},
                                                     "noqpos.npz lacks qpos, which OGBench's loader reads"),
    "npz of Python objects": (["env=ogbench_cube_single", "env.dataset.ogbench=null", "env.dataset.path={tmp}/obj.npz"],
                              {}, "obj.npz stores observations as Python objects, which are never loaded"),
    "npz for an env that is not OGBench's": (["env.dataset.id=null", "env.dataset.path={tmp}/noqpos.npz"], {},
                                             "an .npz dataset is read in OGBench's format, for OGBench's single-task "
                                             "envs, and env.gym_id=PointMaze_UMaze-v3 is not one"),
    "own YAML with a misspelt top-level key": (["+extra=typo"], {"O2O_CONFIG_PATH": "{tmp}/conf-typo"},
                                               "extra/typo.yaml sets sede, which Config does not have: did you mean "
                                               "seed?"),
    "a field left without a value": (["algo.cql_weight=???"], {}, "algo.cql_weight has no value: set it in the algo "
                                                                  "YAML the run composes, or on the command line"),
    "env module that does not import": (["env.gym_id=no_such_module_xyz:Foo-v0"], {},
                                        "names the module 'no_such_module_xyz', which cannot be imported"),
    "empty Minari folder variable": ([], {"MINARI_DATASETS_PATH": ""}, "MINARI_DATASETS_PATH is set but empty"),
    "empty outputs variable": ([], {"O2O_OUTPUTS": ""}, "O2O_OUTPUTS is set but empty"),
    "in-memory store": ([], {"MLFLOW_TRACKING_URI": "sqlite://"}, "is an in-memory database, which keeps nothing"),
    "file store": ([], {"MLFLOW_TRACKING_URI": "file:///{tmp}/mlruns"}, "cannot be opened (The filesystem tracking"),
    "sweep that lists a value twice": (["-m", "seed=0,0"], {}, "seed=0,0 lists 0 more than once"),
    "sweep that gives a key twice": (["-m", "seed=0,1", "seed=2"], {}, "seed is given twice (seed=0,1 and seed=2)"),
    "sweep with an unknown launcher": (["-m", "hydra/launcher=nope"], {}, "Could not find 'hydra/launcher/nope'"),
    "sweep folder that cannot be written": (["-m", "seed=0", "hydra.sweep.dir=/proc/o2o-sweep"], {},
                                            "hydra.sweep.dir /proc/o2o-sweep cannot be written"),
})
if os.environ.get("O2O_POSTGRES"):  # a real server (.ci/run starts one): a wrong password, refused at once
    BAD["PostgreSQL store with a wrong password"] = (
        [], {"MLFLOW_TRACKING_URI": os.environ["O2O_POSTGRES"].replace(":o2o@", ":wrong@") + "/mlflow"},
        "password authentication failed")
if not torch.cuda.is_available():
    BAD["cuda without a GPU"] = (["device=cuda"], {}, "torch sees no CUDA GPU")
    BAD["cuda:5 without a GPU"] = (["device=cuda:5"], {}, "device=cuda:5 but torch sees no CUDA GPU")
else:
    BAD["a GPU that is not there"] = (["device=cuda:99"], {}, "CUDA GPU(s) here, numbered from 0")


class RunsCode:
    """Unpickling it would run a shell command: a data file must never do that."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Bad files, plus an existing store and run dir that no bad input may touch."""
    tmp = tmp_path_factory.mktemp("bad")
    (tmp / "corrupt.hdf5").write_bytes(b"not an hdf5 file")
    (tmp / "empty.hdf5").write_bytes(b"")
    (tmp / "notdb.db").write_text("not a database")
    arrays = lambda n, obs: {"observations": np.zeros((n, obs), np.float32), "actions": np.zeros((n, 2), np.float32),  # noqa: E731
                             "rewards": np.zeros(n, np.float32), "terminals": np.zeros(n, bool), "timeouts": np.zeros(n, bool)}
    for name, n, obs in (("truncated", 1000, 6), ("no_ends", 1000, 6), ("nan", 10, 6), ("wrongshape", 10, 3), ("reversed_refs", 10, 6),
                         ("nan_refs", 10, 6), ("half_terminals", 10, 6)):
        with h5py.File(tmp / f"{name}.hdf5", "w") as f:
            for key, value in arrays(n, obs).items():
                f[key] = value
            if name == "nan":
                f["observations"][:4] = np.nan
            if name == "reversed_refs":
                f.attrs["ref_min_score"], f.attrs["ref_max_score"] = 100.0, 0.0
            if name == "nan_refs":
                f.attrs["ref_min_score"], f.attrs["ref_max_score"] = float("nan"), 1.0
            if name == "half_terminals":
                del f["terminals"]
                f["terminals"] = np.full(n, 0.5, np.float32)
    for kind in ("truncated", "wrong keys", "ints", "floats", "runs code"):  # AWAC's two door files, one of them bad
        folder = tmp / f"awac-{kind}"
        folder.mkdir()
        trajectory = {"observations": np.zeros((2, 39)), "next_observations": np.zeros((2, 39)),
                      "actions": np.zeros((2, 28)), "rewards": np.array([-1.0, 0.0]), "terminals": np.zeros(2, bool)}
        good = np.empty(1, dtype=object)
        good[:] = [trajectory]
        np.save(folder / "door_bc_sparse4.npy", good, allow_pickle=True)
        bad = {"truncated": good, "wrong keys": np.array([{"obs": 1}], dtype=object), "ints": np.arange(5),
               "floats": np.zeros((3, 4)), "runs code": np.array([{**trajectory, "env_infos": RunsCode(tmp / "ran")}],
                                                                  dtype=object)}[kind]
        np.save(folder / "door2_sparse.npy", bad, allow_pickle=True)
        if kind == "truncated":
            (folder / "door2_sparse.npy").write_bytes((folder / "door2_sparse.npy").read_bytes()[:200])
    data = (tmp / "truncated.hdf5").read_bytes()
    (tmp / "truncated.hdf5").write_bytes(data[: len(data) // 2])
    with h5py.File(tmp / "nokeys.hdf5", "w") as f:
        f["foo"] = np.zeros(3)
    ended = lambda n: {**arrays(n, 6), "timeouts": np.arange(n) == n - 1}  # noqa: E731  one episode, cut at its end
    odd = {"rewards_n1": {"rewards": np.zeros((10, 1), np.float32)}, "rewards_n3": {"rewards": np.zeros((10, 3), np.float32)},
           "unequal": {"rewards": np.zeros(7, np.float32)}, "obs_group": {"observations": None}}
    for name, change in odd.items():
        with h5py.File(tmp / f"{name}.hdf5", "w") as f:
            for key, value in {**ended(10), **change}.items():
                if value is None:
                    f.create_group(key)["x"] = np.zeros((10, 6), np.float32)
                else:
                    f[key] = value
    odd = {"bytes_rewards": {"rewards": np.array([b"abc"] * 10)}, "int_obs": {"observations": np.zeros((10, 6), np.int64)},
           "wide_next": {"next_observations": np.zeros((10, 4), np.float32)}, "all_terminal": {"terminals": np.ones(10, bool)}}
    for name, change in odd.items():
        with h5py.File(tmp / f"{name}.hdf5", "w") as f:
            for key, value in {**ended(10), **change}.items():
                f[key] = value
    extra = {"wide_actions": ({"actions": np.zeros((10, 5), np.float32)}, {}),
             "word_refs": ({}, {"ref_min_score": "low", "ref_max_score": "high"}),
             "complex_obs": ({"observations": np.zeros((10, 6), np.complex64)}, {}),
             "negative_timeouts": ({"timeouts": np.full(10, -1, np.int8)}, {})}
    for name, (change, attrs) in extra.items():
        with h5py.File(tmp / f"{name}.hdf5", "w") as f:
            for key, value in {**ended(10), **change}.items():
                f[key] = value
            f.attrs.update(attrs)
    (tmp / "awac-empty").mkdir()
    clash = ("from dataclasses import dataclass\nfrom o2o.agents.core import ActorCritic\nfrom o2o.agents.cql import "
             "CQLConfig\nfrom o2o.agents.registry import register\n\n\n@dataclass\nclass AgainConfig(CQLConfig):\n"
             "    pass\n\n\n@register('cql', AgainConfig)\nclass Again(ActorCritic):\n    pass\n")
    for name, code in (("syntax", "def broken(:\n"), ("raises", "raise RuntimeError('raised on import')\n"),
                       ("clash", clash)):
        (tmp / f"conf-{name}" / "algo").mkdir(parents=True)
        (tmp / f"conf-{name}" / "algo" / "mine.py").write_text(code)
    np.savez(tmp / "noqpos.npz", observations=np.zeros((10, 28), np.float32), actions=np.zeros((10, 5), np.float32),
             terminals=np.zeros(10, np.float32))
    np.savez(tmp / "obj.npz", observations=np.array([{"ran": 1}] * 10, dtype=object), qpos=np.zeros((10, 3)),
             actions=np.zeros((10, 5), np.float32), terminals=np.zeros(10, np.float32))
    (tmp / "conf-typo" / "algo").mkdir(parents=True)
    (tmp / "conf-typo" / "algo" / "calql_typo.yaml").write_text("defaults:\n  - calql\n  - _self_\n\ncql_weigth: 2.0\n")
    (tmp / "conf-typo" / "extra").mkdir()
    (tmp / "conf-typo" / "extra" / "typo.yaml").write_text("# @package _global_\nsede: 3\n")
    os.mkfifo(tmp / "fifo.hdf5")
    os.symlink(tmp / "loop2.hdf5", tmp / "loop.hdf5")
    os.symlink(tmp / "loop.hdf5", tmp / "loop2.hdf5")
    for name, n in (("zero", 0), ("one", 1)):
        with h5py.File(tmp / f"{name}.hdf5", "w") as f:
            for key, value in arrays(n, 6).items():  # "one": a step whose episode never ends
                f[key] = value
    (tmp / "garbage-config-run").mkdir()
    (tmp / "garbage-config-run" / "resolved_config.yaml").write_text(":: [not yaml")
    newer = tmp / "newer.db"
    import sqlite3

    from mlflow.tracking import MlflowClient

    MlflowClient(f"sqlite:///{newer}").search_experiments()
    with sqlite3.connect(newer) as db:
        db.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")  # a revision this MLflow never had
    deleted = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    gone = deleted.create_run(deleted.create_experiment("deleted-runs")).info.run_id
    deleted.delete_run(gone)
    for name, run_id in (("deleted-run", gone), ("other-store-run", "0123456789abcdef0123456789abcdef")):
        (tmp / name).mkdir()
        (tmp / name / "mlflow_run_id").write_text(run_id)
    (tmp / "partial" / "D4RL" / "door" / "cloned-v2" / "data").mkdir(parents=True)
    (tmp / "corrupt-run" / "checkpoints").mkdir(parents=True)
    (tmp / "corrupt-run" / "checkpoints" / "latest.pt").write_bytes(b"garbage")
    store, run_dir = Path(os.environ["MLFLOW_TRACKING_URI"][len("sqlite:///"):]), tmp / "existing-run"
    MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).create_experiment("existing")
    run_dir.mkdir()
    (run_dir / "mlflow_run_id").write_text("abc")
    return tmp, [store, run_dir]


def fingerprint(paths):
    digest = hashlib.sha256()
    for root in paths:
        for path in sorted([root] if root.is_file() else root.rglob("*")):
            if path.is_file():
                digest.update(str(path).encode() + path.read_bytes())
    return digest.hexdigest()


def bad_case(tmp, overrides, env_changes) -> dict:
    """The command line (after ``src/main.py``) and the environment changes of one case."""
    fill = lambda text: text.replace("{tmp}", str(tmp))  # noqa: E731
    args = [fill(o) for o in overrides]
    if not any(a.startswith("hydra.run.dir=") for a in args) and "O2O_OUTPUTS" not in env_changes:
        # one folder per case: cases that differ only by their environment run at once, and a run folder has one job
        args.append(f"hydra.run.dir={tmp}/runs/{abs(hash((tuple(args), tuple(sorted(env_changes.items())))))}")
    smoke = SMOKE_ANY_ENV if any(a.startswith("env=") for a in args) else SMOKE  # PointMaze: collect a small dataset
    return {"argv": [*smoke, *args],
            "env": {"HF_HUB_OFFLINE": "1", **{k: v if v is None else fill(v) for k, v in env_changes.items()}}}


def run_folder(argv) -> Path | None:
    """The run folder a case names (``hydra.run.dir=``), unquoted."""
    value = next((a.split("=", 1)[1] for a in reversed(argv) if a.startswith("hydra.run.dir=")), None)
    return None if value is None else Path(value.strip("'\""))


def mlflow_runs() -> int:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    experiments = [e.experiment_id for e in client.search_experiments(view_type=3)]
    return len(client.search_runs(experiments, run_view_type=3, max_results=50000))


def run_cases(cases: list[dict], tmp) -> list[subprocess.CompletedProcess]:
    """Every case as ``python src/main.py``, forked from one process that imported the project once
    (tests/forked_main.py): the same exit status, stdout and stderr, without 40 cold starts (measured: about 10 s
    a case cold, 1 s forked)."""
    import json

    (tmp / "cases.json").write_text(json.dumps(cases))
    subprocess.run([sys.executable, str(ROOT / "tests" / "forked_main.py"), str(tmp / "cases.json"),
                    str(tmp / "results.json")], check=True, timeout=1200)
    results = json.loads((tmp / "results.json").read_text())
    slowest = sorted(zip((r["seconds"] for r in results), (" ".join(c["argv"][-3:]) for c in cases)), reverse=True)
    print("slowest cases:", "; ".join(f"{s:.1f} s {a}" for s, a in slowest[:8]))  # pytest -s shows them
    done = [subprocess.CompletedProcess(c["argv"], r["returncode"], r["stdout"], r["stderr"]) for c, r in zip(cases, results)]
    for proc, result in zip(done, results):
        proc.seconds = result["seconds"]
    return done


def test_every_bad_input_stops_with_one_line_and_touches_nothing(world):
    tmp, untouched = world
    before = fingerprint(untouched)
    assert len(BAD) >= 40
    cases = [bad_case(tmp, *case[:2]) for case in BAD.values()]
    folders = {name: run_folder(case["argv"]) for name, case in zip(BAD, cases)}
    existed = {name: folder is not None and folder.exists() for name, folder in folders.items()}
    runs_before = mlflow_runs()
    results = dict(zip(BAD, run_cases(cases, tmp)))
    failures = []
    for name, proc in results.items():
        expected = BAD[name][2].replace("{tmp}", str(tmp))
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        if proc.returncode != 2 or len(errors) != 1 or expected not in errors[0] or "Traceback" in proc.stderr:
            failures.append(f"{name}: exit {proc.returncode}, {errors or proc.stderr[-400:]}")
        elif folders[name] is not None and not existed[name] and folders[name].exists():
            failures.append(f"{name}: left the run folder {folders[name]} ({sorted(p.name for p in folders[name].iterdir())})")
        elif proc.seconds > 10:
            failures.append(f"{name}: took {proc.seconds:.1f} s")
    assert not failures, "\n".join(failures)
    assert mlflow_runs() == runs_before, "a bad input started an MLflow run"
    fresh = tmp / "fresh-outputs"  # the dated run folder and the default store: neither is made for a job that stops
    assert not fresh.exists() or not any(fresh.rglob("*")), sorted(fresh.rglob("*"))
    assert fingerprint(untouched) == before
    assert not (tmp / "ran").exists()  # no data file ran code


def test_the_forked_runner_is_a_subprocess_for_each_case(tmp_path):
    """tests/forked_main.py gives each case what ``python src/main.py`` would: its exit status, its own stderr, its
    environment, a traceback for an uncaught error."""
    cases = [{"argv": ["algo=nope"], "env": {}},
             {"argv": ["--info", "defaults"], "env": {}},
             {"argv": [*SMOKE, f"hydra.run.dir={tmp_path}/r"], "env": {"MLFLOW_TRACKING_URI": "foo://bar"}},
             {"argv": [*SMOKE, "schedule.offline_steps=1", "hydra.job_logging=nope"], "env": {}}]
    direct = [subprocess.run([sys.executable, str(ROOT / "src" / "main.py"), *c["argv"]], capture_output=True,
                             text=True, timeout=300, env={**os.environ, **c["env"]}) for c in cases]
    forked = run_cases(cases, tmp_path)
    for d, f in zip(direct, forked):
        assert (f.returncode, f.stderr.strip().splitlines()[-1:]) == (d.returncode, d.stderr.strip().splitlines()[-1:])
    assert forked[0].returncode == 2 and "Could not find 'algo/nope'" in forked[0].stderr
    assert forked[1].returncode == 0 and "Defaults List" in forked[1].stdout and forked[1].stdout == direct[1].stdout
    assert "cannot be opened" in forked[2].stderr and "foo://bar" not in os.environ.get("MLFLOW_TRACKING_URI", "")


def test_ctrl_c_is_one_line_that_says_how_to_resume(tmp_path):
    import signal
    import time

    proc = subprocess.Popen([sys.executable, str(ROOT / "src" / "main.py"), "experiment=smoke", "threads=1",
                             "schedule.offline_steps=100000", "env.dataset.collector.steps=1500", "progress=false",
                             f"hydra.run.dir={tmp_path}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a terminal's Ctrl-C: the default handler even when the suite itself runs in the
                            # background of a non-interactive shell, which starts it with SIGINT ignored
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and not (tmp_path / "mlflow_run_id").exists():
        time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("interrupted: run the same command again to resume")


def test_a_ctrl_c_swallowed_by_a_finalizer_still_stops_the_run():
    """Python swallows a KeyboardInterrupt raised inside a finalizer and goes on; the handler's flag makes the loop
    raise it at its next step, and the swallowed one prints nothing (no "Exception ignored" traceback)."""
    import signal

    from o2o.checkpoints import INTERRUPTED, catch_interrupts, raise_if_interrupted

    previous, hook, reported = signal.getsignal(signal.SIGINT), sys.unraisablehook, []
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.unraisablehook = reported.append  # stands for Python's default, which prints "Exception ignored"
        catch_interrupts()
        handler = signal.getsignal(signal.SIGINT)
        assert handler is not signal.default_int_handler
        swallowed = []
        try:  # what a finalizer does with it: the exception goes nowhere
            handler(signal.SIGINT, None)
        except KeyboardInterrupt:
            swallowed.append(True)
        assert swallowed and INTERRUPTED.is_set()
        with pytest.raises(KeyboardInterrupt):
            raise_if_interrupted()
        # a real finalizer: Python hands what it raises to sys.unraisablehook. The Ctrl-C prints nothing (the flag
        # stops the run), anything else still reaches the previous hook
        class Finalized:
            def __init__(self, error):
                self.error = error

            def __del__(self):
                if self.error is KeyboardInterrupt:
                    handler(signal.SIGINT, None)
                raise self.error("from a finalizer")

        for error in (KeyboardInterrupt, ValueError):
            Finalized(error)  # dropped at once: __del__ runs here
        assert [type(u.exc_value) for u in reported] == [ValueError]
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # ignored (a background job): left alone
        catch_interrupts()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        INTERRUPTED.clear()
        signal.signal(signal.SIGINT, previous)
        sys.unraisablehook = hook


def test_a_sweep_whose_job_fails_runs_the_others_and_ends_with_one_line(tmp_path, main_py):
    """The default launcher (jobs one after another here): a job that fails inside its work is named, the jobs after
    it still run, the parent run ends FAILED naming it, and the command ends with one line and exit 2."""
    from mlflow.tracking import MlflowClient

    from conftest import exploding_algorithm

    store = f"sqlite:///{tmp_path / 'sweep.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "O2O_CONFIG_PATH": str(exploding_algorithm(tmp_path / "conf"))}
    done = subprocess.run(main_py + ["-m", "algo=exploding,calql", *SMOKE, "schedule.offline_steps=4",
                                     "schedule.online_steps=0", f"hydra.sweep.dir={tmp_path / 'sweep'}", "progress=false"],
                          env=env, capture_output=True, text=True, timeout=300)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert errors[0].startswith("error: 1 of 2 jobs failed, the others' results are kept: RuntimeError: this "
                                "algorithm fails on its first update, on purpose (in the sweep's job with algo=exploding")
    client = MlflowClient(store)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    (parent,) = [r for r in runs if r.data.tags.get("sweep") == "true"]
    assert parent.info.status == "FAILED" and parent.data.tags["failed_jobs"].startswith("algo=exploding")
    finished = [r for r in runs if r.data.tags.get("algo") == "calql" and r.info.status == "FINISHED"]
    assert len(finished) == 1  # the job after the failed one ran


def test_a_submitit_job_killed_from_outside_is_reported_and_the_others_are_waited_for(tmp_path, main_py):
    """hydra-submitit waits on its jobs in turn and raises at the first that left no result, leaving the later ones
    unwatched: here the killed job is named in one line, the job after it finishes, the parent run ends FAILED."""
    from mlflow.tracking import MlflowClient

    from conftest import exploding_algorithm

    store = f"sqlite:///{tmp_path / 'sweep.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": store,
           "O2O_CONFIG_PATH": str(exploding_algorithm(tmp_path / "conf", "killed"))}
    done = subprocess.run(main_py + ["-m", "algo=killed,calql", "hydra/launcher=submitit_local", *SMOKE,
                                     "schedule.offline_steps=4", "schedule.online_steps=0", "progress=false",
                                     f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                          env=env, capture_output=True, text=True, timeout=300)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert errors[0].startswith("error: 1 of 2 jobs failed, the others' results are kept: JobLeftNoResult: job "), \
        errors[0]
    assert "ended without a result: killed from outside" in errors[0] and "(in the sweep's job with algo=killed " in errors[0]
    client = MlflowClient(store)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    (parent,) = [r for r in runs if r.data.tags.get("sweep") == "true"]
    assert parent.info.status == "FAILED" and parent.data.tags["failed_jobs"].startswith("algo=killed")
    finished = [r for r in runs if r.data.tags.get("algo") == "calql" and r.info.status == "FINISHED"]
    assert len(finished) == 1  # the job after the killed one was waited for


def test_a_submitit_job_that_failed_outside_its_task_reads_as_failed_with_its_error(tmp_path):
    """An error outside Hydra's task handler (loading the sweep's config, a callback) leaves submitit's
    FailedJobError, its trace followed by the log paths: it reads as one failed job named with the trace's last line;
    a job's result, and any other attribute, is the job's own."""
    from hydra.core.utils import JobStatus
    from submitit.core.core import Job
    from submitit.core.utils import cloudpickle_dump

    from o2o.launchers import JobLeftNoResult, _SettledJob

    class DoneJob(Job):
        def done(self, force_check=False):
            return True

    job = DoneJob(tmp_path, job_id="42")
    job.paths.folder.mkdir(parents=True, exist_ok=True)
    cloudpickle_dump(("error", "Traceback (most recent call last):\n  File x\nValueError: boom\n"),
                     job.paths.result_pickle)
    (failed,) = _SettledJob(job).results()
    assert failed.status == JobStatus.FAILED and isinstance(failed._return_value, JobLeftNoResult)
    assert str(failed._return_value).startswith("job 42 failed outside its task: ValueError: boom; its logs are in ")
    cloudpickle_dump(("success", "a result"), job.paths.result_pickle)
    assert _SettledJob(job).results() == ["a result"] and _SettledJob(job).job_id == "42"


def test_a_study_may_set_a_key_its_command_line_sets_again_but_a_swept_key_given_twice_is_refused():
    """Hydra keeps a key's last value: a study's smoke values followed by the user's own value are fine; a later value
    that would drop an earlier list of values is refused."""
    from o2o.cli import check_sweep_settings

    check_sweep_settings(["experiment=smoke", "schedule.online_steps=40", "schedule.online_steps=1000", "seed=0,1"])
    with pytest.raises(UserError, match="seed is given twice"):
        check_sweep_settings(["seed=0,1", "seed=2"])


def test_study_and_report_inputs_that_cannot_be_read_stop_with_one_line(tmp_path, capsys, monkeypatch):
    """A store that does not exist, a parent run that is not in the store, a study record that is not gzip or not
    JSON, an MLflow filter that does not parse: one line each, no traceback."""
    import gzip

    from o2o.archive import read_records
    from o2o.errors import ConfigError
    from o2o.report import main as report
    from o2o.study import main as study
    from o2o.tracking import open_store

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"  # this test's own: it must not depend on which tests ran before
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    for expected in ("the store " + store + " does not exist", "no such run"):
        with pytest.raises(SystemExit) as stopped:
            study(["pointmaze_o2o", "--page-only", "bogus123", "--out", str(tmp_path / "pages")])
        assert stopped.value.code == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and errors[0].startswith(f"error: --page-only bogus123: {expected}")
        open_store(store)  # made: the second round finds the store and not the run
    from mlflow.tracking import MlflowClient

    plain = MlflowClient(store).create_experiment("plain")
    single = MlflowClient(store).create_run(plain).info.run_id
    child = MlflowClient(store).create_run(plain, tags={"mlflow.parentRunId": single}).info.run_id
    for run_id, what in ((single, "a single run"), (child, f"a run of sweep {single}")):
        with pytest.raises(SystemExit):
            study(["pointmaze_o2o", "--page-only", run_id, "--out", str(tmp_path / "pages")])
        assert capsys.readouterr().err.strip() == (f"error: --page-only {run_id}: that is {what}, not a sweep's parent "
                                                   "run: give the sweep's parent run id (the study printed it; "
                                                   "tags.sweep = 'true' in MLflow)")
    for name, content in (("corrupt", b"not gzip at all"), ("bad-json", gzip.compress(b"{not json"))):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "run.json.gz").write_bytes(content)
        with pytest.raises(ConfigError, match="cannot be read as a study record") as bad:
            read_records(folder)
        assert "\n" not in str(bad.value)
    from mlflow.tracking import MlflowClient

    MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).create_experiment("o2o-report-filter")
    from o2o.data.build.cli import main as data

    a_file = tmp_path / "a-file"
    a_file.write_text("kept")
    runs_before, minari = mlflow_runs(), os.environ["MINARI_DATASETS_PATH"]
    records = shutil.copytree(ROOT / "docs" / "results" / "pen_o2o-cpu" / "records", tmp_path / "records")

    for tool, argv, line in (
            (report, ["--experiment", "o2o-report-filter", "--filter", "params.x ((( =", "--no-mlflow"],
             "error: the run filter"),
            (report, ["--experiment", "no-such-experiment", "--no-mlflow"], "error: no MLflow experiment named"),
            (report, ["--experiment", "o2o-report-filter", "--no-mlflow"], "error: no runs in experiment"),
            (report, ["--dip-fraction", "-1"], "error: o2o-report: --dip-fraction must be in (0, 1]"),
            (report, ["--bogus"], "error: o2o-report: unrecognized arguments: --bogus (see o2o-report --help)"),
            (study, [], "error: o2o-study: the following arguments are required: name"),
            (data, ["build-adroit", "--expert-episodes", "-5", "--awac-rollouts", "0"],
             "error: o2o-data build-adroit: argument --expert-episodes: -5 is below 1"),
            (data, ["build-adroit", "--bc-noise", "nan"], "argument --bc-noise: nan is not a finite number >= 0"),
            (data, ["build-adroit", "--namespace", "D4RL"], "--namespace D4RL is an official one; choose your own"),
            (data, ["bogus"], "error: o2o-data: argument command: invalid choice: 'bogus'"),
            # folders that are files: refused before any run is read or any episode is built
            (report, ["--experiment", "o2o-report-filter", "--no-mlflow", "--out", str(a_file)],
             f"error: --out {a_file} cannot be written ({a_file} is a file)"),
            (data, ["build-ogbench", "--env", "cube-single", "--episodes", "1", "--out", str(a_file)],
             f"error: --out {a_file} cannot be written"),
            (data, ["list"], f"(MINARI_DATASETS_PATH) {a_file} is a file: name a folder"),
            (data, ["build-adroit", "--tasks", "door"], f"(MINARI_DATASETS_PATH) {a_file} cannot be written"),
            # a study's overrides and its preset's sweep checked before the sweep starts: no parent run is made
            (study, ["pointmaze_o2o", "--budget", "smoke", "--out", str(tmp_path / "pages"), "algo.gamma=2"],
             "error: algo.gamma must be in (0, 1), got 2.0"),
            (study, ["pointmaze_o2o", "--budget", "smoke", "--out", str(tmp_path / "pages"),
                     "hydra.sweeper.params.seed=0,x"], "seed must be an integer, got 'x' (in the sweep's job with seed=x)"),
            # ... also before a continued study restores its records (15 runs and a parent) or its dataset
            (study, ["pen_o2o", "--records", str(records), "--out", str(tmp_path / "pages"), "algo.gamma=2"],
             "error: algo.gamma must be in (0, 1), got 2.0")):
        monkeypatch.setenv("MINARI_DATASETS_PATH",
                           str(a_file) if argv in (["list"], ["build-adroit", "--tasks", "door"]) else minari)
        with pytest.raises(SystemExit) as stopped:
            tool(argv)
        out, err = capsys.readouterr()
        err = err.strip()
        assert "running:" not in out and "restored" not in out, out
        assert stopped.value.code == 2 and err.startswith("error: ") and line in err and "\n" not in err, (argv, err)
    assert a_file.read_text() == "kept"
    assert not list(tmp_path.joinpath("pages").rglob("*.json")) and mlflow_runs() == runs_before


def test_a_legal_value_that_is_almost_surely_a_mistake_starts_the_run_and_says_so(tmp_path):
    from o2o.config import doubtful_settings, validate

    assert doubtful_settings(validate(compose_smoke())) == []
    doubts = doubtful_settings(validate(compose_smoke(["schedule.offline_steps=10", "schedule.eval_interval_offline=50",
                                                       "schedule.online_steps=20", "schedule.eval_interval_online=30",
                                                       "algo.warmup_steps=20"])))
    assert [d.split(" ", 1)[0] for d in doubts] == ["schedule.eval_interval_offline=50", "schedule.eval_interval_online=30",
                                                    "algo.warmup_steps=20"]
    (one,) = doubtful_settings(validate(compose_smoke(["algo=rlpd", "algo.ensemble_size=1"])))  # PointMaze: subset 1
    assert one.startswith("algo.ensemble_size=1 with algo.target_subset=1: one critic")
    (upsampled,) = doubtful_settings(validate(compose_smoke(["retrain=ooo", "retrain.upsample_batch=100000"])))
    assert upsampled.startswith("retrain.upsample_batch=100000 is more than the buffer.batch_size=")
    assert doubtful_settings(validate(compose_smoke(["retrain=ooo", "retrain.upsample_batch=32"]))) == []
    (zero,) = doubtful_settings(validate(compose_smoke(["schedule.eval_interval_online=0"])))
    assert zero == ("schedule.eval_interval_online=0: the online stage is evaluated only at its end (0 does not turn "
                    "evaluation off)")
    (run,) = run_cases([{"argv": [*SMOKE, "schedule.offline_steps=4", "schedule.online_steps=6", "algo.warmup_steps=2",
                                  "schedule.eval_interval_online=100", "calibration_batch=1e8",
                                  f"hydra.run.dir={tmp_path / 'run'}",
                                  "progress=false", "mlflow.system_metrics=false"], "env": {}}], tmp_path)
    output = run.stdout + run.stderr  # Hydra's console log is stdout
    warnings = [line for line in output.splitlines() if "WARNING" in line and "eval_interval_online" in line]
    assert run.returncode == 0 and len(warnings) == 1, output[-2000:]
    assert warnings[0].endswith("schedule.eval_interval_online=100 is longer than the 6 online steps: fine-tuning is "
                                "evaluated only at its end")
    assert any(line.endswith("calibration_batch=100000000 is more than the 1529 offline transitions: the calibration "
                             "batch is all of them") for line in output.splitlines())
    from mlflow.tracking import MlflowClient  # and the run says which size it used

    run_id = (tmp_path / "run" / "mlflow_run_id").read_text().strip()
    assert MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_run(run_id).data.tags["calibration_batch_used"] == "1529"


def compose_smoke(overrides=()):
    from conftest import compose

    return compose([*SMOKE, *overrides])


def test_a_refused_job_removes_only_a_run_folder_it_claimed(tmp_path):
    """The clean-up after a job that stopped before its work: never a folder another job holds (a second job refused
    by the first one's claim), never one that existed before the command, and only the parents it made."""
    from o2o import cli
    from o2o.pipeline import RUN_CLAIM, claim_run_dir

    def hydra_litter(folder):
        (folder / ".hydra").mkdir(parents=True)
        (folder / "cli.log").write_text("")
        (folder / RUN_CLAIM).write_text("process 1")

    others = tmp_path / "outputs" / "runs" / "another-job"
    hydra_litter(others)  # made by another job, whose claim this process does not hold
    assert not cli.remove_new_run_folder(str(others), "cli") and others.is_dir()
    existing = tmp_path / "existing"
    hydra_litter(existing)
    claim_run_dir(existing)
    cli._EXISTING_RUN_FOLDERS.clear()
    try:
        cli.remember_existing_folders(str(existing))
        assert not cli.remove_new_run_folder(str(existing), "cli") and existing.is_dir()
        cli._EXISTING_RUN_FOLDERS.clear()
        cli.remember_existing_folders(str(tmp_path / "new" / "deeper"))
        mine = tmp_path / "new" / "deeper"
        hydra_litter(mine)
        claim_run_dir(mine)
        assert cli.remove_new_run_folder(str(mine), "cli")
        assert not (tmp_path / "new").exists() and tmp_path.is_dir()  # the parent it made went too, nothing above
    finally:
        cli._EXISTING_RUN_FOLDERS.clear()


def test_a_flag_after_the_overrides_and_one_job_of_a_sweeping_preset():
    """``-m`` typed after some overrides moves before them (Hydra's parser takes one run of overrides); a single run
    of a preset that sweeps (a study's) starts, and says that it is one job of that sweep."""
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from o2o.cli import hydra_flags_first, one_job_of_a_sweep

    assert hydra_flags_first(["experiment=smoke", "-m", "algo=calql,cql"]) == ["-m", "experiment=smoke", "algo=calql,cql"]
    assert hydra_flags_first(["--cfg", "job", "seed=1"]) == ["--cfg", "job", "seed=1"]
    with pytest.raises(UserError, match="--info and --multirun are two of Hydra's modes"):
        hydra_flags_first(["seed=1", "--multirun", "-i", "searchpath"])
    with pytest.raises(UserError, match="--cfg and --multirun are two of Hydra's modes"):
        hydra_flags_first(["-m", "--cfg=job"])
    # a sweep param given on the command line without a preset: its jobs (Hydra's params hold none by default)
    from o2o.cli import sweep_param, sweep_variants, sweeper_param_overrides

    args = ["experiment=smoke", sweep_param("hydra.sweeper.params.seed=0,1")]
    assert sweeper_param_overrides(args) == ["seed=0,1"]
    assert [job for job, _ in sweep_variants([*sweeper_param_overrides(args), *args])] == [
        ["seed=0", *args], ["seed=1", *args]]
    with pytest.raises(UserError, match=r"hydra.sweeper.params.algo.gamma: a sweep param with a dot cannot be given on "
                                        r"the command line \(Hydra nests it\): sweep the key itself, -m "
                                        r"algo.gamma=0.9,0.99"):
        sweep_param("hydra.sweeper.params.algo.gamma=0.9,0.99")

    def hydra(mode, params, preset="study/pen_o2o/cpu"):
        return OmegaConf.create({"mode": mode, "sweeper": {"params": params},
                                 "runtime": {"choices": {"experiment": preset}}})

    (line,) = one_job_of_a_sweep(hydra(RunMode.RUN, {"algo": "calql,cql", "seed": "0,1"}))
    assert line == ("experiment=study/pen_o2o/cpu sweeps algo=calql,cql seed=0,1 (hydra.sweeper.params); without -m "
                    "this runs one job, with this command's values or the config's: add -m to run the sweep, or "
                    "o2o-study pen_o2o")
    assert one_job_of_a_sweep(hydra(RunMode.RUN, {"seed": "0,1"}, "study/door_calibration/paper"))[0].endswith(
        "add -m to run the sweep, or o2o-study door_calibration --budget paper")
    assert one_job_of_a_sweep(hydra(RunMode.RUN, {"seed": "0,1"}, None))[0].startswith("the config sweeps seed=0,1")
    assert one_job_of_a_sweep(hydra(RunMode.RUN, {})) == []
    assert one_job_of_a_sweep(hydra(RunMode.MULTIRUN, {"seed": "0,1"})) == []  # the sweep itself
    assert "o2o-study" not in one_job_of_a_sweep(hydra(RunMode.RUN, {"seed": "0,1"}, preset="smoke"))[0]
