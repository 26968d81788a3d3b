"""An example plug-in: one new price rule, one new verification mechanism and one new behaviour.

Copy this file into your own package to try *your* mechanism on the market; nothing in the toolkit
needs to change. Name the module in ``run.plugins`` (or in your package's entry points, group
``p2pllm_abm.plugins``) and choose its names like any built-in's::

    p2pllm-sim run.plugins=[p2pllm_abm.examples.plugin] market.update_rule=partial_best_response \\
        +market.rule_params.weight=0.3
    p2pllm-sim experiment=paper_table1_ledger run.plugins=[p2pllm_abm.examples.plugin] \\
        verification.mechanism=hop_sampling adversary.behaviour=timid adversary.fraction=0.2

or in Python, ``P2PLLMModel(load_config(overrides=["run.plugins=[p2pllm_abm.examples.plugin]", ...]))``.

**partial_best_response** (a price rule with a parameter). Every peer moves a share ``weight`` of
the way to its best response to the others' current prices (eq. 6's ``BR_i``):
``p <- (1 - w) p + w BR(p)``. Its fixed points are exactly the Nash equilibria of eq. 6 (``p = BR(p)``),
and ``w = 1`` is the built-in ``best_response`` rule. Inertia of this kind is the textbook remedy when
simultaneous best responses overshoot.

**hop_sampling** (a verification mechanism). Instead of re-executing a whole request with probability
p (``spot_check``), a validator re-executes each *hop* independently with probability p, from the
hop's committed input. A cheated hop is caught with probability ``p (1 - FN)``, as under spot checks,
but a request with two cheated hops is saved only when both are caught, and the compute re-executed
is p times the hops' costs instead of p times whole paths.

**timid** (a behaviour). A lazy peer that cheats at a quarter of ``adversary.cheat_probability``:
it trades savings for a lower chance of being sampled while cheating.
"""

from __future__ import annotations

import numpy as np

from p2pllm_abm.equilibrium import best_response
from p2pllm_abm.registries import (Behaviour, Mechanism, Parameter, PriceRule, behaviours, mechanisms,
                                   price_rules)
from p2pllm_abm.verification import Checked, Draws, Verifier


def partial_best_response(price, cost, stage, alive, params, n_stages, blocks, options):
    """``p <- (1 - w) p + w BR(p)`` for every live peer at once (``w = options["weight"]``)."""
    weight = options["weight"]
    return (1.0 - weight) * price + weight * best_response(price, cost, stage, alive, params, n_stages)


def hop_sampling(verifier: Verifier, draws: Draws) -> Checked:
    """Each hop re-executed with probability ``verification.probability``; a request delivers a wrong
    output unless every one of its cheated hops is caught."""
    hops, p = draws.hops, verifier.config.probability
    sampled = verifier.rng.random(len(hops.peer)) < p
    caught, flagged = sampled & draws.mismatch_cheat, sampled & draws.mismatch_honest
    missed = np.bincount(hops.request, draws.cheated & ~caught, minlength=draws.n_requests) > 0
    return Checked(caught, flagged, bad=missed, checking=np.where(sampled, hops.cost, 0.0),
                   refereed=caught | flagged)


price_rules.register("partial_best_response", PriceRule(
    update=partial_best_response,
    parameters=(Parameter("weight", 0.5, 0.0, 1.0, low_open=True, doc="share of the way to the best response"),),
    doc="p <- (1 - w) p + w BR(p): best responses with inertia"))
mechanisms.register("hop_sampling", Mechanism(
    check=hop_sampling, detection=lambda config, fn: config.probability * (1 - fn),
    doc="every hop re-executed independently with probability p"))
behaviours.register("timid", Behaviour(
    cheats=lambda u, q: u < q / 4, doc="lazy at a quarter of adversary.cheat_probability"))
