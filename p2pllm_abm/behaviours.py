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
- ``offline``: drops a request with probability ``offline_probability`` (an SLA timeout);
- ``patient``: a strategic lazy peer that serves honestly until it has served ``verification.warmup``
  hops (the spot check's warm-up, during which every hop is re-executed), then cheats at rate q;
- ``coordinated``: colluding peers that act as one in a redundancy committee: a coordinated peer
  cheats (at rate q) only when every replica of its hop is coordinated too, and they all return
  the same wrong output, which then passes; otherwise it serves that hop honestly. As a replica it
  copies a coordinated primary's wrong output and never cheats on its own. Under the other
  mechanisms (no committee) it cheats like a colluding peer;
- ``lazy_verifier``: serves honestly, but as the validator drawn (by stake) for a spot check it is
  paid for, it reports "ok" without re-executing with probability ``verifier_skip_probability``
  (the verifier's dilemma); the remedy is ``verification.forced_error_rate``;
- ``adaptive``: patient, and instead of a fixed q it cheats each step at its best response
  (:mod:`p2pllm_abm.deterrence`) to the detection risk it has observed: the share of its own
  post-warm-up hops that were checked.

Clients: ``stale_channel``: when its channel drains, it closes it unilaterally with the channel's
opening state (all of the deposit back) instead of the final one, hoping nobody watches.

``adversary.fraction`` of the peers (drawn at random) get a dishonest behaviour; with
``behaviour=mix`` each draws one from ``adversary.mix``, and the ``stale_channel`` share of the mix
applies to the clients instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Mapping

import numpy as np

from .registries import Behaviour, behaviours

if TYPE_CHECKING:
    from .config import AdversaryConfig

HONEST = "honest"  #: the first behaviour registered: code 0


class _Codes(Mapping[str, int]):
    """Behaviour name -> its int8 code in the peer arrays: its position in the registry (plug-ins' too)."""

    def __getitem__(self, name: str) -> int:
        names = behaviours.names()
        if name not in names:
            raise KeyError(name)
        return names.index(name)

    def __iter__(self) -> Iterator[str]:
        return iter(behaviours.names())

    def __len__(self) -> int:
        return len(behaviours)


CODE: Mapping[str, int] = _Codes()
#: the owner id shared by all colluding peers (one entity); sybil owners follow
COLLUDERS = -1


def codes_where(trait: str) -> np.ndarray:
    """The codes of the behaviours whose entry has ``trait`` set (``colludes``, ``sybil``, ...)."""
    return np.array([code for code, entry in enumerate(behaviours.values()) if getattr(entry, trait)], dtype=np.int8)


def cheated_outputs(code: np.ndarray, u: np.ndarray, q: float | np.ndarray, seasoned: np.ndarray | None = None) -> np.ndarray:
    """Whether each hop (of a peer with behaviour ``code``) returns a wrong output on purpose, from
    one uniform draw per hop ``u`` and the cheat probability ``q`` (one, or one per hop; each behaviour's
    ``cheats``); a patient behaviour cheats only on hops whose peer is ``seasoned`` (past its warm-up;
    None: all are)."""
    cheated = np.zeros(code.shape, dtype=bool)
    for c, entry in enumerate(behaviours.values()):
        if entry.cheats is not None:
            cheats = (code == c) & entry.cheats(u, q)
            cheated |= cheats & seasoned if entry.patient and seasoned is not None else cheats
    return cheated


def dropped_requests(code: np.ndarray, u: np.ndarray, p: float) -> np.ndarray:
    """Whether each hop is dropped (each behaviour's ``drops``, with ``adversary.offline_probability``)."""
    dropped = np.zeros(code.shape, dtype=bool)
    for c, entry in enumerate(behaviours.values()):
        if entry.drops is not None:
            dropped |= (code == c) & entry.drops(u, p)
    return dropped


@dataclass(frozen=True)
class Behaviours:
    """A behaviour code and an owner per peer; the stale-channel flag per client."""

    peer: np.ndarray  #: int8 index into the behaviour registry
    owner: np.ndarray  #: int64: the peer itself, COLLUDERS, or a sybil owner (< COLLUDERS)
    stale_client: np.ndarray  #: bool per client
    #: bool per peer: drawn as an adversary (in a counterfactual run they behave honestly)
    designated: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.designated is None:
            object.__setattr__(self, "designated", self.peer != CODE[HONEST])

    @property
    def adversarial(self) -> np.ndarray:
        return self.peer != CODE[HONEST]

    def names(self) -> np.ndarray:
        return np.asarray(behaviours.names())[self.peer]

    def claimed_cost(self, cost: np.ndarray, factor: float) -> np.ndarray:
        """The cost each peer registers: overclaimers ``factor`` x their true cost."""
        return np.where(np.isin(self.peer, codes_where("overclaims")), factor * cost, cost)

    def registration_stake(self, stake: int, min_stake: int) -> np.ndarray:
        """What each peer bonds at registration: sybil identities only ``min_stake``."""
        return np.where(np.isin(self.peer, codes_where("sybil")), min_stake, stake).astype(np.int64)


def assign(adversary: AdversaryConfig, n_peers: int, n_clients: int, rng: np.random.Generator) -> Behaviours:
    """Draw who is dishonest and how (see the module docstring)."""
    if adversary.behaviour == "mix":
        weights = {name: float(w) for name, w in adversary.mix.items() if w > 0}
    else:
        weights = {adversary.behaviour: 1.0}
    total = sum(weights.values())
    stale_share = sum(weights.pop(name) for name in list(weights) if behaviours.get(name).client) / total
    weights.pop(HONEST, None)
    peer = np.zeros(n_peers, dtype=np.int8)
    chosen = rng.choice(n_peers, size=round(adversary.fraction * (1 - stale_share) * n_peers), replace=False)
    if len(chosen) and weights:
        names = list(weights)
        p = np.array([weights[name] for name in names])
        peer[chosen] = np.array([CODE[name] for name in names])[rng.choice(len(names), size=len(chosen), p=p / p.sum())]
    owner = np.arange(n_peers, dtype=np.int64)
    owner[np.isin(peer, codes_where("colludes"))] = COLLUDERS
    sybils = np.flatnonzero(np.isin(peer, codes_where("sybil")))
    owner[sybils] = COLLUDERS - 1 - np.arange(len(sybils)) // adversary.sybil_identities
    stale_client = np.zeros(n_clients, dtype=bool)
    stale_client[rng.choice(n_clients, size=round(adversary.fraction * stale_share * n_clients), replace=False)] = True
    if adversary.counterfactual:  # the same draws, honest behaviour
        return Behaviours(np.zeros_like(peer), np.arange(n_peers, dtype=np.int64), np.zeros_like(stale_client),
                          designated=peer != CODE[HONEST])
    return Behaviours(peer, owner, stale_client)



# -- the built-in behaviours (registered as a plug-in registers its own; honest first: code 0) -------

def _at_rate(u: np.ndarray, q: float) -> np.ndarray:
    return u < q


def _always(u: np.ndarray, q: float) -> np.ndarray:
    return np.ones(np.shape(u), dtype=bool)


behaviours.register(HONEST, Behaviour(doc="serves every request as promised"))
behaviours.register("lazy", Behaviour(cheats=_at_rate, doc="skips its layers with probability q"))
behaviours.register("malicious", Behaviour(cheats=_always, doc="returns wrong outputs on every request"))
behaviours.register("overclaim", Behaviour(overclaims=True, doc="registers overclaim_factor x its true cost"))
behaviours.register("stale_channel", Behaviour(client=True, doc="a client closing its channel on a stale state"))
behaviours.register("colluding", Behaviour(cheats=_at_rate, colludes=True,
                                           doc="lazy, and all colluders are one entity whose wrong outputs agree"))
behaviours.register("sybil", Behaviour(cheats=_at_rate, sybil=True,
                                       doc="lazy, with sybil_identities identities per owner at ledger.min_stake"))
behaviours.register("offline", Behaviour(drops=_at_rate, doc="drops a request with offline_probability"))
behaviours.register("patient", Behaviour(cheats=_at_rate, patient=True,
                                         doc="honest through the warm-up (verification.warmup hops), then lazy at rate q"))
behaviours.register("coordinated", Behaviour(cheats=_at_rate, colludes=True, coordinates=True,
                                             doc="colluding, and a redundancy committee of them agrees on one wrong output"))
behaviours.register("lazy_verifier", Behaviour(skips_checks=True,
                                               doc="serves honestly; as a validator, sometimes reports ok unchecked"))
behaviours.register("adaptive", Behaviour(cheats=_at_rate, patient=True, adapts=True,
                                          doc="patient, and cheats at the best response to the checks it has seen"))
