"""WSRL (zhouzypaul/wsrl) as its authors run it: the recipe per domain, its SAC fine-tuning loss against a plain
formulation, and its warm-up (the pre-trained policy acts, no updates) and fine-tuning without offline data."""
import pytest
import torch

from conftest import SMOKE, algo_config, compose, plain_q
from test_baseline_losses import ACT, B, OBS, make_batch
from test_cql_losses import plain_policy
from o2o import metrics as M
from o2o.agents.cql import CQL
from o2o.config import validate


def test_the_recipe_is_the_authors_on_adroit():
    algo = validate(compose(["algo=wsrl", "env=adroit_door"])).algo
    assert (algo.utd_ratio, algo.online_actor_update_interval, algo.update_schedule) == (4, 4, "step")
    assert algo.actor_update_interval == 1  # pre-training is Cal-QL's: the actor steps with every critic step
    assert (algo.ensemble_size, algo.target_subset, algo.layer_norm, algo.actor_layer_norm) == (10, 2, True, True)
    assert (algo.warmup_steps, algo.warmup_actions, algo.mixing_ratio) == (5000, "policy", 0.0)
    assert algo.calibrate_offline and not algo.calibrate_online and not algo.online_regulariser
    assert algo.max_target_backup and not algo.online_max_target_backup  # Cal-QL's backup offline, SAC's online
    assert (algo.critic_hidden, algo.actor_hidden, algo.cql_weight) == ([512] * 3, [512] * 2, 1.0)
    assert (algo.reward_scale, algo.reward_bias, algo.gamma, algo.target_entropy_scale) == (10.0, 5.0, 0.99, 1.0)
    assert (algo.actor_lr, algo.critic_lr, algo.tau, algo.backup_entropy) == (1e-4, 3e-4, 5e-3, False)


@pytest.mark.parametrize("env, calibrate, backup, bias", [
    ("antmaze_umaze", True, True, -5.0),  # antmaze_wsrl: max_target_backup
    ("kitchen_mixed", True, False, -4.0),  # launch_wsrl_finetune.sh: --reward_bias -4.0
    ("halfcheetah", False, False, 0.0),  # README: CQL pre-training on locomotion
    ("ogbench_cube_single", True, False, 0.0),  # andypeng05/wsrl ogbench_wsrl
    ("visual_pick_place", True, False, 0.0),  # no WSRL run: Cal-QL's settings, wsrl.yaml's fine-tuning
])
def test_the_recipe_per_domain(env, calibrate, backup, bias):
    algo = validate(compose(["algo=wsrl", f"env={env}"])).algo
    assert (algo.calibrate_offline, algo.online_max_target_backup, algo.reward_bias) == (calibrate, backup, bias)
    assert algo.mixing_ratio == 0.0
    # pre-training: the domain's Cal-QL run (CQL's on locomotion)
    reference = validate(compose([f"algo={'cql' if env == 'halfcheetah' else 'calql'}", f"env={env}"])).algo
    for key in ("critic_hidden", "actor_hidden", "cql_weight", "reward_scale", "backup_actions", "max_target_backup"):
        assert getattr(algo, key) == getattr(reference, key), key


def test_wsrl_keeps_no_offline_data_where_it_has_no_per_domain_values():
    """wsrl.yaml's own value, which a domain of one's own gets (every project domain has a per-domain file)."""
    algo = validate(compose(["algo=wsrl", "~algo/per_domain@algo"])).algo
    assert not algo.online_max_target_backup  # per_domain/wsrl/pointmaze.yaml's true is gone
    assert algo.mixing_ratio == 0.0


def test_fine_tuning_is_sac_on_the_pre_trained_networks():
    """Online: every critic's TD error against r + gamma (1 - d) min over the subset of target critics at one
    policy action (no max backup, no entropy), the actor on the min over all ten; no CQL term. Offline the same
    agent's loss has the regulariser."""
    torch.manual_seed(0)
    cfg = algo_config("wsrl", actor_hidden=[8, 8], critic_hidden=[8, 8], gamma=0.9,
                      online_max_target_backup=False)  # the Adroit recipe (PointMaze follows AntMaze's)
    agent = CQL(OBS, ACT, cfg, torch.device("cpu"))
    batch = make_batch()
    agent.begin_phase(M.OFFLINE)
    torch.manual_seed(7)
    noise = {**agent.draw_noise(B), **agent.draw_target_subset()}
    with torch.no_grad():
        _, offline = agent.compute_losses(batch, noise, update_actor=True)
    agent.begin_phase(M.ONLINE)
    torch.manual_seed(7)
    noise = {**agent.draw_noise(B), **agent.draw_target_subset()}
    with torch.no_grad():
        _, m = agent.compute_losses(batch, noise, update_actor=True)
        torch.manual_seed(7)
        agent.draw_noise(B)
        chosen = torch.randperm(10)[:2].tolist()
        alpha = agent.log_alpha.exp()
        critic_loss = actor_loss = 0.0
        for b in range(B):
            s, a, s2 = batch.obs[b], batch.actions[b], batch.next_obs[b]
            a2, _ = plain_policy(agent.actor, s2, noise["eps_next"][b, 0])  # SAC's one backup sample
            target = batch.rewards[b] + 0.9 * (1 - batch.dones[b]) * min(
                plain_q(agent.critic_target, i, s2, a2) for i in chosen)
            critic_loss += sum((plain_q(agent.critic, i, s, a) - target) ** 2 for i in range(10)) / B
            a_pi, log_pi = plain_policy(agent.actor, s, noise["eps_actor"][b, 0])
            actor_loss += (alpha * log_pi - min(plain_q(agent.critic, i, s, a_pi) for i in range(10))) / B
    torch.testing.assert_close(m[M.CRITIC_LOSS], critic_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m[M.ACTOR_LOSS], actor_loss, rtol=1e-5, atol=1e-5)
    assert "cql_gap" in offline and "cql_gap" not in m and M.CALQL_BOUND_RATE in offline
    assert offline[M.CRITIC_LOSS] > m[M.CRITIC_LOSS]  # the regulariser is gone online


def test_the_policy_has_layer_norm_between_its_layers_and_relus():
    agent = CQL(OBS, ACT, algo_config("wsrl", actor_hidden=[8, 8], critic_hidden=[8, 8]), torch.device("cpu"))
    kinds = [type(m).__name__ for m in agent.actor.trunk]
    assert kinds == ["Linear", "LayerNorm", "ReLU", "Linear", "LayerNorm", "ReLU"]


def test_the_warm_up_acts_with_the_pre_trained_policy_without_updates_and_no_offline_data_follows(tmp_path,
                                                                                                   monkeypatch):
    """The first warmup_steps env steps: no uniform random action, no update; after them utd_ratio updates per env
    step, every batch from the online buffer only."""
    from o2o import run
    from o2o.buffers import TransitionBuffer
    from o2o.stages import online

    seen = {"random": 0, "updates": 0, "offline_rows": 0}
    online_buffers = []
    real_add, real_update = online.StepCollector.on_step, CQL.update

    def on_step(self, *transition):
        if not online_buffers:
            online_buffers.append(self.buffer)
            self.env.action_space.sample = lambda: seen.__setitem__("random", seen["random"] + 1)
        real_add(self, *transition)

    def update(self, batch):
        if self.phase == M.ONLINE:
            seen["updates"] += 1
        return real_update(self, batch)

    real_rows = TransitionBuffer.sample_rows

    def sample_rows(self, n):
        if online_buffers and self is not online_buffers[0]:
            seen["offline_rows"] += n
        return real_rows(self, n)

    monkeypatch.setattr(online.StepCollector, "on_step", on_step)
    monkeypatch.setattr(CQL, "update", update)
    monkeypatch.setattr(TransitionBuffer, "sample_rows", sample_rows)
    final = run(algo="wsrl", run_dir=str(tmp_path), overrides=[*SMOKE, "schedule.online_steps=120",
                                                               "algo.warmup_steps=100", "algo.utd_ratio=2",
                                                               "mlflow.log_models=false", "mlflow_experiment=o2o-wsrl"])
    assert final[M.ENV_STEPS] == 120
    assert seen == {"random": 0, "updates": (120 - 100) * 2, "offline_rows": 0}


def test_the_actor_steps_every_update_in_pre_training_and_once_per_block_when_fine_tuning():
    """WSRL pre-trains as Cal-QL (agent.update: actor and temperature every step) and fine-tunes with UTD 4, one actor
    step per block of four critic steps (update_high_utd)."""
    import torch

    from o2o import metrics as M
    from o2o.pipeline import make_agent

    cfg = validate(compose(["algo=wsrl", "experiment=smoke", "algo.ensemble_size=2", "algo.target_subset=2"]))
    agent = make_agent(cfg, OBS, ACT, torch.device("cpu"), compiled=False)
    stepped = {}
    for phase in (M.OFFLINE, M.ONLINE):
        agent.begin_phase(phase)
        actor_before = [p.detach().clone() for p in agent.actor.parameters()]
        moves = []
        for _ in range(4):
            before = [p.detach().clone() for p in agent.actor.parameters()]
            agent.update(make_batch())
            moves.append(any(not torch.equal(a, b) for a, b in zip(before, agent.actor.parameters())))
        stepped[phase] = moves
        assert any(not torch.equal(a, b) for a, b in zip(actor_before, agent.actor.parameters()))
    assert stepped[M.OFFLINE] == [True] * 4
    assert stepped[M.ONLINE] == [False, False, False, True]  # after the block's four critic steps, as update_high_utd


@pytest.mark.parametrize("algo, states, phase", [
    ("wsrl", "next_obs", M.OFFLINE), ("wsrl", "next_obs", M.ONLINE), ("calql", "obs", M.OFFLINE),
    ("calql", "obs", M.ONLINE), ("sac", "obs", M.ONLINE), ("rlpd", "obs", M.ONLINE)])
def test_the_temperature_measures_the_entropy_where_its_authors_do(algo, states, phase):
    """WSRL's temperature_loss_fn (sac.py, which its CQL agent inherits) takes the entropy of pi(.|s'), every sample
    the backup draws (cql_n_actions of them with the max backup); the Cal-QL authors' and RLPD's take the actor
    step's samples at s. The loss is -log(alpha) (mean log pi + target entropy), so its gradient on log(alpha) is
    minus that bracket."""
    from o2o.pipeline import make_agent

    cfg = validate(compose([f"algo={algo}", "experiment=smoke"]))
    assert cfg.algo.temperature_states == states
    torch.manual_seed(0)
    agent = make_agent(cfg, OBS, ACT, torch.device("cpu"), compiled=False)
    agent.begin_phase(phase)
    batch = make_batch()
    noise = {**agent.draw_noise(B), **agent.draw_target_subset()}
    loss, _ = agent.compute_losses(batch, noise, update_actor=True)
    agent.log_alpha.grad = None
    loss.backward()
    with torch.no_grad():
        if states == "obs":
            log_pis = [plain_policy(agent.actor, batch.obs[b], noise["eps_actor"][b, 0])[1] for b in range(B)]
        else:  # the backup's samples: the last n_backup of eps_next (the regulariser's n come first offline)
            eps = noise["eps_next"][:, -agent.n_backup:]
            assert eps.shape[1] == (cfg.algo.backup_actions if agent.max_target_backup else 1)
            log_pis = [plain_policy(agent.actor, batch.next_obs[b], eps[b, k])[1]
                       for b in range(B) for k in range(eps.shape[1])]
        expected = -(torch.stack(log_pis).mean() + agent.target_entropy)
    torch.testing.assert_close(agent.log_alpha.grad, expected, rtol=1e-5, atol=1e-6)
    agent.log_alpha.grad = None  # the actor's own step after the critic's (actor_after_critic) measures the same
    agent.actor_losses(batch, noise)[0].backward()
    torch.testing.assert_close(agent.log_alpha.grad, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("after", [True, False])
def test_the_actor_steps_on_the_critic_its_blocks_critic_steps_left(after):
    """WSRL's update_high_utd (and RLPD's update): the block's critic steps, then the actor's step, whose loss reads
    the critic as they left it; the Cal-QL authors' order (one summed step) reads it as it was before. The actor's
    first Adam step moves each weight by -lr g / (|g| + eps), with g the gradient of SAC's actor loss (plain
    formulation) at the critic the order says."""
    import copy

    cfg = algo_config("wsrl", actor_hidden=[8, 8], critic_hidden=[8, 8], online_actor_after_critic=after)
    torch.manual_seed(0)
    agent = CQL(OBS, ACT, cfg, torch.device("cpu"))
    agent.begin_phase(M.ONLINE)
    batch = make_batch()
    for _ in range(3):  # the block's first three critic steps; the actor has not stepped
        agent.update(batch)
    before = copy.deepcopy(agent)
    torch.manual_seed(5)
    agent.update(batch)  # the 4th: the block's last critic step and its actor step

    def actor_gradient(critic_agent):
        actor = critic_agent.actor
        loss = 0.0
        for b in range(B):
            a_pi, log_pi = plain_policy(actor, batch.obs[b], noise["eps_actor"][b, 0])
            q = min(plain_q(critic_agent.critic, i, batch.obs[b], a_pi) for i in range(cfg.ensemble_size))
            loss = loss + (critic_agent.log_alpha.exp().detach() * log_pi - q) / B
        return torch.autograd.grad(loss, list(actor.parameters()))

    torch.manual_seed(5)
    noise = {**before.draw_noise(B), **before.draw_target_subset()}
    stepped = copy.deepcopy(before)
    loss, _ = stepped.compute_losses(batch, noise, update_actor=False)
    stepped.step(loss, update_actor=False)
    gradients = {"after": actor_gradient(stepped), "before": actor_gradient(before)}
    chosen, other = (gradients["after"], gradients["before"]) if after else (gradients["before"], gradients["after"])
    for p, p0, g in zip(agent.actor.parameters(), before.actor.parameters(), chosen):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-7)  # the gradient its step took (eager: in .grad)
        clear = g.abs() > 1e-6  # Adam's first step, -lr g / (|g| + eps), where g's sign is not rounding's
        torch.testing.assert_close(p[clear], (p0 - cfg.actor_lr * g / (g.abs() + 1e-8))[clear], rtol=0, atol=1e-7)
    assert any(not torch.allclose(g, o, rtol=1e-3, atol=1e-6) for g, o in zip(chosen, other))  # the order shows
    for p, q in zip(agent.critic.parameters(), stepped.critic.parameters()):  # the critic's step is the same
        torch.testing.assert_close(p, q, rtol=0, atol=1e-7)
