"""conf/companion/: each companion method as one choice, equal to the groups it stands for."""
import pytest
from omegaconf import OmegaConf

from conftest import compose

SAME_AS = {
    "plain": [],
    "ooo": ["exploration=rnd", "retrain=ooo"],
    "qknn": ["exploration=qknn", "exploration.coef=1.0"],
    "v_ref_regression": ["reference=regression"],
    "v_ref_td": ["reference=td"],
    "v_ref_quantile": ["reference=quantile"],
}


def plain(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize("companion", sorted(SAME_AS))
def test_a_companion_is_the_groups_it_names(companion):
    for env in ("env=pointmaze_umaze", "env=adroit_door"):
        assert plain(compose([env, f"companion={companion}"])) == plain(compose([env, *SAME_AS[companion]]))


def test_the_shortened_ooo_differs_from_ooo_only_in_its_retraining_steps():
    ooo, short = (plain(compose(["experiment=study/pointmaze_o2o/cpu", f"companion={c}"]))
                  for c in ("ooo", "ooo_short_retrain"))
    assert ooo["retrain"]["steps"] == 1_000_000 and short["retrain"]["steps"] == short["schedule"]["offline_steps"] == 20_000
    short["retrain"]["steps"] = ooo["retrain"]["steps"]
    assert short == ooo


def test_a_command_line_choice_wins_over_the_companions():
    assert compose(["companion=ooo", "exploration=rnd_trained"]).exploration.rnd_trains is True
