"""The security phase: adversaries act on the step's paid hops, the verification mechanism checks
them, the referee's verdicts slash through the registration stake, and everything is counted.

Runs inside the contracts phase, before settlement (:meth:`SecurityPhase.step`): a hop that was
dropped (offline peer) or caught cheating is *failed*: its SLA settles as violated (refund to the
client and the SLA penalty from the peer's stake). Confirmed frauds are slashed
``verification.delay`` steps later (:meth:`Registry.slash <p2pllm_abm.ledger.registry.Registry.slash>`,
``slash_fraction`` of the stake or ``slash_amount``, the whistleblower share to a validator), and
with ``exit_on_slash`` the peer is forced out of the market. Verification compute is paid in base
units (``compute_price`` per ms, times ``ledger.unit``) by the client of each request or the checked
peer, into ``sys:treasury``, which stands for the verifiers.

Counters are per peer, so that honest peers wrongly slashed are counted, never hidden:
``summary.json``'s ``security`` block and the ``scope = "behaviour"`` rows of metrics.parquet read
them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from .behaviours import CODE, Behaviours, codes_where
from .config import Config, configured_traits
from .deterrence import Protocol, best_response_rate, best_response_rates, sampling_threshold
from .registries import behaviours as behaviour_registry
from .ledger.phase import MarketLedger
from .network import PeerTable
from .verification import Hops, Verifier

#: columns of metrics.parquet's ``scope = "behaviour"`` rows (one per behaviour present)
BEHAVIOUR_METRICS = ("behaviour", "behaviour_peers", "registered", "cheats", "caught", "slashed", "bad_outputs",
                     "compute_cost", "wealth_change", "profit")


class SecurityPhase:
    """Adversaries, verification and slashing of one run, with per-peer counters."""

    def __init__(self, config: Config, behaviours: Behaviours, ledger: MarketLedger, rng: np.random.Generator,
                 peers: PeerTable):
        self.config, self.behaviours, self.ledger, self.rng = config, behaviours, ledger, rng
        #: each peer's stage and true cost when behaviours were drawn: what cheaters are matched on
        self.start_stage, self.start_cost = peers.stage.copy(), peers.cost.copy()
        self.adaptive = np.isin(behaviours.peer, codes_where("adapts"))  #: peers choosing their cheat rate
        adv = config.adversary
        self.verifier = Verifier(config.verification, adv.cheat_probability, adv.offline_probability, rng,
                                 adv.verifier_skip_probability,
                                 configured_traits(adv, "skips_checks") or config.verification.forced_error_rate > 0)
        n = len(behaviours.peer)
        self.cheats = np.zeros(n, dtype=np.int64)  #: hops each peer cheated on
        self.caught = np.zeros(n, dtype=np.int64)  #: of those, found out
        self.compute_ms = np.zeros(n)  #: compute each peer really spent
        self.first_cheat = np.full(n, -1, dtype=np.int64)
        self.slashed_at = np.full(n, -1, dtype=np.int64)
        self.wrongly_slashed = np.zeros(n, dtype=bool)  #: slashed for a hop it did not cheat on
        self.bad_outputs = np.zeros(n, dtype=np.int64)  #: wrong outputs of this peer that reached a client
        self.pending: list[tuple[int, np.ndarray, np.ndarray]] = []  #: (due step, peers, truly cheated)
        self.requests = self.bad_requests = self.sla_timeouts = 0
        self.flagged_honest = self.referee_calls = 0
        self.verification_ms = self.served_ms = 0.0
        self.fees_refused = 0
        self.hop_price = self.hop_ms = 0.0  #: sums over paid hops: the posted price and the true compute
        self.hops = 0
        #: validators (when drawn: lazy verifiers or forced errors): compute each re-executed, checks each
        #: skipped, and forced errors each was exposed by
        self.validator_ms = np.zeros(n)
        self.skipped_checks = np.zeros(n, dtype=np.int64)
        self.exposed = np.zeros(n, dtype=np.int64)
        self.forced_errors = self.jackpots_paid = self.jackpots_refused = 0

    def step(self, step: int, client: np.ndarray, position: np.ndarray, peer: np.ndarray,
             peers: PeerTable) -> tuple[np.ndarray, np.ndarray]:
        """Act, check and slash for the step's paid hops; returns which hops failed and each
        request's commitment (the Merkle root of its hops' fingerprints, per client)."""
        registry = self.ledger.registry
        hops = Hops(request=client, position=position, peer=peer, stage=peers.stage[peer], cost=peers.cost[peer])
        self.hops += len(peer)
        self.hop_price += float(peers.price[peer].sum())
        self.hop_ms += float(hops.cost.sum())
        n_requests = len(self.behaviours.stale_client)
        if self.adaptive.any():
            self.verifier.rates = self.adaptive_rates(step, peers)
        verdict = self.verifier.check(hops, self.behaviours.peer, self.behaviours.owner, registry.effective_stake(),
                                      peers.stage, n_requests, peers.n_stages)
        # redundancy's replicas that cheated were caught with the hop they replicated
        cheaters = np.concatenate([peer[verdict.cheated], verdict.extra_cheaters])
        caught = np.concatenate([peer[verdict.caught], verdict.extra_cheaters])
        self.cheats += np.bincount(cheaters, minlength=len(self.cheats))
        self.caught += np.bincount(caught, minlength=len(self.caught))
        self.first_cheat[cheaters[self.first_cheat[cheaters] < 0]] = step
        spent = np.where(verdict.cheated | verdict.dropped, 0.0, hops.cost)
        self.compute_ms += np.bincount(peer, spent, minlength=len(self.compute_ms))
        delivered_bad = verdict.bad_request[client] & verdict.cheated & ~verdict.caught
        self.bad_outputs += np.bincount(peer[delivered_bad], minlength=len(self.bad_outputs))
        self.requests += int(len(np.unique(client)))
        self.bad_requests += int(verdict.bad_request.sum())
        self.flagged_honest += int(verdict.flagged_honest.sum())
        self.referee_calls += verdict.referee_calls
        self.verification_ms += float(verdict.verification_ms.sum())
        self.served_ms += float(spent.sum())
        exposed = self._audit(client, verdict)
        self._charge(client, peer, verdict)
        accused = np.concatenate([peer[verdict.confirmed], verdict.extra_cheaters, exposed])
        truth = np.concatenate([verdict.cheated[verdict.confirmed], np.ones(len(verdict.extra_cheaters) + len(exposed),
                                                                            bool)])
        self.pending.append((step + verdict.delay, accused, truth))
        self._slash_due(step)
        failed = verdict.dropped | verdict.caught
        self.sla_timeouts += int(verdict.dropped.sum())
        return failed, verdict.commitments

    def _audit(self, client: np.ndarray, verdict) -> np.ndarray:
        """The validators' side of the step's spot checks (when drawn): the compute each re-executed,
        the checks each skipped, jackpots (paid by the request's client, a tax on tasks) to those that
        found a forced error. Returns the validators exposed by one (they reported "ok" on a planted
        wrong output)."""
        audit = verdict.audit
        if audit is None:
            return np.zeros(0, dtype=np.int64)
        n = len(self.validator_ms)
        audited = audit.validator >= 0
        redone = np.bincount(client, verdict.verification_ms, minlength=len(audit.validator))
        self.validator_ms += np.bincount(audit.validator[audited], redone[audited], minlength=n)
        self.skipped_checks += np.bincount(audit.validator[audited & audit.skipped], minlength=n)
        self.forced_errors += int((audited & audit.forced).sum())
        exposed = audit.validator[audited & audit.forced & audit.skipped]
        self.exposed += np.bincount(exposed, minlength=n)
        found = np.flatnonzero(audited & audit.forced & ~audit.skipped)  # requests whose forced error was found
        amount = int(round(self.config.verification.jackpot * self.config.ledger.unit))
        if amount > 0 and len(found):
            accounts = self.ledger.registry.accounts[audit.validator[found]]
            paid = self.ledger.ledger.transfer_batch(self.ledger.sla.client_accounts[found], accounts,
                                                     np.full(len(found), amount), "verification_fee", ref=-1)
            self.jackpots_paid += int(paid.sum())
            self.jackpots_refused += int((~paid).sum())
        return exposed

    def _charge(self, client: np.ndarray, peer: np.ndarray, verdict) -> None:
        """Verification compute, paid by ``verification.payer`` into ``sys:treasury``, or to the
        request's validator where validators are drawn (paid per check, whether it re-executed or not;
        a simplification: the referee's compute on a flagged hop is paid to, and counted for, the
        validator too)."""
        ledger = self.ledger
        amount = np.floor(verdict.fee_ms * self.config.verification.compute_price * self.config.ledger.unit).astype(np.int64)
        keep = amount > 0
        if not keep.any():
            return
        payer = (ledger.sla.client_accounts[client] if self.config.verification.payer == "client"
                 else ledger.registry.accounts[peer])[keep]
        payee = np.full(int(keep.sum()), ledger.ledger.index["sys:treasury"])
        if verdict.audit is not None:
            validator = verdict.audit.validator[client[keep]]
            payee = np.where(validator >= 0, ledger.registry.accounts[np.maximum(validator, 0)], payee)
        paid = ledger.ledger.transfer_batch(payer, payee, amount[keep], "verification_fee", ref=-1)
        self.fees_refused += int((~paid).sum())

    def _slash_due(self, step: int) -> None:
        registry, ver = self.ledger.registry, self.config.verification
        due = [entry for entry in self.pending if entry[0] <= step]
        self.pending = [entry for entry in self.pending if entry[0] > step]
        for _, accused, truth in due:
            for peer, cheated in zip(accused.tolist(), truth.tolist()):
                if self.slashed_at[peer] >= 0 and not registry.registered[peer]:
                    continue  # already slashed and gone
                stake = int(registry.bonded[peer]) + int(registry.unbonding_stake()[peer])
                fraction = ver.slash_fraction if ver.slash_amount is None else min(1.0, ver.slash_amount / max(stake, 1))
                registry.slash(peer, fraction, reporter=self._reporter())
                if self.slashed_at[peer] < 0:
                    self.slashed_at[peer] = step
                self.wrongly_slashed[peer] |= not cheated
                if ver.exit_on_slash:
                    registry.force_exit(peer)

    def _reporter(self) -> int | None:
        """The whistleblower: a registered honest peer (the validator or watcher), drawn at random."""
        registry = self.ledger.registry
        honest = np.flatnonzero(registry.registered & (self.behaviours.peer == CODE["honest"]))
        return int(registry.accounts[self.rng.choice(honest)]) if len(honest) else None

    # -- outputs --------------------------------------------------------------------------------
    def wealth_and_compute(self, balance: np.ndarray, stake: np.ndarray, escrowed: np.ndarray
                           ) -> tuple[np.ndarray, np.ndarray]:
        """Per peer, in price units: what it gained since genesis (``balance``, bonded ``stake`` and
        unbonding stake, ``escrowed`` earnings: the ledger's peer columns; slashes and SLA penalties
        included) and the compute it spent."""
        cfg = self.config.ledger
        held = balance + stake + self.ledger.registry.unbonding_stake() + escrowed
        spent = self.compute_ms + self.validator_ms
        return (held - cfg.peer_endowment) / cfg.unit, spent * self.config.verification.compute_price

    def behaviour_rows(self, step: int, peers: PeerTable) -> pd.DataFrame:
        """One ``scope = "behaviour"`` row per behaviour present (cumulative figures; money in price
        units), from the ledger columns the model last put on ``peers``."""
        wealth, compute = self.wealth_and_compute(peers.balance, peers.stake, peers.escrowed)
        names = self.behaviours.names()
        rows = []
        for name in behaviour_registry.names():
            members = names == name
            if not members.any():
                continue
            rows.append({"behaviour": name, "behaviour_peers": int(members.sum()),
                         "registered": int(self.ledger.registry.registered[members].sum()),
                         "cheats": int(self.cheats[members].sum()), "caught": int(self.caught[members].sum()),
                         "slashed": int((self.slashed_at[members] >= 0).sum()),
                         "bad_outputs": int(self.bad_outputs[members].sum()),
                         "compute_cost": float(compute[members].sum()), "wealth_change": float(wealth[members].sum()),
                         "profit": float((wealth - compute)[members].sum())})
        frame = pd.DataFrame(rows)
        return frame.assign(step=step, scope="behaviour")[["step", "scope", *BEHAVIOUR_METRICS]]

    def slash_per_fraud(self) -> float:
        """What one confirmed fraud costs a peer that bonded ``ledger.initial_stake``, in base units."""
        ver = self.config.verification
        return ver.slash_amount if ver.slash_amount is not None else ver.slash_fraction * self.config.ledger.initial_stake

    def protocol_at(self, price, cost, detection, warmup_detection, warmup, horizon) -> Protocol:
        """A :class:`~p2pllm_abm.deterrence.Protocol` at these market figures (price, compute cost per
        hop in price units, detection, warm-up, horizon; scalars or arrays over peers), with the
        configured slash, SLA penalty and exit."""
        ver, led = self.config.verification, self.config.ledger
        like = np.ones_like(np.asarray(price, dtype=float))
        return Protocol(price=price, cost=cost, slash=like * self.slash_per_fraud() / led.unit,
                        sla_penalty=led.sla_penalty * price, detection=detection, warmup_detection=warmup_detection,
                        warmup=warmup, horizon=horizon, exits=(like > 0) & ver.exit_on_slash)

    def adaptive_rates(self, step: int, peers: PeerTable) -> np.ndarray:
        """Each adaptive peer's cheat rate for ``step`` (NaN for the others): its best response
        (:func:`~p2pllm_abm.deterrence.best_response_rates`) to what it has seen. Its detection
        estimate is the share of its post-warm-up hops that a check re-executed, with a uniform prior
        ((1 + checks) / (2 + hops)), times 1 - FN (the published fingerprint miss rate); the hops it
        still expects to serve are its hops per step so far (one hop per step as a prior) times the
        steps left; price and cost are its posted price and true compute cost."""
        verifier = self.verifier
        verifier.grow(len(self.behaviours.peer))
        peer = np.flatnonzero(self.adaptive)
        detection = (1 + verifier.seen_checks[peer]) / (2 + verifier.seen_hops[peer]) * (1 - verifier.fn)
        remaining = (verifier.served[peer] + 1) / step * max(self.config.run.steps - step + 1, 0)
        rates = np.full(len(self.behaviours.peer), np.nan)
        rates[peer], _ = best_response_rates(self.protocol_at(
            peers.price[peer], peers.cost[peer] * self.config.verification.compute_price, detection, detection,
            np.zeros(len(peer)), remaining))
        return rates

    def protocol(self) -> Protocol | None:
        """The configured protocol as one peer met it in this run (:mod:`p2pllm_abm.deterrence`): the
        mean posted price and true compute cost of the paid hops, the hops an honest peer served, the
        slash (``slash_amount`` or ``slash_fraction`` x ``ledger.initial_stake``), the SLA penalty,
        the warm-up and the detection at ``verification.probability``. None before any paid hop."""
        ver = self.config.verification
        honest = self.behaviours.peer == CODE["honest"]
        if not self.hops or not honest.any():
            return None
        mechanism, fn = self.verifier.mechanism, self.verifier.fn
        detection = mechanism.detection(ver, fn)
        protocol = self.protocol_at(self.hop_price / self.hops, self.hop_ms / self.hops * ver.compute_price, detection,
                                    1.0 - fn if mechanism.warmup else detection,
                                    float(ver.warmup) if mechanism.warmup else 0.0,
                                    float(self.verifier.served[honest].mean()))
        return protocol._replace(slash=float(protocol.slash), exits=bool(protocol.exits))

    def deterrence(self) -> dict[str, Any]:
        """The deterrence fields of the ``security`` block: the thresholds in ``verification.probability``
        for this run's protocol (:func:`~p2pllm_abm.deterrence.sampling_threshold`; None where the
        mechanism's detection does not depend on it, or even p = 1 does not deter), and the realised
        profit per peer of the peers with a dishonest behaviour (cheaters, lazy verifiers, ...) and of
        their matched honest peers."""
        ver, proto = self.config.verification, self.protocol()
        block: dict[str, Any] = {"deterrence_threshold": None, "deterrence_threshold_at_q": None,
                                 "deterrence_inputs": None}
        if proto is not None and self.verifier.mechanism.sampling:
            at = lambda p: proto._replace(detection=self.verifier.mechanism.detection(replace(ver, probability=p),
                                                                                     self.verifier.fn))
            block["deterrence_threshold"] = sampling_threshold(at)
            block["deterrence_threshold_at_q"] = sampling_threshold(at, self.config.adversary.cheat_probability)
        if proto is not None:
            rate, gain = best_response_rate(proto)
            block["deterrence_inputs"] = {**{k: float(v) for k, v in proto._asdict().items() if k != "exits"},
                                          "exits": bool(proto.exits), "best_response_rate": rate,
                                          "best_response_gain": gain}
        cheaters = self.behaviours.designated
        honest = np.flatnonzero((self.behaviours.peer == CODE["honest"]) & ~cheaters)
        block["cheater_profit_per_peer"] = block["honest_profit_per_peer"] = None
        if cheaters.any() and len(honest):
            wealth, compute = self.wealth_and_compute(**self.ledger.peer_columns())
            profit = wealth - compute
            matched = np.array([self.matched_honest_peer(peer, honest) for peer in np.flatnonzero(cheaters)])
            block["cheater_profit_per_peer"] = float(profit[cheaters].mean())
            block["honest_profit_per_peer"] = float(profit[matched].mean())
        if self.config.adversary.counterfactual:  # the designated peers behaved honestly: their profit is the baseline
            block["designated_profit_per_peer"] = block.pop("cheater_profit_per_peer")
        block["profit_matching"] = ("each peer with a dishonest behaviour is compared with the honest peer of its "
                                    "stage (when behaviours were drawn) whose true cost is nearest; profit = "
                                    "wealth change (slashes and SLA penalties included) - compute spent")
        return block

    def matched_honest_peer(self, peer: int, honest: np.ndarray) -> int:
        """The honest peer (of ``honest``) of ``peer``'s starting stage whose true cost is nearest
        (any stage when its stage has none)."""
        same = honest[self.start_stage[honest] == self.start_stage[peer]]
        pool = same if len(same) else honest
        return int(pool[np.argmin(np.abs(self.start_cost[pool] - self.start_cost[peer]))])

    def summary(self) -> dict[str, Any]:
        """``summary.json``'s ``security`` block."""
        cheating = self.cheats > 0
        slashed = self.slashed_at >= 0
        honest = self.behaviours.peer == CODE["honest"]
        caught_cheaters = cheating & slashed
        delays = (self.slashed_at - self.first_cheat)[caught_cheaters]
        total_ms = self.served_ms + self.verification_ms
        channels = self.ledger.channels
        return {
            "mechanism": self.config.verification.mechanism,
            "fingerprint": self.config.verification.fingerprint,
            "referee": self.config.verification.referee,
            "cheating_peers": int(cheating.sum()),
            "slashed_cheaters": int(caught_cheaters.sum()),
            "adversarial_peers": int(self.behaviours.adversarial.sum()),
            "slashed_honest": int((slashed & honest).sum()),
            "wrongly_slashed": int(self.wrongly_slashed.sum()),
            "requests": self.requests,
            "bad_outputs_delivered": self.bad_requests,
            "bad_output_share": self.bad_requests / self.requests if self.requests else None,
            "verification_compute_share": self.verification_ms / total_ms if total_ms else None,
            "verification_overhead": self.verification_ms / self.served_ms if self.served_ms else None,
            "mean_steps_to_detection": float(delays.mean()) if len(delays) else None,
            "cheats": int(self.cheats.sum()), "caught": int(self.caught.sum()),
            "honest_flags": self.flagged_honest, "referee_calls": self.referee_calls,
            "sla_timeouts": self.sla_timeouts,  # hops an offline peer dropped
            "verification_fees_refused": self.fees_refused,
            "stale_channel_clients": int(self.behaviours.stale_client.sum()),
            "stale_closes": int(channels.stale_closes) if channels else 0,
            "stale_closes_challenged": int(channels.challenges_won) if channels else 0,
            "skipped_checks": int(self.skipped_checks.sum()), "forced_errors": self.forced_errors,
            "exposed_verifiers": int((self.exposed > 0).sum()), "jackpots_paid": self.jackpots_paid,
            "jackpots_refused": self.jackpots_refused,
            **self.deterrence(),
        }
