"""``compile=true`` (o2o.agents.compiled): one graph per update, the same numbers as the eager update.

The inductor case compiles for real (about 20-30 s on 2 cores); the others use the ``aot_eager`` backend, which
traces the same single graph (``fullgraph=True``: any graph break fails) and runs it op by op in seconds.
"""
import pytest
import torch

from o2o.buffers import Batch
from o2o.agents.registry import agent_class
from o2o import metrics as M
from o2o.metrics import OFFLINE, ONLINE
from conftest import ALGOS, algo_config, compose

OBS, ACT, B, STEPS = 5, 3, 16, 6


def make(name, compiled_backend=None, precision="fp32", **overrides):
    torch.manual_seed(0)
    cfg = algo_config(name, **{"actor_hidden": [16, 16], "critic_hidden": [16, 16], **overrides})
    agent = agent_class(cfg)(OBS, ACT, cfg, torch.device("cpu"), precision, total_updates=2 * STEPS)
    if compiled_backend:
        agent.compile_update(backend=compiled_backend)
    return agent


def batches(n, size=B):
    g = torch.Generator().manual_seed(1)
    return [Batch(torch.randn(size, OBS, generator=g), torch.rand(size, ACT, generator=g) * 2 - 1,
                  torch.randn(size, generator=g), torch.randn(size, OBS, generator=g),
                  (torch.rand(size, generator=g) < 0.2).float(), torch.randn(size, generator=g),
                  torch.rand(size, ACT, generator=g) * 2 - 1) for _ in range(n)]  # next actions: ReBRAC reads them


def train(agent, data, phase=OFFLINE):
    agent.begin_phase(phase)
    torch.manual_seed(2)  # the update's noise
    return [agent.update(batch) for batch in data]


def assert_same_training(eager, compiled, eager_metrics, compiled_metrics, tol=1e-5):
    assert eager.grad_steps == compiled.grad_steps
    for m_eager, m_compiled in zip(eager_metrics, compiled_metrics):  # every step's losses and diagnostics
        assert m_eager.keys() == m_compiled.keys()
        for key in m_eager:
            torch.testing.assert_close(m_compiled[key], m_eager[key], atol=tol, rtol=tol, msg=key)
    state_eager, state_compiled = eager.state_dict(), compiled.state_dict()
    for key in state_eager:
        torch.testing.assert_close(state_compiled[key], state_eager[key], atol=tol, rtol=tol, msg=key)
    params = [[p for g in agent.optimizer.param_groups for p in g["params"]] for agent in (eager, compiled)]
    for p_eager, p_compiled in zip(*params):
        s_eager, s_compiled = eager.optimizer.state[p_eager], compiled.optimizer.state[p_compiled]
        assert s_eager.keys() == s_compiled.keys()  # frozen or unused parameters get no Adam state in either
        for key in s_eager:
            torch.testing.assert_close(s_compiled[key], s_eager[key], atol=tol, rtol=tol)


CASES = {
    # Cal-QL with its bound on, compiled for real by inductor
    "calql-inductor": ("calql", "inductor", {}),
    "cql-lagrange": ("cql", "aot_eager", {"lagrange": True}),
    # the actor every 2nd step (its Adam state must stay put in between), the random target subset, LayerNorm
    "rlpd": ("rlpd", "aot_eager", {"actor_update_interval": 2}),
    # dropout (RNG inside the graph) and the cosine learning-rate schedule (no recompile per rate)
    "iql": ("iql", "aot_eager", {"actor_dropout": 0.1, "actor_lr_schedule": "cosine"}),
}
# every other algorithm option, as its YAML has it: a new algorithm is checked without a line here
CASES.update({algo: (algo, "aot_eager", {}) for algo in ALGOS if algo not in {name for name, _, _ in CASES.values()}})
# WSRL's 10 LayerNorm critics and LayerNorm policy: the graph's LayerNorm backward is decomposed, eager's is one
# kernel; their sums differ in the last bits, which Adam's first moment shows at up to 1.8e-5 (measured alike on
# the code before the algorithm registry)
TOLERANCE = {"wsrl": 5e-5}


@pytest.mark.parametrize("case", CASES)
def test_compiled_update_equals_eager(case):
    name, backend, overrides = CASES[case]
    data = batches(STEPS)
    eager, compiled = make(name, **overrides), make(name, backend, **overrides)
    assert_same_training(eager, compiled, train(eager, data), train(compiled, data), TOLERANCE.get(case, 1e-5))
    if name == "calql":
        assert compiled.calibrate and "calql_bound_rate" in train(compiled, data[:1])[0]
    if name == "iql":
        assert compiled.optimizer.param_groups[0]["lr"] == eager.optimizer.param_groups[0]["lr"] < compiled.cfg.actor_lr


def test_rebrac_online_decay_compiles_once_and_equals_eager():
    """ReBRAC's online penalty weights change every update (the decay): graph inputs, not constants baked in."""
    data = batches(STEPS)
    eager, compiled = make("rebrac"), make("rebrac", "aot_eager")
    for agent in (eager, compiled):
        agent.grad_steps = 3  # pre-training took 3 of the 12 planned updates
    metrics = [train(agent, data, ONLINE) for agent in (eager, compiled)]
    assert_same_training(eager, compiled, *metrics)
    weights = [m["actor_bc_weight"].item() for m in metrics[1] if "actor_bc_weight" in m]
    assert len(set(weights)) == len(weights) > 1  # it moved, and the compiled update followed it


@pytest.mark.parametrize("algo, overrides", [("calql", {}), ("rlpd", {"actor_update_interval": 2})])
def test_compiled_bf16_equals_eager_bf16(algo, overrides):  # one summed step; the actor's step after the critic's
    data = batches(3)
    eager, compiled = make(algo, precision="bf16", **overrides), make(algo, "aot_eager", precision="bf16", **overrides)
    assert_same_training(eager, compiled, train(eager, data), train(compiled, data))


def test_a_phase_switch_recompiles_to_the_new_losses():
    """Cal-QL calibrated offline, plain CQL online: the compiled update follows the agent's switch."""
    data = batches(4)
    eager, compiled = (make("calql", backend, calibrate_online=False) for backend in (None, "aot_eager"))
    runs = [train(agent, data[:2]) + train(agent, data[2:], ONLINE) for agent in (eager, compiled)]
    assert_same_training(eager, compiled, *runs)
    assert "calql_bound_rate" in runs[1][1] and "calql_bound_rate" not in runs[1][2]


def test_wsrl_recompiles_from_cal_ql_to_sac_losses():
    """WSRL: Cal-QL offline (10 LayerNorm critics, LayerNorm policy), SAC online (no regulariser, another backup,
    the actor's step after the block's critic steps: two steps in one graph)."""
    data = batches(6)
    eager, compiled = (make("wsrl", backend, actor_update_interval=2) for backend in (None, "aot_eager"))
    runs = [train(agent, data[:2]) + train(agent, data[2:], ONLINE) for agent in (eager, compiled)]
    assert_same_training(eager, compiled, *runs)
    assert "cql_gap" in runs[1][1] and "cql_gap" not in runs[1][2]
    assert compiled.actor_after_critic and sum(M.ACTOR_LOSS in m for m in runs[1][2:]) == 1  # one block's actor step


def test_inductor_bf16_on_cpu_stays_finite_and_close_to_eager():
    """bf16 through inductor's own kernels, at a width (64) where its vectorised code once gave NaN action
    gradients for the actor's Q (EnsembleCritic's split first layer with one action per state), batch 256."""
    data = batches(3, size=256)
    eager, compiled = (make("calql", backend, "bf16", critic_hidden=[64, 64]) for backend in (None, "inductor"))
    runs = [train(agent, data) for agent in (eager, compiled)]
    assert all(torch.isfinite(p).all() for p in compiled.parameters())
    assert_same_training(eager, compiled, *runs, tol=2e-2)  # bf16: inductor keeps fp32 inside fused kernels


def test_checkpoints_move_between_compiled_and_eager():
    """A compiled run's checkpoint resumes eagerly (and back) to the same numbers as an eager run throughout."""
    data = batches(STEPS)
    reference = make("calql")
    reference_metrics = train(reference, data[:3]) + train(reference, data[3:], ONLINE)
    first = make("calql", "aot_eager")
    train(first, data[:3])
    second = make("calql")
    second.restore(first.checkpoint())
    assert_same_training(reference, second, reference_metrics[3:], train(second, data[3:], ONLINE))


def test_compile_config_reaches_the_agent():
    from o2o.config import validate
    from o2o.pipeline import make_agent

    cfg = validate(compose(["compile=true"]))
    assert make_agent(cfg, OBS, ACT, torch.device("cpu")).compiled_update is not None
    assert make_agent(validate(compose(["compile=false"])), OBS, ACT, torch.device("cpu")).compiled_update is None


def test_compile_auto_compiles_where_the_planned_updates_repay_it(monkeypatch):
    import shutil

    from o2o.runtime import COMPILE_BREAK_EVEN_UPDATES, choose_compile

    cpu = torch.device("cpu")
    assert choose_compile("true", cpu, 10) == (True, "set by compile=")
    assert choose_compile(False, cpu, 10 ** 9) == (False, "set by compile=")
    assert choose_compile("auto", cpu, COMPILE_BREAK_EVEN_UPDATES - 1)[0] is False
    compiled, why = choose_compile("auto", cpu, COMPILE_BREAK_EVEN_UPDATES)
    assert compiled and "repay" in why
    monkeypatch.setattr(shutil, "which", lambda name: None)  # no C++ compiler
    compiled, why = choose_compile("auto", cpu, 10 ** 9)
    assert not compiled and "no C++ compiler" in why
    assert choose_compile("auto", torch.device("meta"), 10 ** 9)[0] is False


def test_the_smoke_preset_runs_eager_and_the_paper_schedule_compiles():
    from o2o.config import validate
    from o2o.config import planned_updates
    from o2o.runtime import COMPILE_BREAK_EVEN_UPDATES, choose_compile

    for overrides, expected in ((["experiment=smoke"], False), ([], True)):
        cfg = validate(compose(overrides))
        assert cfg.compile == "auto"
        assert (planned_updates(cfg) >= COMPILE_BREAK_EVEN_UPDATES) == expected
        assert choose_compile(cfg.compile, torch.device("cpu"), planned_updates(cfg))[0] == expected


def test_many_compiled_agents_in_one_process():
    """Dynamo sees every agent's update as one code object; OOO's interval retraining makes a fresh agent each
    time, and the default limit (8 graphs) failed the 9th. ``eager`` backend: the limit is Dynamo's."""
    data = batches(1)
    for width in range(4, 13):  # SAC: the smallest graph to trace
        agent = make("sac", "eager", critic_hidden=[width])
        assert train(agent, data)[0].keys()
