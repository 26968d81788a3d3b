"""Configuration schema (Hydra structured configs) and validation.

Every knob of a run lives in :class:`Config`. The dataclasses are registered in Hydra's
ConfigStore as ``p2pllm_schema`` so that ``conf/config.yaml`` and the experiment files in
``conf/experiment/`` are type-checked by OmegaConf; :func:`validate` then checks ranges and
cross-field consistency *before* a run starts, raising :class:`ConfigError` with the field, the
value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import itertools
import math
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Optional, Sequence, get_type_hints

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .paths import CONF_DIR, resolve_fingerprints
from .profiles import COST_METRICS, PROFILED, ProfileError, devices, load_profile, resolve_profile
from .registries import (MARKET_SCALE, PluginError, Registry, allocation_rules, behaviours, load_plugins, mechanisms,
                         price_rules, routings)


ALPHA_DISTRIBUTIONS = ("fixed", "uniform", "beta")
#: the market's scales (prices, step size, demand, T and 1/T, costs) stay within [1/SCALE, SCALE]: the
#: equilibrium's price differences are of order T/alpha, and float64 resolves them next to prices,
#: costs and their products only while those stay within a few orders of magnitude of each other
SCALE = MARKET_SCALE
MAX_CLASSES = 10_000  #: request classes (alpha bins) at most
BEYOND = " (beyond that float64 cannot keep the market's arithmetic finite and exact)"
#: what eq. 7's share of a stage counts: inverse compute cost (as written) or peers
ALLOCATION_READINGS = ("compute_share", "head_count")
COST_SOURCES = ("uniform", "profile")
REFERENCES = ("paper_table1",)
LEDGER_BACKENDS = ("python", "evm")
FINGERPRINTS = ("exact", "topk")
VERIFICATION_PAYERS = ("client", "peer")
LEDGER_CHOICES = {"fee_destination": ("proposer", "burn"), "sharding": ("stage", "none"),
                  "registry_view": ("live", "confirmed"), "payments": ("channels", "escrow"),
                  "signatures": ("stub", "ed25519")}
#: the ledger's int64 balances stay exact below this (p2pllm_abm.ledger.accounts.MAX_SUPPLY); no integer
#: field may exceed it either
_MAX_AMOUNT = 2**62


#: today's tuples of names, now read from the registries when asked for (module ``__getattr__``)
_NAMES = {
    "UPDATE_RULES": lambda: tuple(name for name, rule in price_rules.items() if rule.solver),
    "PRICE_RULES": price_rules.names,
    "ROUTINGS": routings.names,
    "ALLOCATION_RULES": allocation_rules.names,
    "MECHANISMS": mechanisms.names,
    "BEHAVIOURS": behaviours.names,
}


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return _NAMES[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class NetworkConfig:
    """The peers and the model they serve (paper section 3 and 5.2)."""

    peers: int = 200  #: n, number of peers
    stages: int = 4  #: m, number of model stages ("layers" in the paper)
    #: peers per stage at step 0; None splits ``peers`` as evenly as possible
    initial_distribution: list[int] | None = None
    #: probabilities of span lengths 1, 2, ...: a peer serves ``length`` consecutive stages from its
    #: first stage (Petals-style spans); [1.0] = one stage per peer, as in the paper
    span_length_probs: list[float] = field(default_factory=lambda: [1.0])
    cost_range: list[float] = field(default_factory=lambda: [1.0, 50.0])  #: c_i ~ U(lo, hi) per stage served, ms
    #: where c_i comes from: "uniform" (cost_range, the paper) or "profile" (measured transformer
    #: shards, see p2pllm_abm/costs.py)
    cost_source: str = "uniform"
    cost_profile: str | None = None  #: profile file (absolute, or in conf/profiles/) for cost_source=profile
    cost_metric: str = "decode"  #: the profiled time that is c_i: "decode" (ms per token) or "prefill"
    #: device -> weight; each peer's device is drawn from this mix ("profiled": the profile's machine;
    #: every device of conf/devices.yaml is a key, so an override only changes weights)
    device_mix: dict[str, float] = field(default_factory=lambda: {PROFILED: 1.0, **dict.fromkeys(devices(), 0.0)})
    latency_range: list[float] = field(default_factory=lambda: [1.0, 20.0])  #: l_ij in [lo, hi], ms
    initial_price: float = 1.0  #: p_i at step 0
    #: the wall-clock length of a step in ms; set, it gives peers a capacity (p2pllm_abm/load.py): peer i
    #: serves at most step_ms / c_i requests per step, the rest wait in its queue; null: unlimited (the paper)
    step_ms: Optional[float] = None
    #: requests per step every peer serves at most, set directly instead of step_ms / c_i (needs step_ms)
    capacity: Optional[float] = None


@dataclass
class MarketConfig:
    """Per-stage price competition (paper eq. 1-5)."""

    alpha: float = 0.5  #: price weight in w_i = alpha p_i + (1 - alpha) c_i (eq. 1)
    eta: float = 1.0  #: gradient-ascent step size (eq. 4-5)
    temperature: float = 1.0  #: T of the Boltzmann choice probabilities (eq. 3)
    demand: float = 1.0  #: D, requests per step the price step expects (R_i = D p_i P_i)
    #: price update rule: "gradient" (the paper's eq. 5), "best_response", "sequential_best_response",
    #: "fixed_point" (damped p = T / (alpha (1 - P))) or "newton" (on the first-order conditions)
    update_rule: str = "gradient"
    damping: float = 0.5  #: step share of the "fixed_point" rule
    price_floor: float = 0.0  #: prices are kept at or above this value after every update
    exploration: float = 0.1  #: delta, the "observed" rule's price perturbation (price units)
    baseline_rate: float = 0.05  #: beta, the "observed" rule's baseline update rate
    #: kappa: peers maximise profit D (p - kappa c) P instead of the paper's revenue D p P (0: the paper)
    marginal_cost: float = 0.0
    #: w_0, the weight of a no-purchase alternative in every stage's logit (null: none, the paper)
    outside_option: Optional[float] = None
    #: parameters of a plug-in price rule by name (its registry entry lists them, with defaults and
    #: ranges); the built-in rules' parameters are the fields above (damping, exploration, baseline_rate)
    rule_params: dict[str, float] = field(default_factory=dict)


@dataclass
class AllocationConfig:
    """Periodic layer reallocation (paper eq. 7-8)."""

    enabled: bool = True
    period: int = 10  #: K, reallocation happens after every K-th step
    move_fraction: float = 0.1  #: share of live peers that may consider a move per period
    hysteresis: float = 0.0  #: move only if the new share exceeds the old by this factor
    #: what a peer's share of a stage counts (eq. 7): "compute_share" (inverse compute cost, the
    #: paper's eq. 7 as written) or "head_count" (one per peer: peers balance numbers per stage)
    reading: str = "compute_share"
    #: "market" (eq. 7-8: joiners and movers take the stage of largest share) or "petals" (Petals'
    #: block selection: the span that most raises the weakest stage's throughput; a server moves only when a
    #: simulated swarm-wide rebalance lifts that minimum by more than 1 / balance_quality)
    rule: str = "market"
    balance_quality: float = 0.75  #: Petals' threshold (allocation.rule = petals); 0 never rebalances
    reload_steps: int = 0  #: steps a peer that moved is offline, loading its new layers
    switch_fee: float = 0.0  #: price units a move costs the peer (subtracted from its earnings)


@dataclass
class ClientsConfig:
    """Clients issuing inference requests every step."""

    count: int = 64  #: number of clients; 0 switches the request phase off
    #: how each client's alpha is drawn: "fixed", "uniform" or "beta"
    alpha_distribution: str = "fixed"
    #: fixed: [] (= market.alpha) or [a]; uniform: [low, high]; beta: [a, b]
    alpha_params: list[float] = field(default_factory=list)
    request_rate: float = 1.0  #: probability that a client sends a request in a step
    #: how a request picks its peers: "stage" (the paper's market: per stage, a draw from eq. 3's
    #: probabilities, the logit choice's law; latency ignored) or "path" (the whole path with the
    #: smallest sum of noisy weights plus (1 - alpha) x latencies, client endpoints included)
    #: or "petals" (Petals' min-latency routing: the path of least compute time + latencies + a per-hop
    #: overhead, no price, no noise, no load)
    routing: str = "stage"
    load_aware: bool = False  #: clients add each peer's expected queue wait (ms) to its cost in eq. 1
    hop_overhead_ms: float = 18.0  #: routing = petals: Petals' per-hop serialisation overhead
    #: realised path price and time are recorded per request class: equal-width bins of client alpha
    request_classes: int = 4


@dataclass
class ChurnConfig:
    """Peers joining and leaving during a run (p2pllm_abm/churn.py)."""

    join_rate: float = 0.0  #: expected peers joining per step (Poisson arrivals)
    leave_rate: float = 0.0  #: per-step probability that a peer leaves for good (geometric sessions)
    #: spare rows in the peer arrays, as a share of network.peers (joins fill them; the arrays grow by a tenth,
    #: and the jitted step compiles again, when they run out)
    headroom: float = 0.1


@dataclass
class FailuresConfig:
    """Peers failing mid-request, and clients failing over (p2pllm_abm/load.py)."""

    rate: float = 0.0  #: per-step probability that a live peer fails (its requests of that step fail over)
    downtime: Optional[int] = 10  #: steps a failed peer stays down; null: it never comes back
    max_retries: Optional[int] = None  #: failovers a request may make before it is dropped (null: Petals' no cap)


@dataclass
class RunConfig:
    steps: int = 1000  #: number of steps (iterations)
    record_interval: int = 50  #: metrics and peer snapshots every this many steps (and at 0, last)
    progress: bool = True  #: show a progress bar
    memory_check: bool = True  #: refuse a run whose estimated memory exceeds what is available (resources.py)
    #: a fused run of at most 500 peers with clients keeps Python on one core and XLA's CPU threads on the others
    #: (Linux, two cores or more; p2pllm_abm/cores.py)
    separate_cores: bool = True
    figures: bool = True  #: write PNG figures into the run directory
    #: in a multirun, skip a job whose run directory holds a completed run of the same config
    resume: bool = True
    #: run this many replicates in one job (seeds seed .. seed + replicates - 1; p2pllm_abm.ensemble)
    replicates: int = 1
    #: parameters to run in the same job, by name (alpha or market.alpha) -> list of values; every
    #: point of their grid, each with its replicates (p2pllm_abm.ensemble). null: none. (A dict typed
    #: Any: Hydra cannot assign new keys to a typed dict, nor a dict to an Optional one.)
    ensemble: Any = None
    #: modules to import before the config is validated: each registers its own price rules, mechanisms,
    #: behaviours, allocation rules or routings (p2pllm_abm.registries; see docs/plugins). Installed
    #: packages' entry points (group p2pllm_abm.plugins) are imported too
    plugins: list[str] = field(default_factory=list)
    #: keep compiled programs on disk for later processes (p2pllm_abm.compile_cache): "auto"
    #: ($P2PLLM_ABM_COMPILATION_CACHE, else ~/.cache/p2pllm-abm/jax), a directory, or null (none)
    compilation_cache: Optional[str] = "auto"


@dataclass
class LedgerConfig:
    """The cryptoeconomic layer (paper section 4; :mod:`p2pllm_abm.ledger`). Every amount is an
    integer number of base units; ``unit`` base units make one price unit."""

    enabled: bool = False  #: off: today's market only, bit for bit
    backend: str = "python"  #: "python" (numpy balances) or "evm" (Vyper contracts on pyrevm, [evm] extra)
    unit: int = 1_000_000  #: base units per price unit (a payment is floor(price * unit))
    client_endowment: int = 10**12  #: each client's genesis balance
    peer_endowment: int = 10**9  #: each peer's genesis balance (registration stake is bonded from it)
    min_stake: int = 32 * 10**6  #: bonded stake needed to stay registered and validate
    initial_stake: int = 64 * 10**6  #: stake each peer bonds at registration (>= min_stake)
    max_effective_stake: int | None = None  #: cap on a validator's weight (null: no cap)
    slots_per_epoch: int = 32  #: one slot per step
    block_capacity: int = 512  #: transactions per block per shard
    tx_fee: int = 1_000  #: paid by the sender of every included transaction
    fee_destination: str = "proposer"  #: "proposer" or "burn"
    issuance_per_epoch: int = 0  #: minted to validators by effective stake at each epoch's end
    attestation_rate: float = 1.0  #: probability that a validator attests (finality needs 2/3 of stake)
    sharding: str = "stage"  #: "stage" (one shard per stage, section 4.1) or "none" (one chain)
    cross_shard_delay: int = 1  #: extra slots before a transaction from another shard is ready (receipt)
    registry_view: str = "live"  #: what requests read: "live" prices or the "confirmed" registry
    price_tick: float = 0.01  #: a peer posts its price on chain once it moved by this much
    unbonding_delay: int = 64  #: slots before unbonded stake can be withdrawn
    whistleblower_share: float = 0.125  #: of a slashed amount to the reporter; the rest is burned
    payments: str = "channels"  #: "channels" (off-chain updates) or "escrow" (one escrow per hop)
    sla_term: int = 1  #: steps an SLA's price holds before renewal at the posted price
    sla_penalty: float = 0.5  #: penalty for a violated SLA, times its price, from the peer's stake
    channel_deposit: int = 1000 * 10**6  #: a client's deposit when it opens a channel (at least what it owes)
    challenge_window: int = 16  #: slots to challenge a unilateral channel close
    stale_penalty: float = 1.0  #: share of a stale closer's balance forfeited to the challenger
    signatures: str = "stub"  #: "stub" or "ed25519" (PyNaCl) on channel states
    check_every_step: bool = False  #: assert conservation after every step (debug runs, tests)


@dataclass
class AdversaryConfig:
    """Dishonest peers (and clients) and what they do (:mod:`p2pllm_abm.behaviours`)."""

    #: share of peers given a dishonest behaviour (of clients, for stale_channel)
    fraction: float = 0.0
    behaviour: str = "lazy"  #: a registered behaviour but honest (p2pllm_abm.registries.behaviours), or "mix"
    #: behaviour -> weight, with behaviour = mix (override single weights: adversary.mix.lazy=2)
    mix: dict[str, float] = field(default_factory=lambda: dict.fromkeys(behaviours.names(), 0.0))
    #: q: lazy, colluding and sybil peers skip their layers on a request with this probability
    #: (malicious peers always return wrong outputs)
    cheat_probability: float = 0.5
    overclaim_factor: float = 0.5  #: an overclaiming peer registers this factor x its true cost
    offline_probability: float = 0.5  #: an offline peer drops a request with this probability
    #: a lazy verifier reports "ok" without re-executing a check assigned to it with this probability
    verifier_skip_probability: float = 0.5
    #: draw the adversaries exactly as configured but let them behave honestly: the paired run a
    #: deviation's gain is measured against (same seed; the security block's designated_profit_per_peer).
    #: The pair shares its random draws until the first slash (a whistleblower is drawn then)
    counterfactual: bool = False
    sybil_identities: int = 4  #: identities per sybil owner, each bonding only ledger.min_stake


@dataclass
class VerificationConfig:
    """How outputs are checked and cheaters slashed (:mod:`p2pllm_abm.verification`)."""

    mechanism: str = "none"  #: none, spot_check, redundancy, optimistic or dispute_game
    #: spot_check: chance a validator re-executes a request; optimistic and dispute_game: each
    #: watcher's chance to re-execute a request
    probability: float = 0.1
    #: spot_check: every hop of a peer's first ``warmup`` served hops is re-executed too (a new
    #: peer has no reputation yet); 0: uniform sampling only
    warmup: int = 16
    replicas: int = 3  #: redundancy: k peers of the stage run every hop
    watchers: int = 3  #: optimistic and dispute_game
    challenge_window: int = 8  #: optimistic and dispute_game: steps until an unchallenged result is final
    #: dispute_game: chance the referee re-executes a colluding group's whole span from its entry
    #: (else consistent boundaries inside the group hide the fraud)
    inside_sampling: float = 0.0
    fingerprint: str = "topk"  #: what outputs are compared by: "exact" SHA-256 or the "topk" fingerprint
    fingerprint_profile: str = "llama-134m_4stages_cpu.json"  #: measured rates (conf/fingerprints/)
    referee: bool = True  #: slash only after a referee confirms (false: every mismatch is slashed)
    slash_fraction: float = 1.0  #: share of the stake slashed per confirmed fraud
    slash_amount: int | None = None  #: base units slashed per confirmed fraud instead (null: the fraction)
    exit_on_slash: bool = True  #: a slashed peer is forced out (Ethereum); false: it stays while bonded
    compute_price: float = 0.01  #: price units per ms of compute: what a skipped hop saves, what checks cost
    #: spot_check: chance a check carries a forced error (a planted wrong output, the remedy to the
    #: verifier's dilemma): a validator that reports "ok" on it is exposed and slashed like a cheater
    forced_error_rate: float = 0.0
    jackpot: float = 0.0  #: price units the request's client pays a validator that finds a forced error
    payer: str = "client"  #: who pays verification compute: "client" or "peer" (the checked one)


@dataclass
class ReportConfig:
    """The checkpoint table printed at the end of a CLI run."""

    table_steps: list[int] = field(default_factory=lambda: [0, 100, 500, 1000])
    #: published numbers printed beside the table ("paper_table1") or None
    reference: str | None = None


@dataclass
class Config:
    network: NetworkConfig = field(default_factory=NetworkConfig)
    market: MarketConfig = field(default_factory=MarketConfig)
    allocation: AllocationConfig = field(default_factory=AllocationConfig)
    clients: ClientsConfig = field(default_factory=ClientsConfig)
    churn: ChurnConfig = field(default_factory=ChurnConfig)
    failures: FailuresConfig = field(default_factory=FailuresConfig)
    run: RunConfig = field(default_factory=RunConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    ledger: LedgerConfig = field(default_factory=LedgerConfig)
    adversary: AdversaryConfig = field(default_factory=AdversaryConfig)
    verification: VerificationConfig = field(default_factory=VerificationConfig)
    seed: int = 0  #: one seed decides the whole run


def register_schema() -> None:
    """Store :class:`Config` in Hydra's ConfigStore as ``p2pllm_schema`` (``conf/config.yaml``'s first
    default). Called by the entry points before Hydra composes, after plug-ins are loaded, so that the
    schema's defaults (``adversary.mix``'s keys) name every registered behaviour."""
    ConfigStore.instance().store(name="p2pllm_schema", node=Config)


class ConfigError(ValueError):
    """A configuration value is out of its allowed range."""

    def __init__(self, field_name: str, value: Any, allowed: str):
        self.field = field_name
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field_name} = {value!r} is invalid: allowed {allowed}")


@functools.cache
def schema_keys() -> frozenset[str]:
    """Every dotted name of the schema: sections (``market``), fields (``market.alpha``) and the
    keys of dict fields (``adversary.mix.lazy``)."""
    def walk(node: dict, prefix: str):
        for key, value in node.items():
            yield prefix + str(key)
            if isinstance(value, dict):
                yield from walk(value, f"{prefix}{key}.")

    return frozenset(walk(OmegaConf.to_container(OmegaConf.structured(Config)), ""))


def _registry_keys(name: str) -> list[str] | None:
    """The valid dotted names beside ``name`` when its parent is a dict field keyed by a registry's
    names (``adversary.mix.<behaviour>``, a plug-in's too); ``market.rule_params.<name>`` takes any
    name, checked by :func:`validate` against the chosen rule's parameters. ``None`` elsewhere."""
    parent = name.rpartition(".")[0]
    if parent == "adversary.mix":
        return [f"{parent}.{behaviour}" for behaviour in behaviours.names()]
    if parent == "market.rule_params":
        return [name]
    return None


def check_field_name(name: str, value: Any) -> None:
    """Refuse a dotted ``name`` that is not in the schema, naming the nearest valid one."""
    keyed = _registry_keys(name)
    if name in (keyed if keyed is not None else schema_keys()):
        return
    nearest = difflib.get_close_matches(name, sorted(keyed or schema_keys()), n=1, cutoff=0.5)
    hint = f"did you mean {nearest[0]!r}?" if nearest else "see p2pllm_abm/config.py for every field"
    raise ConfigError(name, value, f"a field of the schema ({name!r} is not one; {hint})")


def check_group_choice(group: str, choice: str) -> None:
    """Refuse a choice of config group ``group`` that names no file of ``conf/<group>/``, naming the
    nearest one."""
    choices = sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))
    if choice not in choices:
        nearest = difflib.get_close_matches(choice, choices, n=1, cutoff=0.5)
        raise ConfigError(group, choice, f"one of {choices}" + (f"; did you mean {nearest[0]!r}?" if nearest else ""))


def check_override(name: str, value: Any) -> None:
    """Refuse an override whose field is not in the schema (:func:`check_field_name`) or whose
    value the field's type cannot hold (``market.alpha=abc``), in one :class:`ConfigError`."""
    check_field_name(name, value)
    try:
        OmegaConf.update(OmegaConf.structured(Config), name, value, merge=True)
    except OmegaConfBaseException as error:
        raise ConfigError(name, value, f"a value of the field's type ({first_line(error)})") from None


def first_line(error: Exception) -> str:
    """The first line of an error's message (Hydra's and OmegaConf's run over several)."""
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _leaves(node: Any, prefix: str = ""):
    """``(dotted name, value)`` of every leaf of a nested dict."""
    for key, value in node.items():
        if isinstance(value, dict) and value and f"{prefix}{key}" != "run.ensemble":  # its keys are field names
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield prefix + str(key), value


#: the market scales :func:`most_extreme_field` weighs, by dotted name
MARKET_SCALES = ("market.eta", "market.temperature", "market.demand", "network.initial_price", "market.exploration",
                 "market.marginal_cost", "market.price_floor")


def field_value(cfg: Config, name: str) -> Any:
    """The value of the dotted field ``section.field`` of ``cfg``."""
    section, key = name.split(".")
    return getattr(getattr(cfg, section), key)


def most_extreme_field(cfg: Config) -> tuple[str, Any]:
    """The market scale furthest, in orders of magnitude, from its default (``network.cost_range``
    by its upper end): the field most likely to blame when a run's arithmetic leaves float64."""
    defaults = Config()
    scores = {name: abs(math.log10(field_value(cfg, name) / field_value(defaults, name))) for name in MARKET_SCALES
              if field_value(cfg, name) > 0 and field_value(defaults, name) > 0}
    scores["network.cost_range"] = abs(math.log10(cfg.network.cost_range[1] / defaults.network.cost_range[1]))
    name = max(scores, key=scores.get)
    value = list(cfg.network.cost_range) if name == "network.cost_range" else field_value(cfg, name)
    return name, value


def _require(ok: bool, field_name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(field_name, value, allowed)


def _finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _range_pair(values: Sequence[float], name: str, lower: float) -> None:
    _require(len(values) == 2, name, list(values), "a list [low, high]")
    low, high = values
    _require(_finite(low) and _finite(high) and lower <= low <= high, name, list(values),
             f"{lower} <= low <= high, both finite")


def initial_distribution(network: NetworkConfig) -> list[int]:
    """Peers per stage at step 0: the configured list, or ``peers`` split as evenly as possible."""
    if network.initial_distribution is not None:
        return list(network.initial_distribution)
    base, extra = divmod(network.peers, network.stages)
    return [base + (s < extra) for s in range(network.stages)]


def _validate_cost_source(net: NetworkConfig) -> None:
    _require(net.cost_source in COST_SOURCES, "network.cost_source", net.cost_source, f"one of {COST_SOURCES}")
    if net.cost_source != "profile":
        return
    _require(net.cost_profile is not None and resolve_profile(net.cost_profile).is_file(), "network.cost_profile",
             net.cost_profile, "a cost profile file (absolute, or a name in conf/profiles/)")
    try:
        stages = len(load_profile(net.cost_profile)["stages"])
    except ProfileError as error:
        raise ConfigError("network.cost_profile", net.cost_profile, f"a valid cost profile ({error})") from None
    _require(stages == net.stages, "network.cost_profile", net.cost_profile,
             f"a profile of network.stages = {net.stages} stages (this one has {stages})")
    _require(net.cost_metric in COST_METRICS, "network.cost_metric", net.cost_metric, f"one of {COST_METRICS}")
    mix = dict(net.device_mix)
    allowed = (PROFILED, *devices())
    _require(len(mix) > 0 and all(name in allowed for name in mix), "network.device_mix", mix,
             f"weights for devices among {allowed}")
    _require(all(_finite(w) and w >= 0 for w in mix.values()) and sum(mix.values()) > 0, "network.device_mix",
             mix, "finite weights >= 0, not all 0")


def security_on(cfg: Config) -> bool:
    """Whether the run has adversaries or a verification mechanism that checks outputs."""
    mechanism = cfg.verification.mechanism
    return cfg.adversary.fraction > 0 or (mechanism in mechanisms and mechanisms.get(mechanism).checks)


def validate_plugins(plugins: Any) -> None:
    """Import ``run.plugins`` (and installed entry points), or a :class:`ConfigError` naming the module."""
    _require(isinstance(plugins, (list, tuple)), "run.plugins", plugins, "a list of module names")
    try:
        load_plugins(list(plugins))
    except PluginError as error:
        raise ConfigError("run.plugins", error.module, f"modules that import and register plug-ins ({error.reason})") \
            from None


def validate(cfg: Config) -> Config:
    """Check every field's range and the fields' consistency; return ``cfg`` unchanged.

    Raises :class:`ConfigError` naming the first offending field, its value and what is allowed.
    The plug-ins of ``run.plugins`` (and installed entry points) are imported first: their names are
    then valid choices.
    """
    net, mkt, alloc, cli, run, rep = cfg.network, cfg.market, cfg.allocation, cfg.clients, cfg.run, cfg.report
    validate_plugins(run.plugins)
    for name, value in _leaves(dataclasses.asdict(cfg)):  # every integer field
        _require(not isinstance(value, int) or isinstance(value, bool) or abs(value) <= _MAX_AMOUNT, name, value,
                 f"an integer of magnitude <= 2**62 = {_MAX_AMOUNT} (int64 holds it)")
    _require(net.peers >= 1, "network.peers", net.peers, "an integer >= 1")
    _require(1 <= net.stages <= net.peers, "network.stages", net.stages,
             f"an integer from 1 to network.peers = {net.peers} (every stage needs a peer)")
    dist = initial_distribution(net)
    _require(len(dist) == net.stages, "network.initial_distribution", dist,
             f"one count per stage ({net.stages} entries)")
    _require(all(k >= 1 for k in dist), "network.initial_distribution", dist,
             "at least 1 peer in every stage at start")
    _require(sum(dist) == net.peers, "network.initial_distribution", dist,
             f"counts summing to network.peers = {net.peers}")
    probs = list(net.span_length_probs)
    _require(1 <= len(probs) <= net.stages and all(_finite(q) and q >= 0 for q in probs)
             and abs(sum(probs) - 1.0) <= 1e-9, "network.span_length_probs", probs,
             f"probabilities of lengths 1..k (k <= network.stages = {net.stages}), each >= 0, summing to 1")
    _validate_cost_source(net)
    _range_pair(net.cost_range, "network.cost_range", lower=0.0)
    _require(1 / SCALE <= net.cost_range[1] <= SCALE, "network.cost_range", list(net.cost_range),
             f"{1 / SCALE:g} <= high <= {SCALE:g} ms{BEYOND}")
    _range_pair(net.latency_range, "network.latency_range", lower=0.0)
    _require(_finite(mkt.price_floor) and 0 <= mkt.price_floor <= SCALE, "market.price_floor", mkt.price_floor,
             f"0 <= floor <= {SCALE:g}{BEYOND}")
    _require(_finite(net.initial_price) and mkt.price_floor <= net.initial_price <= SCALE,
             "network.initial_price", net.initial_price,
             f"market.price_floor = {mkt.price_floor} <= price <= {SCALE:g}{BEYOND}")

    _require(_finite(mkt.alpha) and 0.0 <= mkt.alpha <= 1.0, "market.alpha", mkt.alpha, "0 <= alpha <= 1")
    _require(_finite(mkt.eta) and 0 < mkt.eta <= SCALE, "market.eta", mkt.eta, f"0 < eta <= {SCALE:g}{BEYOND}")
    _require(_finite(mkt.temperature) and 1 / SCALE <= mkt.temperature <= SCALE, "market.temperature",
             mkt.temperature, f"{1 / SCALE:g} <= T <= {SCALE:g}{BEYOND}")
    _require(_finite(mkt.demand) and 0 < mkt.demand <= SCALE, "market.demand", mkt.demand,
             f"0 < D <= {SCALE:g}{BEYOND}")
    rule = _entry(price_rules, mkt.update_rule)
    if rule.needs_requests:
        _require(cfg.clients.count >= 1, "clients.count", cfg.clients.count,
                 f"an integer >= 1 with market.update_rule = {mkt.update_rule!r} (peers learn from the requests "
                 "they see)")
        _require(not cfg.ledger.enabled, "ledger.enabled", cfg.ledger.enabled,
                 f"false with market.update_rule = {mkt.update_rule!r} (the ledger settles the peers' own prices, "
                 "not the ones the rule posts)")
    _validate_rule_params(cfg)
    _require(rule.zero_alpha or mkt.alpha > 0, "market.alpha", mkt.alpha,
             f"alpha > 0 with market.update_rule = {mkt.update_rule!r} (at alpha = 0 no best response exists)")
    _require(_finite(mkt.marginal_cost) and 0 <= mkt.marginal_cost <= SCALE, "market.marginal_cost",
             mkt.marginal_cost, f"0 <= kappa <= {SCALE:g} (0: revenue, the paper's eq. 2){BEYOND}")
    _require(mkt.outside_option is None or (_finite(mkt.outside_option) and abs(mkt.outside_option) <= SCALE),
             "market.outside_option", mkt.outside_option, f"null (no outside option) or a weight |w_0| <= {SCALE:g}{BEYOND}")
    routing = _entry(routings, cfg.clients.routing)
    _require(mkt.outside_option is None or routing.outside_option, "market.outside_option", mkt.outside_option,
             f"null with clients.routing = {cfg.clients.routing!r} (the outside option is a per-stage choice)")

    single_stage = all(q == 0 for q in probs[1:])
    span_rules = [name for name, entry in allocation_rules.items() if entry.spans]
    _require(not alloc.enabled or _entry(allocation_rules, alloc.rule).spans or single_stage, "allocation.enabled",
             alloc.enabled, f"false, or allocation.rule one of {span_rules}, when network.span_length_probs allows "
             "spans longer than one stage (eq. 7-8 move peers between single stages)")
    _require(_finite(alloc.balance_quality) and 0 <= alloc.balance_quality <= 1, "allocation.balance_quality",
             alloc.balance_quality, "0 <= quality <= 1 (0: never rebalance; Petals uses 0.75)")
    _require(isinstance(alloc.reload_steps, int) and 0 <= alloc.reload_steps <= 10**6, "allocation.reload_steps",
             alloc.reload_steps, "an integer from 0 to 10^6")
    _require(_finite(alloc.switch_fee) and 0 <= alloc.switch_fee <= SCALE, "allocation.switch_fee", alloc.switch_fee,
             f"0 <= fee <= {SCALE:g}")
    _require(alloc.period >= 1, "allocation.period", alloc.period, "an integer >= 1")
    _require(_finite(alloc.move_fraction) and 0.0 < alloc.move_fraction <= 1.0,
             "allocation.move_fraction", alloc.move_fraction, "0 < move_fraction <= 1")
    _require(_finite(alloc.hysteresis) and alloc.hysteresis >= 0, "allocation.hysteresis", alloc.hysteresis,
             "hysteresis >= 0")
    _require(alloc.reading in ALLOCATION_READINGS, "allocation.reading", alloc.reading,
             f"one of {ALLOCATION_READINGS}")

    _require(cli.count >= 0, "clients.count", cli.count, "an integer >= 0")
    _require(_finite(cli.request_rate) and 0.0 < cli.request_rate <= 1.0, "clients.request_rate",
             cli.request_rate, "0 < rate <= 1 (probability of one request per client per step)")
    span_routings = [name for name, entry in routings.items() if entry.spans]
    _require(routing.spans or single_stage, "clients.routing", cli.routing,
             f"one of {span_routings} when network.span_length_probs allows spans longer than one stage")
    _require(_finite(cli.hop_overhead_ms) and 0 <= cli.hop_overhead_ms <= SCALE, "clients.hop_overhead_ms",
             cli.hop_overhead_ms, f"0 <= overhead <= {SCALE:g} ms")
    _validate_load(cfg)
    _require(1 <= cli.request_classes <= MAX_CLASSES, "clients.request_classes", cli.request_classes,
             f"an integer from 1 to {MAX_CLASSES} (equal-width bins of client alpha)")
    _require(cli.alpha_distribution in ALPHA_DISTRIBUTIONS, "clients.alpha_distribution",
             cli.alpha_distribution, f"one of {ALPHA_DISTRIBUTIONS}")
    params = list(cli.alpha_params)
    if cli.alpha_distribution == "fixed":
        _require(len(params) <= 1 and all(_finite(a) and 0 <= a <= 1 for a in params),
                 "clients.alpha_params", params, "[] (use market.alpha) or [a] with 0 <= a <= 1")
    elif cli.alpha_distribution == "uniform":
        _require(len(params) == 2 and all(_finite(a) for a in params) and 0 <= params[0] <= params[1] <= 1,
                 "clients.alpha_params", params, "[low, high] with 0 <= low <= high <= 1")
    else:
        _require(len(params) == 2 and all(_finite(a) and a > 0 for a in params),
                 "clients.alpha_params", params, "[a, b] with a > 0 and b > 0")

    _require(run.steps >= 0, "run.steps", run.steps, "an integer >= 0")
    _require(run.record_interval >= 1, "run.record_interval", run.record_interval, "an integer >= 1")
    _require(run.replicates >= 1, "run.replicates", run.replicates, "an integer >= 1")
    _require(run.compilation_cache is None or (isinstance(run.compilation_cache, str) and run.compilation_cache != ""),
             "run.compilation_cache", run.compilation_cache, "null, 'auto' or a directory")
    if run.ensemble is not None:
        grid_configs(cfg)  # every member's config must validate
    _require(len(rep.table_steps) > 0, "report.table_steps", list(rep.table_steps),
             "at least one recorded step (the last step is always added to the printed table)")
    for step in rep.table_steps:
        _require(step >= 0 and step % run.record_interval == 0, "report.table_steps", list(rep.table_steps),
                 f"recorded steps: multiples of run.record_interval = {run.record_interval} "
                 "(steps beyond run.steps are left out of the table)")
    _require(rep.reference is None or rep.reference in REFERENCES, "report.reference", rep.reference,
             f"null or one of {REFERENCES}")
    _require(rep.reference is None or net.stages == 4, "report.reference", rep.reference,
             "a reference only for network.stages = 4 (the paper's setup)")
    _require(isinstance(cfg.seed, int) and cfg.seed >= 0, "seed", cfg.seed, "an integer >= 0")
    _validate_ledger(cfg)
    _validate_security(cfg)
    return cfg


def ensemble_grid(cfg: Config) -> dict[str, list[Any]]:
    """``run.ensemble`` by dotted field name, each list checked to be non-empty; the seed is not a
    parameter (``run.replicates`` varies it), nor are the run's own settings. Whether every point of
    the grid is a valid config is :func:`validate`'s check (it builds them)."""
    ensemble = {} if cfg.run.ensemble is None else cfg.run.ensemble
    _require(isinstance(ensemble, dict), "run.ensemble", ensemble,
             "null or a dict of parameter -> list of values, e.g. run.ensemble={alpha:[0.3,0.5]}")
    grid = {}
    for name, values in ensemble.items():
        field_name = f"run.ensemble.{name}"
        _require(isinstance(values, (list, tuple)) and len(values) > 0, field_name, values, "a non-empty list of values")
        try:
            dotted = dotted_name(name, values)
        except ConfigError as error:
            raise ConfigError(field_name, list(values), error.allowed) from None
        _require(dotted != "seed" and not dotted.startswith("run."), field_name, list(values),
                 "a model parameter, not seed (run.replicates varies it) or a run setting")
        _require(dotted not in grid, field_name, list(values), f"each field once ({dotted} is given twice)")
        grid[dotted] = [_plain(value) for value in values]
    return grid


def grid_points(cfg: Config) -> list[dict[str, Any]]:
    """The points of the ``run.ensemble`` grid (:func:`ensemble_grid`), in order: the product of its
    lists, the last varying fastest (one empty point without an ensemble)."""
    grid = ensemble_grid(cfg)
    return [dict(zip(grid, point)) for point in itertools.product(*grid.values())]


def grid_configs(cfg: Config) -> list[Config]:
    """``cfg`` at every point of its ``run.ensemble`` grid, each validated (:func:`with_parameters`),
    with no ensemble of its own."""
    single = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, ensemble=None))
    return [with_parameters(single, point) if point else single for point in grid_points(cfg)]


def _validate_load(cfg: Config) -> None:
    """Capacity and queues, churn and failures (p2pllm_abm/load.py, p2pllm_abm/churn.py)."""
    net, churn, fail = cfg.network, cfg.churn, cfg.failures
    _require(net.step_ms is None or (_finite(net.step_ms) and 0 < net.step_ms <= SCALE), "network.step_ms",
             net.step_ms, f"null (unlimited capacity, the paper) or 0 < step_ms <= {SCALE:g} ms")
    _require(net.capacity is None or (_finite(net.capacity) and 0 < net.capacity <= SCALE), "network.capacity",
             net.capacity, f"null (step_ms / c_i) or 0 < requests per step <= {SCALE:g}")
    _require(net.capacity is None or net.step_ms is not None, "network.capacity", net.capacity,
             "null unless network.step_ms is set (a queue's wait is counted in steps of step_ms)")
    _require(not cfg.clients.load_aware or net.step_ms is not None, "clients.load_aware", cfg.clients.load_aware,
             "false unless network.step_ms is set (without capacity there is no queue to see)")
    _require(_finite(churn.join_rate) and 0 <= churn.join_rate <= SCALE, "churn.join_rate", churn.join_rate,
             f"0 <= expected joins per step <= {SCALE:g}")
    _require(_finite(churn.leave_rate) and 0 <= churn.leave_rate < 1, "churn.leave_rate", churn.leave_rate,
             "0 <= probability per step < 1")
    _require(_finite(churn.headroom) and 0 <= churn.headroom <= 100, "churn.headroom", churn.headroom,
             "0 <= share of network.peers <= 100")
    _require(_finite(fail.rate) and 0 <= fail.rate < 1, "failures.rate", fail.rate, "0 <= probability per step < 1")
    _require(fail.downtime is None or (isinstance(fail.downtime, int) and 1 <= fail.downtime <= 10**6),
             "failures.downtime", fail.downtime, "null (a failed peer never returns) or an integer from 1 to 10^6")
    _require(fail.max_retries is None or (isinstance(fail.max_retries, int) and fail.max_retries >= 0),
             "failures.max_retries", fail.max_retries, "null (no cap) or an integer >= 0")
    security = security_on(cfg)
    _require(not security or (churn.join_rate == 0 and churn.leave_rate == 0), "churn.join_rate", churn.join_rate,
             "0 (and churn.leave_rate 0) with adversaries or verification (behaviours are drawn once, for the "
             "peers at start)")


def _entry(registry: Registry, name: Any) -> Any:
    """The entry ``name`` of ``registry``, or a :class:`ConfigError` naming the field and the names."""
    _require(isinstance(name, str) and name in registry, registry.field, name,
             f"one of {registry.names()} (or a name a plug-in registers: run.plugins)")
    return registry.get(name)


def _validate_rule_params(cfg: Config) -> None:
    """Every built-in price-rule parameter that has a config field (whatever the rule, as always),
    and the chosen rule's parameters in ``market.rule_params`` (no other key)."""
    for rule in price_rules.values():
        for parameter in rule.parameters:
            if parameter.field is not None:
                value = field_value(cfg, parameter.field)
                _require(parameter.allows(value), parameter.field, value, parameter.allowed())
    given = dict(cfg.market.rule_params or {})
    free = {p.name: p for p in price_rules.get(cfg.market.update_rule).parameters if p.field is None}
    for name, value in given.items():
        _require(name in free, f"market.rule_params.{name}", value,
                 f"a parameter of market.update_rule = {cfg.market.update_rule!r}: one of {sorted(free)}")
        _require(free[name].allows(value), f"market.rule_params.{name}", value, free[name].allowed())


def price_rule_options(cfg: Config) -> dict[str, float]:
    """The chosen price rule's parameters by name: a built-in's from its config field, a plug-in's
    from ``market.rule_params`` (its default where absent)."""
    given = dict(cfg.market.rule_params or {})
    return {p.name: float(field_value(cfg, p.field)) if p.field else float(given.get(p.name, p.default))
            for p in price_rules.get(cfg.market.update_rule).parameters}



def configured_traits(adversary: AdversaryConfig, trait: str) -> bool:
    """Whether a behaviour the config names (``behaviour``, or the mix's weighted ones) has ``trait``."""
    names = [name for name, w in adversary.mix.items() if w > 0] if adversary.behaviour == "mix" else [adversary.behaviour]
    return adversary.fraction > 0 and any(getattr(behaviours.get(name), trait) for name in names)


def _validate_security(cfg: Config) -> None:
    adv, ver = cfg.adversary, cfg.verification
    _require(_finite(adv.fraction) and 0.0 <= adv.fraction <= 1.0, "adversary.fraction", adv.fraction, "0 <= fraction <= 1")
    mechanism = _entry(mechanisms, ver.mechanism)
    if adv.fraction == 0 and not mechanism.checks:
        return
    _require(cfg.ledger.enabled, "ledger.enabled", cfg.ledger.enabled,
             "true with adversaries or verification (stake, SLAs and slashing live on the ledger)")
    allowed = (*behaviours.names()[1:], "mix")
    _require(adv.behaviour in allowed, "adversary.behaviour", adv.behaviour, f"one of {allowed}")
    if adv.behaviour == "mix":
        mix, names = dict(adv.mix), behaviours.names()
        _require(len(mix) > 0 and all(name in names for name in mix) and all(_finite(w) and w >= 0 for w in mix.values())
                 and sum(mix.values()) > 0, "adversary.mix", mix, f"weights >= 0 over {names}, not all 0")
    _require(isinstance(adv.counterfactual, bool), "adversary.counterfactual", adv.counterfactual, "true or false")
    for name in ("cheat_probability", "offline_probability", "verifier_skip_probability"):
        _require(_finite(getattr(adv, name)) and 0 <= getattr(adv, name) <= 1, f"adversary.{name}",
                 getattr(adv, name), "a probability in [0, 1]")
    _require(_finite(adv.overclaim_factor) and 0 < adv.overclaim_factor <= 1, "adversary.overclaim_factor",
             adv.overclaim_factor, "0 < factor <= 1 (a peer claims at most its true cost)")
    _require(isinstance(adv.sybil_identities, int) and adv.sybil_identities >= 1, "adversary.sybil_identities",
             adv.sybil_identities, "an integer >= 1")
    for name in ("probability", "inside_sampling", "slash_fraction", "forced_error_rate"):
        _require(_finite(getattr(ver, name)) and 0 <= getattr(ver, name) <= 1, f"verification.{name}",
                 getattr(ver, name), "a number in [0, 1]")
    _require(isinstance(ver.warmup, int) and ver.warmup >= 0, "verification.warmup", ver.warmup, "an integer >= 0")
    _require(_finite(ver.jackpot) and 0 <= ver.jackpot <= _MAX_AMOUNT / cfg.ledger.unit, "verification.jackpot",
             ver.jackpot, "a number >= 0 (price units) whose amount in base units fits the supply")
    audits = [name for name in mechanisms.names() if mechanisms.get(name).audits]
    _require(ver.forced_error_rate == 0 or mechanism.audits, "verification.forced_error_rate", ver.forced_error_rate,
             f"0 with verification.mechanism = {ver.mechanism!r} (forced errors need validators: one of {audits})")
    _require(ver.jackpot == 0 or ver.forced_error_rate > 0, "verification.jackpot", ver.jackpot,
             "0 without forced errors (verification.forced_error_rate > 0)")
    _require(not configured_traits(adv, "skips_checks") or mechanism.audits, "adversary.behaviour", adv.behaviour,
             f"no lazy verifiers with verification.mechanism = {ver.mechanism!r} (it draws no validators: one of "
             f"{audits} does)")
    _require(isinstance(ver.replicas, int) and ver.replicas >= 2, "verification.replicas", ver.replicas, "an integer >= 2")
    _require(isinstance(ver.watchers, int) and ver.watchers >= 1, "verification.watchers", ver.watchers, "an integer >= 1")
    _require(isinstance(ver.challenge_window, int) and ver.challenge_window >= 0, "verification.challenge_window",
             ver.challenge_window, "an integer >= 0")
    _require(ver.fingerprint in FINGERPRINTS, "verification.fingerprint", ver.fingerprint, f"one of {FINGERPRINTS}")
    _require(resolve_fingerprints(ver.fingerprint_profile).is_file(), "verification.fingerprint_profile",
             ver.fingerprint_profile, "a file written by python -m torch_backend.fingerprints (absolute, or in "
             "conf/fingerprints/)")
    _require(ver.slash_amount is None or (isinstance(ver.slash_amount, int) and 0 <= ver.slash_amount <= _MAX_AMOUNT),
             "verification.slash_amount", ver.slash_amount, "null or an integer in [0, 2^62]")
    _require(_finite(ver.compute_price) and ver.compute_price >= 0, "verification.compute_price", ver.compute_price,
             "a finite number >= 0")
    _require(ver.payer in VERIFICATION_PAYERS, "verification.payer", ver.payer, f"one of {VERIFICATION_PAYERS}")


def _validate_ledger(cfg: Config) -> None:
    led = cfg.ledger
    if not led.enabled:
        return
    _require(led.backend in LEDGER_BACKENDS, "ledger.backend", led.backend, f"one of {LEDGER_BACKENDS}")
    for name, allowed in LEDGER_CHOICES.items():
        _require(getattr(led, name) in allowed, f"ledger.{name}", getattr(led, name), f"one of {allowed}")
    for name in ("unit", "slots_per_epoch", "block_capacity"):
        _require(isinstance(getattr(led, name), int) and getattr(led, name) >= 1, f"ledger.{name}",
                 getattr(led, name), "an integer >= 1")
    for name in ("client_endowment", "peer_endowment", "min_stake", "tx_fee", "issuance_per_epoch",
                 "channel_deposit", "cross_shard_delay", "unbonding_delay", "challenge_window"):
        value = getattr(led, name)
        _require(isinstance(value, int) and 0 <= value <= _MAX_AMOUNT, f"ledger.{name}", value,
                 "an integer in [0, 2^62]")
    _require(isinstance(led.sla_term, int) and led.sla_term >= 1, "ledger.sla_term", led.sla_term, "an integer >= 1")
    _require(led.min_stake >= 1, "ledger.min_stake", led.min_stake, "an integer >= 1 (validators need stake)")
    _require(isinstance(led.initial_stake, int) and led.min_stake <= led.initial_stake <= led.peer_endowment,
             "ledger.initial_stake", led.initial_stake,
             f"an integer with ledger.min_stake = {led.min_stake} <= stake <= ledger.peer_endowment = {led.peer_endowment}")
    _require(led.max_effective_stake is None or (isinstance(led.max_effective_stake, int) and led.max_effective_stake >= 1),
             "ledger.max_effective_stake", led.max_effective_stake, "null or an integer >= 1")
    genesis = cfg.clients.count * led.client_endowment + cfg.network.peers * led.peer_endowment
    _require(genesis + led.issuance_per_epoch * (cfg.run.steps // led.slots_per_epoch + 1) <= _MAX_AMOUNT,
             "ledger.client_endowment", led.client_endowment,
             "endowments and issuance whose total supply stays below 2^62 base units")
    for name in ("attestation_rate", "whistleblower_share", "stale_penalty"):
        value = getattr(led, name)
        _require(_finite(value) and 0.0 <= value <= 1.0, f"ledger.{name}", value, "a number in [0, 1]")
    _require(_finite(led.sla_penalty) and led.sla_penalty >= 0, "ledger.sla_penalty", led.sla_penalty,
             "a finite number >= 0")
    _require(_finite(led.price_tick) and led.price_tick >= 0, "ledger.price_tick", led.price_tick,
             "a finite number >= 0")


def to_config(cfg: Config | DictConfig) -> Config:
    """Turn a Hydra ``DictConfig`` (or a ``Config``) into a validated :class:`Config`."""
    if isinstance(cfg, DictConfig):
        plugins = OmegaConf.select(cfg, "run.plugins", default=None)
        validate_plugins(OmegaConf.to_container(plugins) if plugins is not None else [])  # their names are valid below
        for name, value in _leaves(OmegaConf.to_container(cfg, resolve=False)):
            check_field_name(name, value)
        try:
            cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), cfg))
        except OmegaConfBaseException as error:
            key = getattr(error, "full_key", None) or "config"
            raise ConfigError(key, OmegaConf.select(cfg, key, default=None) if key != "config" else None,
                              f"a value of the field's type ({first_line(error)})") from None
    return validate(cfg)


@functools.cache
def parameter_names() -> dict[str, str]:
    """Mesa-style keyword names of the schema's fields, by dotted name: every field whose name no
    other section uses (``alpha`` -> ``market.alpha``, ``peers`` -> ``network.peers``,
    ``update_rule`` -> ``market.update_rule``, ``seed`` -> ``seed``)."""
    dotted: dict[str, list[str]] = {}
    for section, kind in get_type_hints(Config).items():
        for name in [leaf.name for leaf in fields(kind)] if is_dataclass(kind) else [None]:
            dotted.setdefault(name or section, []).append(f"{section}.{name}" if name else section)
    return {name: names[0] for name, names in dotted.items() if len(names) == 1}


def dotted_name(name: str, value: Any) -> str:
    """The dotted field a Mesa-style keyword ``name`` sets, or a :class:`ConfigError` naming the
    choices (a name in several sections) or the nearest field."""
    names = parameter_names()
    if name in names:
        return names[name]
    if "." in name:
        check_field_name(name, value)
        return name
    sections = sorted(key for key in schema_keys() if key.count(".") == 1 and key.endswith(f".{name}"))
    if sections:
        raise ConfigError(name, value, f"a dotted name, one of {sections} (the field is in several sections)")
    nearest = difflib.get_close_matches(name, sorted(names), n=1, cutoff=0.5)
    raise ConfigError(name, value, "a field of the schema (" + (f"did you mean {nearest[0]!r}?" if nearest else
                      "a name such as 'alpha', or a dotted one such as 'market.alpha'") + ")")


def _plain(value: Any) -> Any:
    """``value`` with numpy scalars (``np.linspace``, ``np.arange``) as Python numbers, in lists too."""
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value.item() if getattr(value, "ndim", None) == 0 else value


def with_parameters(cfg: Config, parameters: dict[str, Any]) -> Config:
    """``cfg`` with Mesa-style keyword ``parameters`` set and validated: field names
    (:func:`parameter_names`: ``alpha=0.3``, ``peers=500``) or dotted names
    (``**{"churn.join_rate": 2.0}``, needed where a name is in several sections, e.g. ``enabled``).

    >>> with_parameters(Config(), {"alpha": 0.3, "stages": 8}).network.stages
    8
    """
    merged = OmegaConf.structured(cfg)
    for name, value in parameters.items():
        dotted, value = dotted_name(name, value), _plain(value)
        check_override(dotted, value)
        OmegaConf.update(merged, dotted, value, merge=False)
    return to_config(merged)


def load_config(experiment: str = "paper_table1", overrides: Sequence[str] = ()) -> Config:
    """Compose ``conf/config.yaml`` with ``experiment=<experiment>`` and Hydra ``overrides``.

    >>> cfg = load_config("paper_28", overrides=["seed=3", "market.temperature=2.0"])
    """
    from hydra import compose, initialize_config_dir

    from hydra.errors import HydraException

    check_group_choice("experiment", experiment)
    register_schema()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            dcfg = compose(config_name="config", overrides=[f"experiment={experiment}", *overrides])
    except HydraException as error:  # a type the field cannot hold, an unknown group, a malformed override
        cause = error.__cause__ if isinstance(error.__cause__, OmegaConfBaseException) else error
        key = getattr(cause, "full_key", None) or "overrides"
        given = [o.partition("=")[2] for o in overrides if o.lstrip("+~").partition("=")[0] == key]
        raise ConfigError(key, given[-1] if given else list(overrides),
                          f"overrides Hydra can compose ({first_line(cause)})") from None
    return to_config(dcfg)
