"""What one update steps, beside True / False (with or without the actor's step, in one summed step):
``AFTER_CRITIC``, the critic's step and then the actor's on the critic it left, whose second half runs the
``ACTOR_ONLY`` losses. The eager update (o2o.agents.core) and the compiled one (o2o.agents.compiled) read them."""
AFTER_CRITIC, ACTOR_ONLY = "after_critic", "actor_only"
