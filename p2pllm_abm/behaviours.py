"""Who is dishonest, and how (paper 4.2: stake "can be forfeited if the node behaves maliciously or
fails to deliver promised computational resources").

Behaviours are data: a code per peer (and a flag per client) that the vectorised phases read, so an
adversarial run is as fast as an honest one; :class:`~p2pllm_abm.agents.PeerAgent` exposes the
name. Peers:

- ``honest``;
- ``lazy``: on each request, with probability q (``adversary.cheat_probability``), skips its layers
  and hands on cheap output, saving its compute cost;
- ``malicious``: returns wrong outputs on every request, on purpose;
- ``overclaim``: registers ``overclaim_factor`` x its true cost, so clients prefer it (eq. 1) and its
  SLAs promise a latency it then misses;
- ``colluding``: like lazy, but all colluders are one entity: their wrong outputs agree with each
  other, and on adjacent stages they commit consistent boundaries;
- ``sybil``: like lazy, but ``sybil_identities`` identities share one owner and each bonds only
  ``ledger.min_stake``, so a slash costs the owner little;
- ``offline``: drops a request with probability ``offline_probability`` (an SLA timeout).

Clients: ``stale_channel``: when its channel drains, it closes it unilaterally with the channel's
opening state (all of the deposit back) instead of the final one, hoping nobody watches.

``adversary.fraction`` of the peers (drawn at random) get a dishonest behaviour; with
``behaviour=mix`` each draws one from ``adversary.mix``, and the ``stale_channel`` share of the mix
applies to the clients instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import BEHAVIOURS, AdversaryConfig

CODE = {name: code for code, name in enumerate(BEHAVIOURS)}
#: behaviours whose outputs are wrong when they cheat
CHEATERS = np.array([CODE[name] for name in ("lazy", "malicious", "colluding", "sybil")])
#: the owner id shared by all colluding peers (one entity); sybil owners follow
COLLUDERS = -1


@dataclass(frozen=True)
class Behaviours:
    """A behaviour code and an owner per peer; the stale-channel flag per client."""

    peer: np.ndarray  #: int8 index into BEHAVIOURS
    owner: np.ndarray  #: int64: the peer itself, COLLUDERS, or a sybil owner (< COLLUDERS)
    stale_client: np.ndarray  #: bool per client

    @property
    def adversarial(self) -> np.ndarray:
        return self.peer != CODE["honest"]

    def names(self) -> np.ndarray:
        return np.asarray(BEHAVIOURS)[self.peer]

    def claimed_cost(self, cost: np.ndarray, factor: float) -> np.ndarray:
        """The cost each peer registers: overclaimers ``factor`` x their true cost."""
        return np.where(self.peer == CODE["overclaim"], factor * cost, cost)

    def registration_stake(self, stake: int, min_stake: int) -> np.ndarray:
        """What each peer bonds at registration: sybil identities only ``min_stake``."""
        return np.where(self.peer == CODE["sybil"], min_stake, stake).astype(np.int64)


def assign(adversary: AdversaryConfig, n_peers: int, n_clients: int, rng: np.random.Generator) -> Behaviours:
    """Draw who is dishonest and how (see the module docstring)."""
    if adversary.behaviour == "mix":
        weights = {name: float(w) for name, w in adversary.mix.items() if w > 0}
    else:
        weights = {adversary.behaviour: 1.0}
    total = sum(weights.values())
    stale_share = weights.pop("stale_channel", 0.0) / total
    weights.pop("honest", None)
    peer = np.zeros(n_peers, dtype=np.int8)
    chosen = rng.choice(n_peers, size=round(adversary.fraction * (1 - stale_share) * n_peers), replace=False)
    if len(chosen) and weights:
        names = list(weights)
        p = np.array([weights[name] for name in names])
        peer[chosen] = np.array([CODE[name] for name in names])[rng.choice(len(names), size=len(chosen), p=p / p.sum())]
    owner = np.arange(n_peers, dtype=np.int64)
    owner[peer == CODE["colluding"]] = COLLUDERS
    sybils = np.flatnonzero(peer == CODE["sybil"])
    owner[sybils] = COLLUDERS - 1 - np.arange(len(sybils)) // adversary.sybil_identities
    stale_client = np.zeros(n_clients, dtype=bool)
    stale_client[rng.choice(n_clients, size=round(adversary.fraction * stale_share * n_clients), replace=False)] = True
    return Behaviours(peer, owner, stale_client)
