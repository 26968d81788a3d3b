"""Every choice a researcher makes by name, as a registry: name -> the object that carries it.

Five registries: :data:`price_rules` (``market.update_rule``), :data:`routings`
(``clients.routing``), :data:`allocation_rules` (``allocation.rule``), :data:`mechanisms`
(``verification.mechanism``) and :data:`behaviours` (``adversary.behaviour``). Each entry holds
the function(s) the toolkit calls for that choice, its parameters with defaults and allowed ranges
(:class:`Parameter`), what it reads and whether a run with it can be compiled into one call.
The built-ins are registered exactly as a plug-in registers its own: in the module that implements
them, with :meth:`Registry.register`, e.g. ::

    from p2pllm_abm.registries import PriceRule, price_rules

    @price_rules.register("my_rule")
    def _my_rule():
        return PriceRule(update=my_update, parameters=(Parameter("step", 0.5, 0, 1),))

    # or: price_rules.register("my_rule", PriceRule(update=my_update))

Config validation reads the names and parameters from here; nothing else in the toolkit
dispatches on a built-in's name. This module imports nothing of the package (it is the bottom of
the import graph).
"""

from __future__ import annotations

import functools
import importlib
import math
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Callable, Generic, Iterator, Mapping, Sequence, TypeVar


#: market scales (prices, step size, demand, T, costs) and parameters that multiply them stay within
#: [1/MARKET_SCALE, MARKET_SCALE]: float64 keeps the market's arithmetic finite and exact only while they stay
#: within a few orders of magnitude of each other (the config's ranges and the entries' use it)
MARKET_SCALE = 1e6


class RegistryError(ValueError):
    """A name that is not registered, registered twice, or an object of the wrong kind; one line."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


@dataclass(frozen=True)
class Parameter:
    """A numeric parameter of a registry entry: its name, default and allowed closed or open range.
    ``field`` is the config field that holds it (``market.damping``); ``None`` for a plug-in's
    parameters, which live in the choice's parameter dict (``market.rule_params.<name>``)."""

    name: str
    default: float
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False  #: ``low < value`` instead of ``low <= value``
    high_open: bool = False
    field: str | None = None
    doc: str = ""

    def allows(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def allowed(self) -> str:
        """The allowed range in words, for error messages and the docs."""
        lower = "" if self.low == -math.inf else f"{self.low:g} {'<' if self.low_open else '<='} "
        upper = "" if self.high == math.inf else f" {'<' if self.high_open else '<='} {self.high:g}"
        return f"a finite number {lower}{self.name}{upper}" if lower or upper else "a finite number"


@dataclass(frozen=True)
class PriceRule:
    """How peers set prices each tick (paper eq. 4-5 and its alternatives).

    ``update(price, cost, stage, alive, params, n_stages, blocks, options)`` returns every live
    peer's next price before the tick's requests (``options``: this rule's parameters by name, as
    device scalars). A rule that instead learns from what it observes gives ``quote(state, env,
    options)`` (the prices requests see) and ``learn(state, env, quoted, served, options)`` (new prices
    and revenue baselines after the requests)."""

    update: Callable[..., Any] | None = None
    quote: Callable[..., Any] | None = None
    learn: Callable[..., Any] | None = None
    parameters: tuple[Parameter, ...] = ()
    reads_blocks: bool = False  #: needs :class:`~p2pllm_abm.equilibrium.StageBlocks` (goes through stages' peers in turn)
    #: defined at alpha = 0 (a rule that needs a best response is not: demand then ignores prices)
    zero_alpha: bool = False
    #: needs clients' requests (it learns from them) and the peers' own prices on the ledger
    needs_requests: bool = False
    #: usable by :func:`~p2pllm_abm.equilibrium.solve_equilibrium` (a deterministic map of prices)
    solver: bool = True
    #: ``diagnose(price, iterations, cost, stage, alive, params, n_stages, options)``: why the solver did not
    #: converge, as ``(status, message)`` or ``None``
    diagnose: Callable[..., Any] | None = None
    doc: str = ""

    def __post_init__(self) -> None:
        if (self.update is None) == (self.learn is None):
            raise RegistryError("a PriceRule takes exactly one of update (before requests) and learn (after them)")


@dataclass(frozen=True)
class Routing:
    """How a request picks its peers (paper 3.1-3.2). ``per_stage``: one choice per stage
    (``choose(key, env, price, n_stages)`` and ``failover(key, env, price, n_stages)`` give
    ``(clients, n_stages)`` peers); else a whole path by ``scores(key, env, price)`` -> ``(score,
    weight)`` per peer, minimised by the DAG shortest path."""

    per_stage: bool
    choose: Callable[..., Any] | None = None
    failover: Callable[..., Any] | None = None
    scores: Callable[..., Any] | None = None
    spans: bool = False  #: routes peers that serve spans of several stages
    outside_option: bool = False  #: honours ``market.outside_option`` (a per-stage no-purchase choice)
    doc: str = ""

    def __post_init__(self) -> None:
        if self.per_stage and (self.choose is None or self.failover is None):
            raise RegistryError("a per-stage Routing needs choose and failover")
        if not self.per_stage and self.scores is None:
            raise RegistryError("a path Routing needs scores")


@dataclass(frozen=True)
class AllocationRule:
    """Where peers go (paper eq. 7-8). ``moves(model, candidates)`` returns the moves ``(peer, from,
    to)`` of a reallocation's candidates (drawn by the model), in order; ``joins(allocation_config,
    stage_cost, length, stage_start, stage_end, cost, counted, n_stages)`` the first stage of each
    newcomer, one after another; ``fused`` marks the rule whose moves the compiled call also makes
    (:func:`~p2pllm_abm.allocation.reallocation_scan`)."""

    moves: Callable[..., Any]
    joins: Callable[..., Any]
    spans: bool = False  #: moves peers that serve spans of several stages
    fused: bool = False
    doc: str = ""


@dataclass(frozen=True)
class Mechanism:
    """How outputs are checked (paper 4.2). ``check(verifier, draws) -> Checked`` decides, for a
    step's hops, which were caught, which honest ones flagged, which requests got a wrong output,
    the compute the checks re-executed and when slashes land (see
    :mod:`p2pllm_abm.verification`); ``detection(config, fn)`` is the probability that one
    (non-colluding) cheated hop is caught."""

    check: Callable[..., Any]
    detection: Callable[..., float]
    checks: bool = True  #: ``False`` only for ``none``: no check, no referee
    #: ``verification.probability`` sets its detection (so a deterrence threshold in it is reported)
    sampling: bool = False
    warmup: bool = False  #: checks every one of a peer's first ``verification.warmup`` hops
    #: draws a validator per check (:meth:`Verifier.audit <p2pllm_abm.verification.Verifier.audit>`), so
    #: lazy verifiers and forced errors apply to it
    audits: bool = False
    doc: str = ""


@dataclass(frozen=True)
class Behaviour:
    """What a dishonest peer (or client) does (paper 4.2). ``cheats(u, q)``: given a uniform draw per
    hop and ``adversary.cheat_probability``, whether each hop's output is wrong on purpose (``None``:
    never); ``drops(u, p)`` likewise for dropped hops (``adversary.offline_probability``)."""

    cheats: Callable[..., Any] | None = None
    drops: Callable[..., Any] | None = None
    colludes: bool = False  #: all such peers are one owner; their wrong outputs agree
    #: colludes, and coordinates within a redundancy committee: cheats only when every replica is a
    #: coordinating peer (which then returns the same wrong output), else serves honestly
    coordinates: bool = False
    sybil: bool = False  #: ``adversary.sybil_identities`` identities per owner, each bonding ``ledger.min_stake``
    overclaims: bool = False  #: registers ``adversary.overclaim_factor`` x its true cost
    patient: bool = False  #: serves honestly until it has served ``verification.warmup`` hops
    #: chooses its cheat rate each step as a best response to the detection risk it has observed
    #: (:meth:`~p2pllm_abm.security.SecurityPhase.adaptive_rates`) instead of ``adversary.cheat_probability``
    adapts: bool = False
    #: as a spot check's validator, reports "ok" without re-executing with ``adversary.verifier_skip_probability``
    skips_checks: bool = False
    client: bool = False  #: a client's behaviour (its share of a mix applies to clients)
    doc: str = ""


T = TypeVar("T")


class Registry(Generic[T], Mapping[str, T]):
    """Name -> entry of one kind, in registration order."""

    def __init__(self, kind: str, entry_type: type, field: str) -> None:
        self.kind, self.entry_type, self.field = kind, entry_type, field
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T | None = None) -> Any:
        """Register ``entry`` under ``name``; without ``entry``, a decorator for a function that
        takes no argument and returns the entry (the function is returned unchanged)."""
        if entry is None:
            def decorator(make: Callable[[], T]) -> Callable[[], T]:
                self.register(name, make())
                return make
            return decorator
        if not isinstance(name, str) or not name.isidentifier():
            raise RegistryError(f"{self.kind} name {name!r} is invalid: allowed a Python identifier")
        if name in self._entries:
            raise RegistryError(f"{self.kind} {name!r} is registered already: allowed a new name, not one of "
                                f"{self.names()}")
        if not isinstance(entry, self.entry_type):
            raise RegistryError(f"{self.kind} {name!r}: {type(entry).__name__} is the wrong kind: allowed a "
                                f"p2pllm_abm.registries.{self.entry_type.__name__}")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:  # type: ignore[override]
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise RegistryError(f"{self.field} = {name!r} is invalid: allowed one of {self.names()} (or a name a "
                                "plug-in registers: run.plugins)") from None

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"<{self.kind} registry: {', '.join(self._entries)}>"


price_rules: Registry[PriceRule] = Registry("price rule", PriceRule, "market.update_rule")
routings: Registry[Routing] = Registry("routing", Routing, "clients.routing")
allocation_rules: Registry[AllocationRule] = Registry("allocation rule", AllocationRule, "allocation.rule")
mechanisms: Registry[Mechanism] = Registry("verification mechanism", Mechanism, "verification.mechanism")
behaviours: Registry[Behaviour] = Registry("behaviour", Behaviour, "adversary.behaviour")

#: every registry by its short name
REGISTRIES: Mapping[str, Registry] = {"price_rules": price_rules, "routings": routings,
                                      "allocation_rules": allocation_rules, "mechanisms": mechanisms,
                                      "behaviours": behaviours}

#: the entry-point group an installed package names its plug-in modules in (``pyproject.toml``:
#: ``[project.entry-points."p2pllm_abm.plugins"] my_rules = "my_package.rules"``)
ENTRY_POINT_GROUP = "p2pllm_abm.plugins"
_loaded: set[str] = set()


class PluginError(RegistryError):
    """A plug-in module that cannot be imported, or that fails while it registers."""

    def __init__(self, module: str, reason: str) -> None:
        self.module, self.reason = module, reason
        super().__init__(f"{module}: {reason}")

    def __reduce__(self):
        return PluginError, (self.module, self.reason)


def load_plugins(modules: Sequence[str] = ()) -> None:
    """Import every module of the entry-point group :data:`ENTRY_POINT_GROUP` (the installed packages
    are read once per process), then each of ``modules`` (``run.plugins``); importing a plug-in module
    registers its entries. A module already imported is not imported again, so a plug-in registers
    its names once."""
    for name, module in _entry_point_modules():
        _import(module, f"entry point {name!r}")
    for module in modules:
        _import(module, "run.plugins")


@functools.cache
def _entry_point_modules() -> tuple[tuple[str, str], ...]:
    return tuple((point.name, point.value.partition(":")[0]) for point in entry_points(group=ENTRY_POINT_GROUP))


def _import(module: str, source: str) -> None:
    if module in _loaded:
        return
    if not isinstance(module, str) or not all(part.isidentifier() for part in module.split(".")):
        raise PluginError(repr(module), f"{source} names a module: allowed a dotted module name (my_package.rules)")
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name and module.startswith(error.name):
            raise PluginError(module, f"{source} names no module Python can import (is it installed, or on "
                                      "PYTHONPATH?)") from None
        raise PluginError(module, f"importing it failed: {type(error).__name__}: {error}") from None
    except RegistryError as error:
        raise PluginError(module, f"registering failed: {error}") from None
    except Exception as error:  # a plug-in's own bug: say where, in one line
        raise PluginError(module, f"importing it failed: {type(error).__name__}: {error}") from None
    _loaded.add(module)
