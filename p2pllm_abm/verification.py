"""Commitments, verification mechanisms and the deterrence condition (paper 4.2: "the input, output,
and intermediate states are cryptographically hashed ... a verifiable proof of computation").

**Commitments.** Every hop commits to a fingerprint of its output; a request's hop commitments
form a Merkle root (:func:`merkle_roots`) recorded with its SLA. Float outputs are not
bit-reproducible across setups, so comparing a re-execution with a commitment can accuse an honest
hop: the rates come from measurements (``conf/fingerprints/``, written by
``python -m torch_backend.fingerprints``): ``honest_mismatch`` (a peer's setup drawn from the
measured batch sizes, thread counts and KV-cache decoding vs the verifier's prefill) and
``lazy_missed`` (a hop that skipped its layers but matched), per fingerprint (``exact`` SHA-256 or
the ``topk`` index fingerprint).

**Mechanisms** (``verification.mechanism``), per request of a step, vectorised over its hops:

- ``spot_check`` (Proof of Sampling): with probability p a validator re-executes the whole request
  before release; a cheated hop is caught with probability ``1 - FN``, an honest one is flagged with
  probability ``eps``; a caught request gets the validator's correct output. A peer's first
  ``warmup`` hops are all re-executed (from the hop's committed input): a new peer has no
  reputation. (A strategic cheater waits the warm-up out, the ``patient`` behaviour; then only p
  deters it, :mod:`p2pllm_abm.deterrence`.)
- ``redundancy``: every hop runs on k peers of its stage (the market's choice and k - 1 drawn by
  stake); any disagreement sends the hop to the referee. Colluders' wrong outputs agree, so a hop
  passes wrong when all k replicas are cheating colluders: for a committee drawn by stake with
  colluding stake share beta, beta^k.
- ``optimistic``: delivered at once; each of n watchers re-executes the request with probability
  w, so a cheated hop is caught with probability ``(1 - (1 - w)^n)(1 - FN)``, later (one step).
- ``dispute_game``: like optimistic, but a challenge bisects the committed boundaries (ceil(log2 m)
  rounds, a step each) and the referee re-executes only the first disagreeing hop. Colluders on
  adjacent stages commit consistent boundaries between them: the referee re-executing the last hop
  of such a run from its (fabricated) input finds it consistent, unless it samples the run's whole
  span (``inside_sampling``).

The **referee** re-executes with a tolerance and is never wrong; with ``verification.referee=false``
every mismatch is slashed, honest false mismatches included (counted as ``slashed_honest``).

**Deterrence** (:func:`minimal_sampling_rate`): a hop's cheat saves its compute cost c and, when
detected (probability P_det), loses the price and the slash S; honesty is a best response iff
``c < P_det (price + S)``, so for spot checks ``p* = c / ((1 - FN)(price + S))``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from math import ceil, log2
from typing import TYPE_CHECKING

import numpy as np

from .behaviours import COLLUDERS, cheated_outputs, codes_where, dropped_requests
from .paths import resolve_fingerprints
from .registries import Mechanism, mechanisms

if TYPE_CHECKING:
    from .config import VerificationConfig


def fingerprint_rates(profile: str, fingerprint: str) -> tuple[float, float]:
    """``(eps, fn)``: an honest hop's false mismatch and a cheated hop's miss probability."""
    data = json.loads(resolve_fingerprints(profile).read_text())
    return float(data["honest_mismatch"][fingerprint]), float(data["lazy_missed"][fingerprint])


def detection_probability(mechanism: str, config: VerificationConfig, fn: float) -> float:
    """Probability that one cheated hop (not colluding) is caught by ``mechanism``."""
    return mechanisms.get(mechanism).detection(config, fn)


def minimal_sampling_rate(cost: float, price: float, stake: float, fn: float = 0.0) -> float:
    """The deterrence threshold of spot checks: ``p* = c / ((1 - FN)(price + S))``, with the
    compute cost ``c`` and slash ``S`` in price units."""
    if cost < 0 or price < 0 or stake < 0 or not 0 <= fn < 1:
        raise ValueError(f"cost = {cost}, price = {price}, stake = {stake}, fn = {fn}: allowed c, price, S >= 0, "
                         "0 <= fn < 1")
    return cost / ((1 - fn) * (price + stake)) if price + stake > 0 else float("inf")


def merkle_roots(leaves: np.ndarray) -> np.ndarray:
    """Merkle root of each row of ``leaves`` ``(requests, hops)`` (uint64 hop fingerprints; a
    missing hop is 0), with a 64-bit hash as the simulation's stand-in for SHA-256. A level of odd
    width is padded with a constant leaf, and the node hash is injective in each child given the
    other (:func:`combine`), so changing any one leaf changes the root."""
    level = np.asarray(leaves, dtype=np.uint64)
    while level.shape[1] > 1:
        if level.shape[1] % 2:
            level = np.concatenate([level, np.full((level.shape[0], 1), _PAD, dtype=np.uint64)], axis=1)
        level = combine(level[:, 0::2], level[:, 1::2])
    return level[:, 0]


_PAD, _LEFT, _RIGHT, _NODE = (np.uint64(k) for k in (0x5AD0C0DE, 0x243F6A8885A308D3, 0x13198A2E03707344,
                                                       0xA4093822299F31D0))
_ODD = np.uint64(0x9E3779B97F4A7C15)


def combine(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """A Merkle node from its children: ``mix64((mix64(l ^ K1) + mix64(r ^ K2) * odd) ^ K3)``; each
    step is a bijection of the changed child, so the node is injective in each child."""
    with np.errstate(over="ignore"):
        return mix64((mix64(left ^ _LEFT) + mix64(right ^ _RIGHT) * _ODD) ^ _NODE)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, elementwise on uint64."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


@dataclass
class Hops:
    """The paid hops of one step, as arrays over hops (path order within each request)."""

    request: np.ndarray  #: request (client) of each hop
    position: np.ndarray  #: index of the hop on its path
    peer: np.ndarray
    stage: np.ndarray
    cost: np.ndarray  #: true compute cost, ms


@dataclass
class Verdict:
    """What the step's checks found, per hop, and what they cost."""

    cheated: np.ndarray  #: the hop's output was wrong on purpose
    dropped: np.ndarray  #: an offline peer dropped the hop
    caught: np.ndarray  #: a cheated hop found out (its payment is refunded)
    confirmed: np.ndarray  #: peers to slash (caught cheats, and with no referee flagged honest hops)
    flagged_honest: np.ndarray  #: honest hops whose fingerprint mismatched
    bad_request: np.ndarray  #: per request: a wrong output was delivered
    delay: int  #: steps until the slashes land
    verification_ms: np.ndarray  #: per hop: compute re-executed to check it (validators, replicas, watchers, referee)
    fee_ms: np.ndarray  #: per hop: the verification compute paid for (more than re-executed when validators skip)
    audit: Audit | None  #: the validators of the step's checks (None: not drawn)
    referee_calls: int
    extra_cheaters: np.ndarray  #: redundancy: replica peers that cheated and were caught
    commitments: np.ndarray  #: per request: the Merkle root of its hops' fingerprints


@dataclass
class Draws:
    """A step's hops as a mechanism sees them: who cheated (drawn before any check) and whose
    fingerprint would mismatch if checked."""

    hops: Hops
    behaviour: np.ndarray  #: per peer
    owner: np.ndarray  #: per peer
    stake: np.ndarray  #: per peer: effective stake, 0 for non-validators
    peer_stage: np.ndarray  #: per peer
    n_requests: int
    n_stages: int
    cheated: np.ndarray  #: per hop
    colluding: np.ndarray  #: per hop: cheated by a colluder
    mismatch_cheat: np.ndarray  #: per hop: a cheated hop whose fingerprint differs (1 - FN)
    mismatch_honest: np.ndarray  #: per hop: an honest hop whose fingerprint differs (eps)
    has_cheat: np.ndarray  #: per request: one of its hops cheated


@dataclass
class Audit:
    """Who checked each request, when validators are drawn (lazy verifiers present, or forced errors on)."""

    validator: np.ndarray  #: per request: the validator peer drawn by stake, -1 where nothing was checked
    skipped: np.ndarray  #: per request: the validator reported "ok" without re-executing
    forced: np.ndarray  #: per request: the check carried a forced error (a planted wrong output)


@dataclass
class Checked:
    """What a mechanism's checks found for a step's hops."""

    caught: np.ndarray  #: cheated hops found out
    flagged: np.ndarray  #: honest hops whose fingerprint mismatched under a check
    bad: np.ndarray  #: per request: a wrong output was delivered
    checking: np.ndarray  #: per hop: compute (ms) re-executed by validators, replicas or watchers
    refereed: np.ndarray  #: hops the referee re-executes
    delay: int = 0  #: steps until the slashes land
    extra: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  #: replica peers caught
    #: hops whose cheat was called off once the committee was known (coordinated peers): served honestly
    withdrawn: np.ndarray | None = None
    #: per hop: the compute validators are paid for (None: ``checking``; differs when a validator skips)
    claimed: np.ndarray | None = None
    audit: Audit | None = None  #: the validators of the step's checks (None: not drawn)


class Verifier:
    """Draws who cheats on the step's hops and runs ``verification.mechanism`` over them."""

    def __init__(self, config: VerificationConfig, cheat_probability: float, offline_probability: float,
                 rng: np.random.Generator, skip_probability: float = 0.0, draws_validators: bool | None = None):
        self.config = config
        self.skip = skip_probability  #: a lazy verifier's chance to report "ok" without re-executing
        #: draw a validator per check (None: when this step's peers include lazy verifiers, or forced
        #: errors are on); the security phase sets it from the config, so that a counterfactual run
        #: draws the same validators
        self.draws_validators = draws_validators
        self.mechanism = mechanisms.get(config.mechanism)
        self.q, self.offline = cheat_probability, offline_probability
        self.eps, self.fn = fingerprint_rates(config.fingerprint_profile, config.fingerprint)
        self.rng = rng
        self.served = np.zeros(0, dtype=np.int64)  #: hops each peer has served before this step (its reputation)
        self.seen_hops = np.zeros(0, dtype=np.int64)  #: hops each peer served after its warm-up
        self.seen_checks = np.zeros(0, dtype=np.int64)  #: of those, re-executed by a check it could see
        #: per peer, a cheat rate replacing ``cheat_probability`` (NaN: none; adaptive peers' best responses)
        self.rates: np.ndarray | None = None

    def grow(self, n_peers: int) -> None:
        """Make room in the per-peer counters for ``n_peers`` peers."""
        for name in ("served", "seen_hops", "seen_checks"):
            counts = getattr(self, name)
            if len(counts) < n_peers:
                setattr(self, name, np.r_[counts, np.zeros(n_peers - len(counts), dtype=np.int64)])

    def rate(self, peer: np.ndarray) -> float | np.ndarray:
        """The cheat rate of each of ``peer``: ``cheat_probability`` unless :attr:`rates` sets one."""
        if self.rates is None:
            return self.q
        rates = self.rates[peer]
        return np.where(np.isnan(rates), self.q, rates)

    def seasoned(self, peer: np.ndarray) -> np.ndarray:
        """Whether each of ``peer`` has served its ``verification.warmup`` hops (before this step)."""
        return self.served[peer] >= self.config.warmup

    def check(self, hops: Hops, behaviour: np.ndarray, owner: np.ndarray, stake: np.ndarray, peer_stage: np.ndarray,
              n_requests: int, n_stages: int) -> Verdict:
        """Draw cheats and drops for ``hops`` and check them. ``behaviour``, ``owner``, ``stake``
        (effective, 0 for non-validators) and ``peer_stage`` are per peer; ``n_requests`` bounds
        ``hops.request``."""
        rng, cfg = self.rng, self.config
        code = behaviour[hops.peer]
        u = rng.random(len(hops.peer))
        self.grow(len(behaviour))
        seasoned = self.seasoned(hops.peer)
        cheated = cheated_outputs(code, u, self.rate(hops.peer), seasoned)
        dropped = dropped_requests(code, u, self.offline)
        honest = ~cheated & ~dropped
        draws = Draws(hops, behaviour, owner, stake, peer_stage, n_requests, n_stages, cheated,
                      colluding=cheated & (owner[hops.peer] == COLLUDERS),
                      mismatch_cheat=cheated & (rng.random(len(u)) >= self.fn),
                      mismatch_honest=honest & (rng.random(len(u)) < self.eps),
                      has_cheat=np.bincount(hops.request, cheated, minlength=n_requests) > 0)
        checked = self.mechanism.check(self, draws)
        if checked.withdrawn is not None:
            cheated = cheated & ~checked.withdrawn
        self.served += np.bincount(hops.peer, minlength=len(self.served))
        self.seen_hops += np.bincount(hops.peer[seasoned], minlength=len(self.seen_hops))
        self.seen_checks += np.bincount(hops.peer[seasoned & (checked.checking > 0)], minlength=len(self.seen_checks))
        caught, flagged = checked.caught, checked.flagged
        if checked.delay > cfg.challenge_window:  # the check cannot finish inside the window: nothing is proven
            caught, flagged = np.zeros_like(caught), np.zeros_like(flagged)
        referee = cfg.referee and self.mechanism.checks
        confirmed = caught | (flagged if not referee else np.zeros_like(flagged))
        refereed_ms = np.where(checked.refereed, hops.cost, 0.0) if referee else 0.0
        leaves = np.zeros((n_requests, n_stages), dtype=np.uint64)
        truth = np.where(cheated, np.uint64(1), np.uint64(2))  # a wrong output commits to another value
        leaves[hops.request, hops.position] = mix64(hops.peer.astype(np.uint64) * np.uint64(n_stages + 1)
                                                    + hops.position.astype(np.uint64) + truth)
        return Verdict(cheated=cheated, dropped=dropped, caught=caught, confirmed=confirmed, flagged_honest=flagged,
                       bad_request=checked.bad, delay=checked.delay,
                       verification_ms=checked.checking + refereed_ms,
                       fee_ms=(checked.checking if checked.claimed is None else checked.claimed) + refereed_ms,
                       audit=checked.audit,
                       referee_calls=int((caught | flagged).sum()) if referee else 0, extra_cheaters=checked.extra,
                       commitments=merkle_roots(leaves))

    def _redundancy(self, hops: Hops, cheated: np.ndarray, behaviour: np.ndarray, owner: np.ndarray,
                    stake: np.ndarray, peer_stage: np.ndarray, colluding: np.ndarray):
        """k - 1 replicas per hop drawn by stake within its stage; returns caught and flagged hops,
        hops whose wrong output passed, replica peers caught cheating, and the coordinated hops whose
        cheat was called off (a committee not all coordinated)."""
        k, rng = self.config.replicas, self.rng
        coordinating = np.isin(behaviour, codes_where("coordinates"))
        withdrawn = np.zeros(len(hops.peer), dtype=bool)
        if coordinating.any():
            cheated = cheated.copy()  # coordinated cheats may be called off below
        caught = np.zeros(len(hops.peer), dtype=bool)
        flagged = np.zeros(len(hops.peer), dtype=bool)
        passed = np.zeros(len(hops.peer), dtype=bool)
        extra: list[np.ndarray] = []
        for stage in np.unique(hops.stage):
            rows = np.flatnonzero(hops.stage == stage)
            members = np.flatnonzero((stake > 0) & (peer_stage == stage))
            if len(members) == 0:
                continue
            weight = stake[members] / stake[members].sum()
            replicas = members[rng.choice(len(members), size=(len(rows), k - 1), p=weight)]
            code = behaviour[replicas]
            replica_cheats = cheated_outputs(code, rng.random(replicas.shape), self.rate(replicas), self.seasoned(replicas))
            if coordinating.any():  # a coordinated committee cheats as one, or not at all
                in_step = coordinating[replicas]
                joint = coordinating[hops.peer[rows]] & in_step.all(axis=1)
                withdrawn[rows] = cheated[rows] & coordinating[hops.peer[rows]] & ~joint
                cheated[rows] &= ~withdrawn[rows]
                replica_cheats = np.where(in_step, (cheated[rows] & joint)[:, None], replica_cheats)
            replica_colludes = replica_cheats & (owner[replicas] == COLLUDERS)
            # the primary's output: correct (0), the colluders' agreed wrong output (1), or its own garbage (2)
            primary = np.where(~cheated[rows], 0, np.where(colluding[rows], 1, 2))
            others = np.where(~replica_cheats, 0, np.where(replica_colludes, 1, 2))
            # honest outputs of two setups still mismatch with probability eps (fingerprint noise)
            noise = ((others == 0) & (rng.random(replicas.shape) < self.eps)).any(axis=1) & (primary == 0)
            agree = (primary[:, None] == others).all(axis=1) & (primary != 2) & ~noise
            disagreement = ~agree
            caught[rows] = disagreement & cheated[rows]
            flagged[rows] = disagreement & ~cheated[rows]
            passed[rows] = agree & (primary == 1)
            extra.append(replicas[disagreement[:, None] & replica_cheats])
        return (caught, flagged, passed, np.concatenate(extra) if extra else np.zeros(0, np.int64),
                withdrawn if coordinating.any() else None)

    def audit(self, d: Draws, checked: np.ndarray) -> Audit | None:
        """Draw a validator by stake for every request with a ``checked`` hop, whether it skips the
        re-execution (a lazy verifier, with ``adversary.verifier_skip_probability``) and whether the
        check carries a forced error (``verification.forced_error_rate``). None, drawing nothing, when
        there is no lazy verifier and no forced error."""
        skippers = np.isin(d.behaviour, codes_where("skips_checks"))
        draws = self.draws_validators
        if draws is None:
            draws = bool(skippers.any()) or self.config.forced_error_rate > 0
        if not draws:
            return None
        rng, n = self.rng, d.n_requests
        audited = np.flatnonzero(np.bincount(d.hops.request, checked, minlength=n) > 0)
        stakers = np.flatnonzero(d.stake > 0)
        validator, skipped, forced = np.full(n, -1, dtype=np.int64), np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        if len(stakers) and len(audited):
            validator[audited] = stakers[rng.choice(len(stakers), size=len(audited),
                                                    p=d.stake[stakers] / d.stake[stakers].sum())]
            skipped[audited] = skippers[validator[audited]] & (rng.random(len(audited)) < self.skip)
            forced[audited] = rng.random(len(audited)) < self.config.forced_error_rate
        return Audit(validator, skipped, forced)

    def _hidden_by_colluders(self, hops: Hops, colluding: np.ndarray) -> np.ndarray:
        """Cheated hops a bisection cannot pin: a colluder followed on its path by another colluding
        hop commits a boundary the next colluder agrees with; the run's last hop is re-executed from
        a consistent (fabricated) input. The referee samples the run's span with probability
        ``inside_sampling``."""
        order = np.lexsort((hops.position, hops.request))
        run, request, position = colluding[order], hops.request[order], hops.position[order]
        # link[i]: sorted hops i and i + 1 are consecutive hops of one request, both colluding
        link = run[:-1] & run[1:] & (request[:-1] == request[1:]) & (position[1:] == position[:-1] + 1)
        in_run = np.r_[link, False] | np.r_[False, link]
        hidden = np.zeros(len(colluding), dtype=bool)
        requests = np.unique(request[in_run])
        sampled = self.rng.random(len(requests)) < self.config.inside_sampling
        hidden[order[in_run]] = ~np.isin(request[in_run], requests[sampled])
        return hidden


# -- the built-in mechanisms (registered as a plug-in registers its own) ---------------------------

def no_check(verifier: Verifier, d: Draws) -> Checked:
    """``none``: nothing is checked; every cheated request delivers a wrong output."""
    nothing = np.zeros(len(d.cheated), dtype=bool)
    return Checked(nothing, nothing, d.has_cheat, np.zeros(len(d.cheated)), nothing)


def spot_check(verifier: Verifier, d: Draws) -> Checked:
    """Proof of Sampling: a validator re-executes a request with probability p, and every hop of a
    peer's first ``warmup`` served hops."""
    cfg, rng, hops = verifier.config, verifier.rng, d.hops
    novice = ~verifier.seasoned(hops.peer)
    checked = (rng.random(d.n_requests) < cfg.probability)[hops.request] | novice
    audit = verifier.audit(d, checked)
    claimed = np.where(checked, hops.cost, 0.0)
    if audit is not None:  # a validator that skips reports "ok": its request's hops are not re-executed
        checked = checked & ~audit.skipped[hops.request]
    caught, flagged = checked & d.mismatch_cheat, checked & d.mismatch_honest
    saved = np.bincount(hops.request, caught, minlength=d.n_requests) > 0
    return Checked(caught, flagged, d.has_cheat & ~saved, np.where(checked, hops.cost, 0.0), caught | flagged,
                   claimed=None if audit is None else claimed, audit=audit)


def redundancy(verifier: Verifier, d: Draws) -> Checked:
    """Every hop also runs on k - 1 replicas of its stage drawn by stake; a disagreement goes to the
    referee (:meth:`Verifier._redundancy`)."""
    caught, flagged, passed, extra, withdrawn = verifier._redundancy(d.hops, d.cheated, d.behaviour, d.owner, d.stake,
                                                                     d.peer_stage, d.colluding)
    bad = np.bincount(d.hops.request, passed, minlength=d.n_requests) > 0
    return Checked(caught, flagged, bad, (verifier.config.replicas - 1) * d.hops.cost, caught | flagged, extra=extra,
                   withdrawn=withdrawn)


def watched(verifier: Verifier, d: Draws) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Optimistic delivery: each of n watchers re-executes a request with probability w; returns
    (caught, flagged, re-executed compute) per hop."""
    cfg, hops = verifier.config, d.hops
    watching = (verifier.rng.random((d.n_requests, cfg.watchers)) < cfg.probability)[hops.request]
    return (watching.any(axis=1) & d.mismatch_cheat, watching.any(axis=1) & d.mismatch_honest,
            watching.sum(axis=1) * hops.cost)


def optimistic(verifier: Verifier, d: Draws) -> Checked:
    """Delivered at once; a watcher's challenge has the referee re-execute the request's whole path
    a step later."""
    caught, flagged, checking = watched(verifier, d)
    refereed = np.isin(d.hops.request, d.hops.request[caught | flagged])
    return Checked(caught, flagged, d.has_cheat, checking, refereed, delay=1)


def dispute_game(verifier: Verifier, d: Draws) -> Checked:
    """Like optimistic, but a challenge bisects the committed boundaries (ceil(log2 m) rounds, a step
    each) and the referee re-executes only the first disagreeing hop; runs of colluders hide."""
    caught, flagged, checking = watched(verifier, d)
    caught = caught & ~verifier._hidden_by_colluders(d.hops, d.colluding)
    delay = 1 + ceil(log2(max(d.n_stages, 1) + 1))
    return Checked(caught, flagged, d.has_cheat, checking, caught | flagged, delay=delay)


def _watchers_detect(config: VerificationConfig, fn: float) -> float:
    return (1 - (1 - config.probability) ** config.watchers) * (1 - fn)


mechanisms.register("none", Mechanism(check=no_check, detection=lambda config, fn: 0.0, checks=False,
                                      doc="no verification"))
mechanisms.register("spot_check", Mechanism(check=spot_check, detection=lambda config, fn: config.probability * (1 - fn),
                                            sampling=True, warmup=True, audits=True, doc="Proof of Sampling: re-execute a request with probability p"))
mechanisms.register("redundancy", Mechanism(check=redundancy, detection=lambda config, fn: 1 - fn,
                                            doc="k replicas per hop; a disagreement goes to the referee"))
mechanisms.register("optimistic", Mechanism(check=optimistic, detection=_watchers_detect, sampling=True,
                                            doc="delivered at once; watchers re-execute and challenge"))
mechanisms.register("dispute_game", Mechanism(check=dispute_game, detection=_watchers_detect, sampling=True,
                                              doc="optimistic, with a bisection game over the boundaries"))
