import subprocess

import pytest

from conftest import compose
from o2o.config import ConfigError, validate


@pytest.mark.parametrize("env", ["pointmaze_umaze", "adroit_door"])
@pytest.mark.parametrize("algo", ["calql", "cql"])
def test_every_group_option_composes_and_validates(env, algo):
    cfg = validate(compose([f"env={env}", f"algo={algo}"]))
    assert cfg.algo.calibrated == (algo == "calql")


def test_paper_adroit_settings():
    cfg = validate(compose(["env=adroit_door"]))
    assert cfg.schedule.offline_steps == 20_000
    assert cfg.algo.critic_hidden == [512, 512, 512] and cfg.algo.actor_hidden == [512, 512]
    assert cfg.algo.cql_weight == 1.0 and cfg.buffer.mixing_ratio == 0.5
    assert (cfg.env.reward.scale, cfg.env.reward.bias, cfg.env.reward.binary_from_success) == (10.0, 5.0, True)
    assert cfg.env.dataset.id == "D4RL/door/cloned-v2"


def test_smoke_overrides_the_domain_preset():
    cfg = validate(compose(["env=adroit_door", "schedule=smoke"]))
    assert cfg.schedule.offline_steps < 100 and cfg.algo.critic_hidden == [32, 32]


@pytest.mark.parametrize("override, message", [
    ("buffer.mixing_ratio=1.5", "buffer.mixing_ratio"),
    ("buffer.mixing_ratio=-0.5", "buffer.mixing_ratio"),
    ("algo.gamma=1.0", "algo.gamma"),
    ("algo.gamma=0", "algo.gamma"),
    ("schedule.offline_steps=-5", "schedule.offline_steps"),
    ("schedule.online_steps=-1", "schedule.online_steps"),
    ("env.eval_episodes=0", "env.eval_episodes"),
    ("schedule.utd_ratio=0", "schedule.utd_ratio"),
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
    (["buffer.mixing_ratio=2"], "buffer.mixing_ratio must be in [0, 1] or -1"),
    (["algo=nope"], "Could not find 'algo/nope'"),
    (["env.dataset.id=o2o/none/missing-v0", "env.dataset.collector=null"], "o2o/none/missing-v0"),
])
def test_cli_stops_with_one_clear_message(main_py, args, fragment, tmp_path):
    proc = subprocess.run(main_py + args + [f"hydra.run.dir={tmp_path}/run"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    assert fragment in proc.stderr
    assert "Traceback" not in proc.stderr
