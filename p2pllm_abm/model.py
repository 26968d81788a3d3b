"""The P2P-LLM network as a Mesa model (paper section 5.1).

Each step runs the paper's phases in order, after a membership phase (with churn or failures:
peers back from downtime, leaving, joining, and those that will fail mid-request drawn;
:mod:`p2pllm_abm.churn`):

1. requests: every client's request is routed (``clients.routing``: per-stage logit choice, whole
   paths with latency, or Petals' min-latency paths), queues at peers with capacity, fails over
   from peers that fail, and pays the peers that served it (:mod:`p2pllm_abm.load`);
2. prices: every peer updates its price (``market.update_rule``; by default the paper's
   gradient ascent, eq. 5);
3. reallocation, every ``allocation.period`` steps (eq. 7-8, or Petals' rebalancing; a mover is
   offline ``allocation.reload_steps`` steps);
4. contracts, with ``ledger.enabled``: the step's payments settled on the ledger (SLA terms,
   escrows or channel updates), moved prices posted, the slot's blocks produced
   (:class:`~p2pllm_abm.ledger.phase.MarketLedger`); peers whose stake fell below the minimum
   leave the market;
5. metrics, every ``run.record_interval`` steps, with each stage's Nash-gap certificate
   (:func:`~p2pllm_abm.equilibrium.nash_gap`) and each request class's realised path price and
   time.

Phases 1-3 are jitted JAX over all peers. Where no phase needs the host between records (no ledger,
churn, failures or adversaries; eq. 7-8 reallocation of single-stage peers; :attr:`~P2PLLMModel.fusable`),
:meth:`P2PLLMModel.run` runs every step up to the next record in one compiled call
(:func:`~p2pllm_abm.dynamics.run_steps`: ticks, reallocation with its candidates drawn beforehand,
and the record's certificate and welfare), the calls back to back while the host takes the records;
otherwise it fuses the consecutive steps between two steps that need phases 3-5. Either
way it gives the same results, bit for bit, as calling :meth:`~P2PLLMModel.step` repeatedly. With
the ledger on, the fused call also
returns every tick's paid hops and the contracts phase settles them step by step afterwards
(:meth:`~P2PLLMModel._settled_ticks`; a peer leaving the market mid-chunk makes it recompute the
market up to that step, so results still equal stepping); with ``ledger.registry_view=confirmed``
every tick reads the registry the previous step's blocks left, and with churn or failures peers
change every step, so ticks run one at a time.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import signal
import threading
from collections.abc import Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import mesa
import numpy as np
import pandas as pd
from omegaconf import DictConfig
from tqdm.auto import tqdm

from .agents import ClientAgent, PeerAgent
from .behaviours import Behaviours, assign
from .allocation import move_candidates, share_weight, turns_to_moves
from .churn import failing, joining_starts, leaving, newcomers
from .config import (ClientsConfig, Config, ConfigError, dotted_name, most_extreme_field, price_rule_options,
                     security_on, to_config, with_parameters)
from .cores import SMALL_MARKET_PEERS, separate_cores
from .dynamics import (Environment, Geometry, MarketState, Reallocation, StepsDone, all_finite, device_scalars,
                       grow_state, initial_state, paid_tick_jit, reset_rows, reset_window, run_paid_ticks, run_steps,
                       run_ticks)
from .load import peer_capacity
from .economics import market_params
from .equilibrium import StageBlocks, padded_size, stage_blocks
from .ledger import MarketLedger
from .metrics import (EVENT_KINDS, LEDGER_PEER_COLUMNS, PEER_COLUMNS, Columns, PeerTableCollector, RequestClasses,
                      ledger_metric_rows, load_statistics, metric_rows, model_reporters, reported_columns,
                      stage_statistics, statistics_frame)
from .network import PeerTable
from .pareto import ParetoFrontier, pareto_paths
from .registries import allocation_rules, price_rules, routings
from .resources import check_memory
from .routing import best_path
from .security import SecurityPhase
from .threefry import register_cpu_lowering
from .welfare import record_measures


#: market ticks dispatched and not yet checked at most (each holds its start state and environment)
MAX_UNSETTLED = 8


class FusedCall(NamedTuple):
    """A :func:`~p2pllm_abm.dynamics.run_steps` call's host side (:meth:`P2PLLMModel.fused_call`)."""

    steps: int  #: steps asked for
    events: list[int]  #: the steps that reallocate
    candidates: list[np.ndarray]  #: each event's candidates, in turn order
    reallocation: Reallocation | None  #: the call's reallocation input (None: off)
    drawn_from: dict  #: the generator's state before the candidates were drawn


class Dispatched(NamedTuple):
    """Market ticks dispatched but not yet checked (:meth:`P2PLLMModel._settle`)."""

    start: MarketState  #: the state they started from
    env: Environment  #: what they read
    first_step: int
    ticks: int
    finite: jax.Array  #: whether their final prices and revenues are finite (on the device)


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Run the block with Ctrl-C (SIGINT) deferred to its end, so that what it appends stays
    together; outside the main thread (where signals cannot be handled) it just runs the block."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: received.append(number))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:  # delivered again, to the handler the process had
        signal.raise_signal(signal.SIGINT)


_frozen = 0  # open long_lived_objects_frozen blocks


@contextlib.contextmanager
def long_lived_objects_frozen() -> Iterator[None]:
    """Run the block with the objects that exist when it starts left out of the garbage collector's
    scans (``gc.freeze``; moved back when the outermost block ends, so that garbage among them is
    still found later). The modules' functions, the model and its agents outlive a run, and a full
    collection scanned them all every few records: 170 ms each with 64 replicates of Table 1,
    about a sixth of the run."""
    global _frozen
    if _frozen == 0:
        gc.freeze()
    _frozen += 1
    try:
        yield
    finally:
        _frozen -= 1
        if _frozen == 0:
            gc.unfreeze()


#: a record's device part in one call (:func:`~p2pllm_abm.welfare.record_measures`)
measure_record = jax.jit(record_measures, static_argnames=("n_stages", "with_welfare"))


def spare_rows(cfg: Config) -> int:
    """Rows beyond ``network.peers`` for joining peers: ``churn.headroom`` of the peers (the table grows
    by a tenth when they run out); with the ledger on, whose accounts are opened at genesis, also
    enough for the run's expected joins plus six standard deviations (joins beyond are refused and
    counted as ``joins_refused``)."""
    rows = int(np.ceil(cfg.churn.headroom * cfg.network.peers))
    if cfg.ledger.enabled:
        expected = cfg.churn.join_rate * cfg.run.steps
        rows = max(rows, int(np.ceil(expected + 6 * np.sqrt(expected))) + 16)
    return rows


def draw_client_alpha(clients: ClientsConfig, market_alpha: float, rng: np.random.Generator) -> np.ndarray:
    """Each client's price preference alpha from ``clients.alpha_distribution``."""
    params = list(clients.alpha_params)
    if clients.alpha_distribution == "fixed":
        return np.full(clients.count, params[0] if params else market_alpha)
    if clients.alpha_distribution == "uniform":
        return rng.uniform(params[0], params[1], size=clients.count)
    return rng.beta(params[0], params[1], size=clients.count)


def model_config(config: Config | DictConfig | None, rng: Any, parameters: dict[str, Any]) -> Config:
    """The run's :class:`Config`: ``config`` (default: the schema's defaults) with Mesa-style keyword
    ``parameters`` (:func:`~p2pllm_abm.config.with_parameters`) and Mesa's ``rng=`` (an int seed,
    the same as ``seed=``). A model built the Mesa way, without ``config``, records every step
    unless ``record_interval`` is given (``mesa.batch_run`` reads the DataCollector step by step)
    and, without ``seed`` or ``rng``, draws its seed from fresh entropy as Mesa's models do (kept
    in ``config.seed``, so the run can be repeated)."""
    given = {dotted_name(name, value) for name, value in parameters.items()}
    if rng is not None:
        if "seed" in given:
            raise ConfigError("rng", rng, "either seed= or rng= (the same seed), not both")
        if isinstance(rng, bool) or not isinstance(rng, (int, np.integer)) or rng < 0:
            raise ConfigError("rng", rng, "an int seed >= 0 (Mesa's rng=, the same as seed=)")
        parameters, given = {**parameters, "seed": int(rng)}, given | {"seed"}
    if config is None:
        mesa_way = {"run.record_interval": 1, "seed": int(np.random.SeedSequence().generate_state(1)[0])}
        parameters = {**{name: value for name, value in mesa_way.items() if name not in given}, **parameters}
    cfg = to_config(config if config is not None else Config())
    return with_parameters(cfg, parameters) if parameters else cfg


class P2PLLMModel(mesa.Model):
    """Peers competing on price per stage and moving between stages; clients routing requests.

    >>> model = P2PLLMModel(load_config("paper_28", overrides=["seed=3"]))
    >>> model.run(1000)
    >>> model.datacollector.get_model_vars_dataframe()

    or the Mesa way, with the config's field names as keywords (:func:`model_config`):

    >>> model = P2PLLMModel(alpha=0.3, peers=500, stages=8, seed=1)
    >>> mesa.batch_run(P2PLLMModel, parameters={"alpha": [0.3, 0.6], "seed": range(4)}, max_steps=100)

    One seed (``config.seed``) decides the network, the clients, the request noise and the
    reallocation order.
    """

    def __init__(self, config: Config | DictConfig | None = None, *, rng: int | None = None, **kwargs: Any) -> None:
        cfg = model_config(config, rng, kwargs)  # (named kwargs: Mesa's SolaraViz checks for that name)
        check_memory(cfg)  # before anything is allocated
        register_cpu_lowering()  # the ticks' random bits, the same, in fewer CPU kernels (p2pllm_abm.threefry)
        seeds = np.random.SeedSequence(cfg.seed).spawn(7)
        network_seed, dynamics_seed, client_seed, noise_seed, ledger_seed, adversary_seed, churn_seed = seeds
        super().__init__(rng=np.random.default_rng(dynamics_seed))
        self.config = cfg
        self.peers = PeerTable.from_config(cfg.network, np.random.default_rng(network_seed))
        self.churn_rng = np.random.default_rng(churn_seed)  #: joins, leaves and failures
        if cfg.churn.join_rate > 0:  # spare rows, so that joins rarely change the arrays' shapes
            self.peers.grow(spare_rows(cfg))
        client_rng = np.random.default_rng(client_seed)
        self.client_alpha = draw_client_alpha(cfg.clients, cfg.market.alpha, client_rng)
        self.client_position = client_rng.uniform(0.0, 1.0, size=(cfg.clients.count, 2))
        self.request_classes = RequestClasses.from_alpha(self.client_alpha, cfg.clients.request_classes)
        values, group = np.unique(self.client_alpha, return_inverse=True)
        #: clients sharing an alpha share eq. 3's probabilities (Environment.alpha_values)
        self._alpha_groups = {} if len(values) == len(self.client_alpha) else {
            "alpha_values": jnp.asarray(values), "alpha_group": jnp.asarray(np.eye(len(values))[group])}
        #: the clients on the device once (they never change; churn rebuilds the environment every step)
        self._clients = {"alpha": jnp.asarray(self.client_alpha), "position": jnp.asarray(self.client_position),
                         "class": jnp.asarray(self.request_classes.one_hot)}
        rows = np.flatnonzero(self.peers.present)
        self._peer_unique_ids = np.full(len(self.peers), -1, dtype=np.int64)  #: see peer_unique_ids
        self._agents_by_row: dict[int, PeerAgent] = {}
        #: (rows, peer ids) of the peers that joined since the agents were last brought in line
        self._joined: list[tuple[np.ndarray, np.ndarray]] = [(rows, self.peers.peer_id[rows].copy())]
        self._sync_agents()
        ClientAgent.create_agents(self, cfg.clients.count, index=list(range(cfg.clients.count)))
        self._next_peer_id = len(rows)
        #: peers reloading after a move (down, but counted by Petals' block selection as joining)
        self.reloading = np.zeros(len(self.peers), dtype=bool)
        self.failing = None if cfg.failures.rate == 0 else np.zeros(len(self.peers), dtype=bool)
        self._block_width = 1  #: the widest stage block so far (the jitted steps' shapes only grow)
        self._events: list[tuple[int, str, np.ndarray, np.ndarray]] = []  #: (step, kind, peer ids, stages)
        self.switch_fees = np.zeros(len(self.peers))  #: cumulative allocation.switch_fee paid per row
        self.churn_counts = dict.fromkeys((*EVENT_KINDS, "joins_refused"), 0)  #: events so far, by kind

        #: who is dishonest and how (None in an honest run without verification)
        self.behaviours: Behaviours | None = None
        self.security: SecurityPhase | None = None
        adversary_rng = np.random.default_rng(adversary_seed)
        if security_on(cfg):
            self.behaviours = assign(cfg.adversary, len(self.peers), cfg.clients.count, adversary_rng)

        mkt = cfg.market
        self.market_params = market_params(mkt)
        key = jax.random.key(int(noise_seed.generate_state(1)[0]))
        self._state = initial_state(jnp.asarray(self.peers.price), key, self.request_classes.count,
                                    cfg.clients.count, self.peers.n_stages)
        self._environment: Environment | None = device_scalars(self._make_environment())  #: None: stale (see environment)
        self._unsettled: list[Dispatched] = []  #: ticks dispatched, not yet checked (see _settle)
        self._in_run = False  #: inside run(), which settles the dispatched ticks when it ends
        self.moves = 0  #: peers moved by reallocation so far
        self.ledger: MarketLedger | None = None  #: the cryptoeconomic layer (ledger.enabled)
        self._paid = None  #: the last tick's paid hops and quoted prices, for the contracts phase
        self._failed_hops = None  #: the last tick's failed hops (with failures and the ledger on)
        if cfg.ledger.enabled:
            led = cfg.ledger
            self.ledger = MarketLedger(
                led, self.peers, cfg.clients.count, seed=int(ledger_seed.generate_state(1)[0]),
                stake=None if self.behaviours is None else self.behaviours.registration_stake(led.initial_stake,
                                                                                              led.min_stake),
                claimed_cost=self.claimed_cost,
                stale_clients=None if self.behaviours is None else self.behaviours.stale_client)
            if self.behaviours is not None:
                self.security = SecurityPhase(cfg, self.behaviours, self.ledger, adversary_rng)
            self.peers.update_ledger_columns(self.ledger.peer_columns())
            periods = [cfg.run.record_interval] + ([cfg.allocation.period] if cfg.allocation.enabled else [])
            self._chunk_length = min(periods)  #: the compiled scan's length (the longest chunk)

        if self.behaviours is not None:
            self.peers.behaviour = self.behaviours.names()
        columns = (PEER_COLUMNS + (LEDGER_PEER_COLUMNS if self.ledger else ())
                   + (("behaviour",) if self.behaviours is not None else ())
                   + (("utilisation",) if cfg.network.step_ms is not None else ()))
        self.datacollector = PeerTableCollector(model_reporters(self.peers.n_stages, self.request_classes.count),
                                                columns)
        self._records: list[tuple[int, Columns, Columns]] = []  #: (step, stage, class statistics)
        self._record_rows: tuple[int, pd.DataFrame | None] = (0, None)  #: see _recorded_rows
        self._last_frames: tuple[int, tuple[pd.DataFrame, pd.DataFrame] | None] = (0, None)  #: see stage_stats
        self._metric_rows: list[pd.DataFrame] = []  #: the ledger's and security's metrics rows
        self._record()

    @property
    def claimed_cost(self) -> np.ndarray:
        """The c_i clients weigh (eq. 1) and peers register: overclaimers' claims, else the true cost."""
        if self.behaviours is None:
            return self.peers.cost
        return self.behaviours.claimed_cost(self.peers.cost, self.config.adversary.overclaim_factor)

    @property
    def dynamic(self) -> bool:
        """Whether peers join, leave or fail (then every step runs the membership phase)."""
        churn = self.config.churn
        return churn.join_rate > 0 or churn.leave_rate > 0 or self.failing is not None

    # -- phases ---------------------------------------------------------------------------------
    def step(self) -> None:
        """One step: membership (joins, leaves, failures; :mod:`p2pllm_abm.churn`), requests and
        prices, then reallocation, contracts and metrics when due."""
        self.membership_phase()
        self._market_ticks(1, first_step=self.steps)  # Mesa has counted this step already
        self._after_tick()
        self._after_market()
        if not self._in_run:  # called on its own: the table shows this step's market
            self._settle()

    def membership_phase(self) -> None:
        """Before the step's requests: down peers whose time has come are back, peers leave (churn),
        newcomers join and take their stages, and the peers that will fail during this step's
        requests are drawn. Only rebuilds the market's environment when something changed."""
        peers, cfg = self.peers, self.config
        back = np.flatnonzero(peers.present & ~peers.alive & (peers.down_until > 0) & (peers.down_until <= self.steps))
        if len(back):
            peers.alive[back], peers.down_until[back], self.reloading[back] = True, 0, False
            self._log("recover", back)
        changed = len(back) > 0
        if self.dynamic:
            gone = leaving(peers.present, cfg.churn.leave_rate, self.churn_rng)
            if len(gone):
                self._remove_peers(gone, "leave")
            arrivals = newcomers(cfg, self.churn_rng)
            if len(arrivals.length):
                self._add_peers(arrivals)
            changed = changed or len(gone) > 0 or len(arrivals.length) > 0
        if self.failing is not None:
            self.failing = failing(peers.alive, cfg.failures.rate, self.churn_rng)
            changed = True
        if changed:
            self._environment = None  # rebuilt when next needed

    def reallocation_phase(self) -> None:
        """Phase 3: a seeded random share of live peers consider a move, one after another: to their
        eq.-8 stage (``allocation.rule = market``; with stage-dependent costs, eq. 7-8 with
        ``c_i(s)``), or where Petals' rebalancing check sends them (``petals``). A peer that moved
        is offline ``allocation.reload_steps`` steps and pays ``allocation.switch_fee``."""
        alloc = self.config.allocation
        candidates = move_candidates(self.peers.alive, alloc.move_fraction, self.rng)
        self._apply_moves(allocation_rules.get(alloc.rule).moves(self, candidates), self.steps)

    def _apply_moves(self, moves: list[tuple[int, int, int]], step: int) -> None:
        """Phase 3's moves ``(peer, from, to)`` at ``step``: spans shifted, costs, switch fees, reloads,
        the events log."""
        alloc, peers = self.config.allocation, self.peers
        if not moves:
            return
        moved = np.array([peer for peer, _, _ in moves])
        target = np.array([to for _, _, to in moves])
        length = peers.stage_end[moved] - peers.stage_start[moved]
        peers.stage_start[moved], peers.stage_end[moved] = target, target + length
        peers.cost[moved] = peers.span_cost(target, target + length, moved)
        self.switch_fees[moved] += alloc.switch_fee
        if alloc.reload_steps > 0:
            peers.alive[moved], peers.down_until[moved] = False, step + alloc.reload_steps + 1
            self.reloading[moved] = True
            if self.config.network.step_ms is not None:  # their queues are lost
                self._state = reset_rows(self._state, self._mask(moved), 0.0, fields=("backlog",))
        self._log("move", moved, step)
        self._environment = None  # rebuilt when next needed
        self.moves += len(moves)

    def contracts_phase(self) -> bool:
        """Phase 4 (paper 5.1, "create new contracts"): with the ledger on, settle this step's paid
        hops, post prices and produce the slot's blocks; peers that lost their registration
        leave the market. Returns whether any left."""
        if self.ledger is None:
            return False
        paid, quoted = self._paid
        failed = commitments = None
        if self.security is not None:
            client, column, peer = self.ledger.paid_hops(paid)
            position = column - (paid < 0).sum(axis=1)[client]  # paths are right-aligned
            failed, commitments = self.security.step(self.steps, client, position, peer, self.peers)
        self.ledger.settle(self.steps, paid, quoted, self.peers, self.client_position, failed, commitments)
        if self._failed_hops is not None:
            self.ledger.penalise_failed(self.steps, self._failed_hops, quoted, self.peers)
        exited = self.ledger.advance(self.peers.price, self.peers.alive)
        if len(exited):
            self.peers.alive[exited], self.peers.down_until[exited] = False, 0  # out of the market for good
            self._environment = None  # rebuilt when next needed
        return len(exited) > 0

    # -- membership -----------------------------------------------------------------------------
    def _add_peers(self, arrivals) -> None:
        """Newcomers take free rows (the arrays grow by a tenth, at least 16 rows, when none is left),
        their stages by the allocation rule, a PeerAgent each, and fresh market state at ``network.initial_price``."""
        peers, cfg = self.peers, self.config
        free = self._free_rows()
        if len(free) < len(arrivals.length) and self.ledger is None:
            self._grow(max(len(arrivals.length) - len(free), int(np.ceil(0.1 * len(peers))), 16))
            free = self._free_rows()
        if len(free) < len(arrivals.length):  # the ledger's accounts are fixed: no more rows
            self.churn_counts["joins_refused"] += len(arrivals.length) - len(free)
            arrivals = type(arrivals)(*(values[: len(free)] for values in arrivals))
        rows = free[: len(arrivals.length)]
        if not len(rows):
            return
        start = joining_starts(cfg, arrivals, peers.stage_start, peers.stage_end, peers.cost,
                               peers.alive | self.reloading, self.churn_rng)
        length = np.minimum(arrivals.length, peers.n_stages - start)
        peers.stage_cost[rows] = arrivals.stage_cost
        peers.stage_start[rows], peers.stage_end[rows] = start, start + length
        peers.cost[rows] = peers.span_cost(start, start + length, rows)
        peers.position[rows] = arrivals.position
        peers.present[rows], peers.alive[rows], peers.down_until[rows] = True, True, 0
        peers.peer_id[rows] = self._next_peer_id + np.arange(len(rows))
        self._next_peer_id += len(rows)
        self.switch_fees[rows] = 0.0
        self._joined.append((rows, peers.peer_id[rows].copy()))  # their agents: _sync_agents
        self._state = reset_rows(self._state, self._mask(rows), float(cfg.network.initial_price))
        if self.ledger is not None:
            self._sync_peers()  # the newcomers' prices, which they register
            self.ledger.join(rows, peers)
        self._log("join", rows)

    def _sync_agents(self) -> None:
        """Bring the PeerAgents in line with the table: an agent for every peer that joined since
        the last call and is still present, in the order they joined. Called whenever agents are
        looked at (``agents``, ``agents_by_type``, ``peer_unique_ids``, each record), so a peer
        that joins and leaves unseen costs no Mesa agent; it still takes its ``unique_id``, unused,
        so that ids do not depend on when anyone looked."""
        if not self._joined:
            return
        rows, peer_ids = (np.concatenate(values) for values in zip(*self._joined))
        self._joined = []
        still_here = self.peers.present[rows] & (self.peers.peer_id[rows] == peer_ids)
        unique_ids = PeerAgent._ids[self]  # Mesa's counter of this model's agent ids
        for row, here in zip(rows.tolist(), still_here.tolist()):
            if here:
                agent = PeerAgent(self, row)
                self._peer_unique_ids[row] = agent.unique_id
                self._agents_by_row[row] = agent
            else:
                next(unique_ids)

    @property
    def agents(self) -> mesa.agent.AgentSet:
        """Mesa's agents: the present peers' PeerAgents and the ClientAgents."""
        self._sync_agents()
        return super().agents

    @property
    def agents_by_type(self) -> dict[type[mesa.Agent], mesa.agent.AgentSet]:
        """Mesa's agents by type (``model.agents_by_type[PeerAgent]``: the present peers)."""
        self._sync_agents()
        return super().agents_by_type

    @property
    def peer_unique_ids(self) -> np.ndarray:
        """Each row's PeerAgent's ``unique_id`` (-1: a free row)."""
        self._sync_agents()
        return self._peer_unique_ids

    def _mask(self, rows: np.ndarray) -> jax.Array:
        """Rows ``rows`` as a mask over the table."""
        mask = np.zeros(len(self.peers), dtype=bool)
        mask[rows] = True
        return jnp.asarray(mask)

    def _free_rows(self) -> np.ndarray:
        """Rows a newcomer may take: any row without a peer, or with the ledger on (a row is a ledger
        account) only rows no peer has held yet."""
        free = ~self.peers.present
        return np.flatnonzero(free & (self.peers.peer_id < 0) if self.ledger is not None else free)

    def _remove_peers(self, rows: np.ndarray, kind: str) -> None:
        """Peers ``rows`` leave for good: out of the market, their agents removed, their rows free."""
        self._log(kind, rows)
        if self.ledger is not None:
            self.ledger.leave(rows)
        self.peers.present[rows], self.peers.alive[rows], self.peers.down_until[rows] = False, False, 0
        self.reloading[rows] = False
        for row in rows.tolist():
            agent = self._agents_by_row.pop(row, None)  # None: joined since the agents were last synced
            if agent is not None:
                agent.remove()
        self._peer_unique_ids[rows] = -1
        if self.config.network.step_ms is not None:  # their queues are lost
            self._state = reset_rows(self._state, self._mask(rows), 0.0, fields=("backlog",))

    def _grow(self, rows: int) -> None:
        """Add ``rows`` free rows to the table, the model's per-peer arrays and the market state (a
        new array shape: the jitted step compiles once more)."""
        self.peers.grow(rows)
        pad = lambda values, fill: np.concatenate([values, np.full(rows, fill, dtype=values.dtype)])  # noqa: E731
        self._peer_unique_ids, self.reloading = pad(self._peer_unique_ids, -1), pad(self.reloading, False)
        self.switch_fees = pad(self.switch_fees, 0.0)
        if self.failing is not None:
            self.failing = pad(self.failing, False)
        self._state = grow_state(self._state, rows)

    def _after_tick(self) -> None:
        """Peers that failed during this step's requests go down (for good with ``failures.downtime``
        null)."""
        if self.failing is None or not self.failing.any():
            return
        failed = np.flatnonzero(self.failing)
        downtime = self.config.failures.downtime
        if downtime is None:
            self._remove_peers(failed, "fail")
        else:
            self._log("fail", failed)
            self.peers.alive[failed], self.peers.down_until[failed] = False, self.steps + downtime + 1
        self.failing = np.zeros(len(self.peers), dtype=bool)
        self._environment = None  # rebuilt when next needed

    def _log(self, kind: str, rows: np.ndarray, step: int | None = None) -> None:
        """Record events ``kind`` (:data:`~p2pllm_abm.metrics.EVENT_KINDS`) of peers ``rows`` at ``step``
        (default: this step)."""
        self.churn_counts[kind] += len(rows)
        self._events.append((self.steps if step is None else step, kind, self.peers.peer_id[rows].copy(),
                             self.peers.stage[rows].copy()))

    def events_frame(self) -> pd.DataFrame:
        """Joins, leaves, failures, recoveries and moves: one row per peer and event (``step``,
        ``event``, ``peer_id``, ``stage`` where it was or went)."""
        step, kind, peer, stage = zip(*self._events) if self._events else ((), (), (), ())
        sizes = [len(ids) for ids in peer]
        return pd.DataFrame({"step": np.repeat(np.asarray(step, dtype=np.int64), sizes),
                             "event": np.repeat(np.asarray(kind, dtype=object), sizes),
                             "peer_id": np.concatenate([np.zeros(0, np.int64), *peer]).astype(np.int64),
                             "stage": np.concatenate([np.zeros(0, np.int64), *stage]).astype(np.int64)})

    # -- running --------------------------------------------------------------------------------
    def run(self, steps: int, progress: bool = False) -> None:
        """Advance ``steps`` steps (fusing the ones with no reallocation or recording), record
        the last step, and show a progress bar when ``progress``."""
        if steps < 0:
            raise ValueError(f"steps = {steps} is invalid: allowed steps >= 0")
        end = self.steps + steps
        self._in_run = True
        separate = (self.fusable and self.config.run.separate_cores and self.config.clients.count > 0
                    and self.config.network.peers <= SMALL_MARKET_PEERS)
        with long_lived_objects_frozen(), separate_cores(separate), \
                tqdm(total=steps, disable=not progress, unit="step", desc="p2pllm-sim") as bar:
            try:
                (self._run_fused if self.fusable else self._run_until)(end, bar)
            finally:
                self._in_run = False
        self._settle()
        self.record_if_due(last=True)

    def record_if_due(self, last: bool = False) -> None:
        """Record the current step when it is due (a multiple of ``run.record_interval``; with
        ``last``, any step: a run's last) and not recorded yet."""
        if self.record_due(last):
            self._record()

    def record_due(self, last: bool = False) -> bool:
        """Whether :meth:`record_if_due` would record now."""
        return self._recorded_step != self.steps and (last or self.steps % self.config.run.record_interval == 0)

    @functools.cached_property
    def fusable(self) -> bool:
        """Whether :meth:`run` compiles everything between two records into one call
        (:func:`~p2pllm_abm.dynamics.run_steps`): no ledger, no churn or failures, no adversaries
        or verification, and reallocation (if on) by eq. 7-8 of single-stage peers whose cost does
        not depend on the stage, with no reload time, under per-stage routing."""
        cfg, peers = self.config, self.peers
        alloc = cfg.allocation
        host_phases = cfg.ledger.enabled or self.dynamic or security_on(cfg)
        compiled_moves = (not alloc.enabled
                          or (allocation_rules.get(alloc.rule).fused and alloc.reload_steps == 0
                              and routings.get(cfg.clients.routing).per_stage
                              and cfg.network.cost_source != "profile"
                              and bool(np.all(peers.stage_end - peers.stage_start == 1))))
        return not host_phases and compiled_moves

    def _run_fused(self, end: int, bar: tqdm) -> None:
        """:meth:`run`'s loop when :attr:`fusable`: one compiled call up to each record (it returns
        early when reallocation makes a stage outgrow the stage blocks), which also measures the
        record (certificate, welfare), then the record's host part. The calls run back to back: each
        is dispatched before the previous one's results are read, as if that one does all its steps
        (its candidates drawn, its state and stage blocks the previous call's on the device), so the
        host takes a record, applies the moves and draws the candidates while the device computes.
        When a call does not do all its steps (a stage outgrew the blocks, or non-finite results
        replayed step by step), the next call's results are dropped, the generator goes back to its
        draws and it is dispatched again from the host's state. An interrupted run leaves the
        generator where the steps done left it."""
        self._settle()
        options = dict(self._tick_options(), measure=True, with_welfare=self.market_params.alpha > 0)
        record = self.config.run.record_interval
        env = self.environment

        def dispatch(call: FusedCall, state: MarketState, env: Environment, start: int) -> tuple[FusedCall, StepsDone]:
            return call, run_steps(state, env, call.steps, start, call.reallocation, **options)

        running = (dispatch(self.fused_call(self.steps_to_record(end)), self._state, env, self.steps)
                   if self.steps < end else None)
        unapplied, drawn_to = (running[0].drawn_from, self.rng.bit_generator.state) if running else (None, None)
        try:
            while running is not None:
                call, results = running
                start, following = self.steps + call.steps, None
                moved_env = env._replace(stage=results.stage, blocks=results.blocks)  # the stages the call's moves leave
                if start < end:  # the next call, as if this one does all its steps
                    following = dispatch(self.fused_call(self.steps_to_record(end, start), start),
                                         reset_window(results.state) if start % record == 0 else results.state,
                                         moved_env, start)
                    drawn_to = self.rng.bit_generator.state
                done = self.finish_fused_call(call, results.state, results.done, results.after, results.finite)
                replayed = self._state is not results.state
                unapplied = following[0].drawn_from if following else None
                bar.update(done)
                valid = done == call.steps and not replayed
                if valid and following is not None:  # as the host would build it after the moves
                    env = self._environment = moved_env
                if self.record_due():
                    self._finish_record(self._start_record(results.measures if not replayed else None))
                if not valid:
                    if following is not None and self.rng.bit_generator.state == drawn_to:
                        self.rng.bit_generator.state = following[0].drawn_from  # its draws were for steps not reached
                    env = self.environment
                    following = (dispatch(self.fused_call(self.steps_to_record(end)), self._state, env, self.steps)
                                 if self.steps < end else None)
                    unapplied, drawn_to = (following[0].drawn_from if following else None), self.rng.bit_generator.state
                running = following
        finally:
            if unapplied is not None and self.rng.bit_generator.state == drawn_to:  # interrupted
                self.rng.bit_generator.state = unapplied

    def steps_to_record(self, end: int, start: int | None = None) -> int:
        """Steps from ``start`` (default: now) to the next step that records (a multiple of
        ``run.record_interval``), or to ``end`` if that comes first."""
        start = self.steps if start is None else start
        record = self.config.run.record_interval
        return min(start + record - start % record, end) - start

    def fused_call(self, steps: int, start: int | None = None) -> FusedCall:
        """What a :func:`~p2pllm_abm.dynamics.run_steps` call of up to ``steps`` steps after step
        ``start`` (default: now) needs besides the state and environment: each reallocation's
        candidates drawn beforehand (as :meth:`reallocation_phase` draws them), padded to one shape
        per model (at most one event per period), so that the call compiles once. The share weights
        are the table's now: in a :attr:`fusable` run costs do not depend on the stage, so the moves
        before ``start`` leave them."""
        alloc, peers = self.config.allocation, self.peers
        start = self.steps if start is None else start
        events = [step for step in range(start + 1, start + steps + 1) if alloc.enabled and step % alloc.period == 0]
        reallocation, drawn_from, candidates = None, self.rng.bit_generator.state, []
        if alloc.enabled:
            candidates = [move_candidates(peers.alive, alloc.move_fraction, self.rng) for _ in events]
            most = self.config.run.record_interval // alloc.period + 1
            movers = int(np.ceil(alloc.move_fraction * peers.alive.sum()))  # move_candidates' count
            padded = np.full((padded_size(most), padded_size(movers)), -1)
            for row, chosen in zip(padded, candidates):
                row[: len(chosen)] = chosen
            reallocation = device_scalars(Reallocation(jnp.asarray(share_weight(peers.cost, alloc.reading)),
                                                       jnp.asarray(padded), float(alloc.hysteresis), alloc.period))
        return FusedCall(steps, events, candidates, reallocation, drawn_from)

    def finish_fused_call(self, call: FusedCall, state: MarketState, done: jax.Array, after: jax.Array,
                          finite: jax.Array | None = None) -> int:
        """Take the results of ``call``'s :func:`~p2pllm_abm.dynamics.run_steps` (the final state, the
        steps done and each event's turns): apply the moves, and when the call stopped early rewind the
        generator to the candidates actually used. A non-finite result is replayed step by step, which
        names the step and peer. Returns the steps done."""
        alloc, peers = self.config.allocation, self.peers
        if not bool(all_finite(state) if finite is None else finite):
            self.rng.bit_generator.state = call.drawn_from
            self._run_until(self.steps + call.steps, tqdm(disable=True))
            self._settle()
            return call.steps
        done = int(done)
        executed = [step for step in call.events if step <= self.steps + done]
        if len(executed) < len(call.events):  # stopped early: draw again only the candidates used
            self.rng.bit_generator.state = call.drawn_from
            for _ in executed:
                move_candidates(peers.alive, alloc.move_fraction, self.rng)
        after = np.asarray(after)
        for event, step in enumerate(executed):
            self._apply_moves(turns_to_moves(call.candidates[event], peers.stage, after[event]), step)
        self._state = state
        self._sync_peers()
        self.steps += done
        return done

    def _run_until(self, end: int, bar: tqdm) -> None:
        """:meth:`run`'s loop: fused ticks up to each event, then the event's step."""
        while self.steps < end:
            ticks = self._steps_to_next_event(end)
            if ticks > 1 and self.ledger is not None:
                done = self._settled_ticks(ticks - 1)
                bar.update(done)
                if done < ticks - 1:  # a peer left: the market changed mid-chunk
                    continue
            elif ticks > 1:
                self._market_ticks(ticks - 1, first_step=self.steps + 1)
                self.steps += ticks - 1
            self.step()
            bar.update(ticks if self.ledger is None else 1)

    def route(self, alpha: float | None = None, client: np.ndarray | None = None) -> tuple[float, list[int]]:
        """The weighted-sum optimal path (Alg. 2) at current prices for a client with ``alpha``
        (default market.alpha) at position ``client`` (default: endpoint latencies left out): its
        objective value and its peers."""
        return best_path(self.peers, self.config.market.alpha if alpha is None else alpha, client)

    def pareto_frontier(self, client: np.ndarray | None = None) -> ParetoFrontier:
        """The exact Pareto set of (total price, total time) paths at current prices."""
        return pareto_paths(self.peers, client)

    # -- outputs --------------------------------------------------------------------------------
    def metrics_frame(self) -> pd.DataFrame:
        """Tidy metrics: one row per recorded step and stage (``scope = "stage"``) and per recorded
        step and request class (``scope = "request_class"``), see :mod:`p2pllm_abm.metrics`."""
        rows = self._recorded_rows()
        if not self._metric_rows:
            return rows.copy()
        frame = pd.concat([rows, *self._metric_rows], ignore_index=True)
        return frame.sort_values("step", kind="stable", ignore_index=True)  # each step: stage, class, then the rest

    @property
    def stage_stats(self) -> pd.DataFrame:
        """The last record's per-stage statistics: one row per stage, ``stage`` and :data:`~p2pllm_abm.metrics.STAGE_METRICS`."""
        return self._last_record_frames()[0]

    @property
    def class_stats(self) -> pd.DataFrame:
        """The last record's per-request-class statistics: ``request_class`` and :data:`~p2pllm_abm.metrics.CLASS_METRICS`."""
        return self._last_record_frames()[1]

    def _last_record_frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The last record's stage and request-class statistics as frames, built when first read
        (records keep arrays: a DataFrame per record costs more than the record's arithmetic)."""
        built, frames = self._last_frames
        if built != len(self._records):
            _, stage_columns, class_columns = self._records[-1]
            frames = (statistics_frame([stage_columns]), statistics_frame([class_columns]))
            self._last_frames = (len(self._records), frames)
        return frames

    def _recorded_rows(self) -> pd.DataFrame:
        """The stage and request-class rows of every record so far, by step: built once per record
        (a run's outputs are rewritten as it goes, and an ensemble's for every member)."""
        done, frame = self._record_rows
        if done < len(self._records):
            steps, stages, classes = zip(*self._records[done:])
            new = metric_rows(steps, stages, classes).sort_values("step", kind="stable", ignore_index=True)
            frame = new if frame is None else pd.concat([frame, new], ignore_index=True)
            self._record_rows = (len(self._records), frame)
        return frame

    def peers_frame(self) -> pd.DataFrame:
        """One row per peer per recorded step."""
        frame = self.datacollector.get_agent_vars_dataframe().reset_index()
        return frame.rename(columns={"Step": "step", "AgentID": "agent_id"})

    # -- internals ------------------------------------------------------------------------------
    @property
    def environment(self) -> Environment:
        """What the jitted ticks read (costs, stages, who is alive, capacities, who fails), rebuilt
        from the table after the phases that change it."""
        if self._environment is None:
            self._environment = device_scalars(self._make_environment())
        return self._environment

    def _make_environment(self) -> Environment:
        net = self.config.network
        capacity = peer_capacity(self.peers.cost, net.step_ms, net.capacity)
        blocks, ends = self._stage_blocks()
        return Environment(
            # host copies: JAX copies a numpy array to the device asynchronously, and the table's columns
            # change in place while a dispatched tick may not have read them yet
            cost=jnp.asarray(self.claimed_cost.copy()),
            stage=jnp.asarray(self.peers.stage.copy()),
            alive=jnp.asarray(self.peers.alive.copy()),
            client_alpha=self._clients["alpha"],
            request_rate=self.config.clients.request_rate,
            params=self.market_params,
            blocks=blocks,
            options=price_rule_options(self.config),
            geometry=Geometry(
                position=jnp.asarray(self.peers.position.copy()),
                client_position=self._clients["position"],
                latency_range=self.peers.latency_range,
                ends=ends,
                client_class=self._clients["class"],
            ),
            capacity=None if capacity is None else jnp.asarray(capacity),
            step_ms=0.0 if net.step_ms is None else float(net.step_ms),
            failing=None if self.failing is None else jnp.asarray(self.failing.copy()),
            max_retries=float("inf") if self.config.failures.max_retries is None else float(self.config.failures.max_retries),
            hop_overhead=float(self.config.clients.hop_overhead_ms),
            **self._alpha_groups,
        )

    def widen_blocks(self, width: int) -> None:
        """Lay the stage blocks out at least ``width`` wide from now on (an ensemble's members share
        one width; the request noise does not depend on it)."""
        if width > self._block_width:
            self._block_width = width
            self._environment = None

    def _stage_blocks(self) -> tuple[StageBlocks, jax.Array]:
        """The live peers by first stage and by end stage, for the ticks that read them (requests,
        the sequential and Newton price rules; path and Petals routing); a ``(m, 1)`` placeholder of
        ``-1`` otherwise. Widths only grow (to the largest stage's :func:`~p2pllm_abm.equilibrium.block_size`),
        so that a shape seen once is not compiled again; the compiled run widens them the same way."""
        net, width = self.peers, self._block_width
        by_stage = price_rules.get(self.config.market.update_rule).reads_blocks or self.config.clients.count > 0
        by_end = not routings.get(self.config.clients.routing).per_stage
        blocks = (stage_blocks(net.stage, net.alive, net.n_stages, width) if by_stage
                  else StageBlocks(jnp.full((net.n_stages, 1), -1)))
        ends = (stage_blocks(net.stage_end, net.alive, net.n_stages + 1, width).index if by_end
                else jnp.full((net.n_stages + 1, 1), -1))
        self._block_width = max(blocks.index.shape[1], ends.shape[1])
        return blocks, ends

    def _market_ticks(self, ticks: int, first_step: int) -> None:
        """Dispatch ``ticks`` market ticks from ``first_step``. Without the ledger nothing waits for
        them: the host goes on with the next phases (the next step's joins and leaves run while the
        ticks compute) until :meth:`_settle` checks them and brings their results to the table."""
        options = self._tick_options()
        start, env = self._state, self.environment
        if self.ledger is None:
            self._state = run_ticks(self._state, env, ticks, **options)
        elif self.config.ledger.registry_view == "confirmed" or self.failing is not None:
            # requests see the registry's prices, or failed hops go to the ledger too
            confirmed = self.config.ledger.registry_view == "confirmed"
            quoted = self.ledger.registry.posted_price.copy() if confirmed else self.peers.price.copy()
            self._state, paid, failed = paid_tick_jit(self._state, env, jnp.asarray(quoted), **options)
            self._paid = (np.asarray(paid), quoted)
            self._failed_hops = np.asarray(failed) if self.failing is not None else None
        else:  # the chunk's compiled scan, one tick long
            self._state, paid, before = run_paid_ticks(self._state, env, 1, length=self._chunk_length, **options)
            self._paid = (np.asarray(paid)[0], np.asarray(before)[0])
        self._unsettled.append(Dispatched(start, env, first_step, ticks, all_finite(self._state)))
        if self.ledger is not None or len(self._unsettled) >= MAX_UNSETTLED:
            self._settle()

    def _settle(self) -> None:
        """Wait for the dispatched ticks, stop at the first that left a price or revenue non-finite
        (:meth:`_refuse_non_finite`), and copy prices, revenues and requests to the table."""
        if not self._unsettled:
            return
        dispatched, self._unsettled = self._unsettled, []
        finite = np.asarray(jnp.stack([chunk.finite for chunk in dispatched]))
        if not finite.all():
            self._refuse_non_finite(dispatched[int(np.argmin(finite))])
        self._sync_peers()

    def _refuse_non_finite(self, chunk: Dispatched) -> None:
        """Replay ``chunk`` from its start one tick at a time (under its environment) to find the
        step and peer where a price or revenue first became non-finite, and refuse the market scale
        most likely to blame (:func:`~p2pllm_abm.config.most_extreme_field`) in one line. Nothing
        non-finite is recorded."""
        options = self._tick_options()
        probe, step = chunk.start, chunk.first_step
        for step in range(chunk.first_step, chunk.first_step + chunk.ticks):
            probe = run_ticks(probe, chunk.env, 1, **options)
            if not bool(all_finite(probe)):
                break
        quantity = "price" if not np.isfinite(np.asarray(probe.price)).all() else "revenue"
        values = np.asarray(getattr(probe, quantity))
        peer = int(np.flatnonzero(~np.isfinite(values))[0])
        field, value = most_extreme_field(self.config)
        raise ConfigError(field, value, f"values that keep the run finite: peer {peer}'s {quantity} (stage "
                          f"{int(self.peers.stage[peer])}) became {values[peer]} at step {step}, its previous "
                          f"record is the last one kept; {field} is the market scale furthest from its default")

    def _tick_options(self) -> dict:
        """The static arguments of the jitted ticks: price rule, routing, number of stages, load-aware
        choice."""
        return dict(rule=self.config.market.update_rule, routing=self.config.clients.routing,
                    n_stages=self.peers.n_stages, load_aware=self.config.clients.load_aware)

    def _sync_peers(self) -> None:
        self.peers.price = np.asarray(self._state.price)
        self.peers.revenue = np.asarray(self._state.revenue)
        self.peers.requests = np.asarray(self._state.requests)
        self.peers.expected_requests = np.asarray(self._state.expected_requests)

    def _settled_ticks(self, ticks: int) -> int:
        """With the ledger on and live prices: ``ticks`` market ticks in one compiled scan, then each
        step's contracts phase in order. If the ledger takes a peer out of the market at step
        ``k``, the market is recomputed from the chunk's start to step ``k`` (same results as
        stepping) and the rest of the chunk is dropped; returns the steps done."""
        start, env = self._state, self.environment
        options = self._tick_options()
        final, paid, before = run_paid_ticks(start, env, ticks, length=self._chunk_length, **options)
        if not bool(all_finite(final)):
            self._refuse_non_finite(Dispatched(start, env, self.steps + 1, ticks, all_finite(final)))
        paid, before = np.asarray(paid), np.asarray(before)
        for k in range(ticks):
            self.steps += 1
            self._paid = (paid[k], before[k])
            self.peers.price = before[k + 1] if k + 1 < ticks else np.asarray(final.price)
            if self.contracts_phase():
                self._state = run_ticks(start, env, k + 1, **options)
                self._sync_peers()
                return k + 1
        self._state = final
        self._sync_peers()
        return ticks

    def _after_market(self) -> None:
        alloc = self.config.allocation
        if alloc.enabled and self.steps % alloc.period == 0:
            self.reallocation_phase()
        self.contracts_phase()
        if self.steps % self.config.run.record_interval == 0:
            self._record()

    def _steps_to_next_event(self, end: int) -> int:
        """Steps until (and including) the next one that reallocates or records, or ``end``."""
        if self.ledger is not None and self.config.ledger.registry_view == "confirmed" or self.dynamic:
            return 1  # every tick reads the registry the previous step's blocks left, or peers come and go
        periods = [self.config.run.record_interval]
        if self.config.allocation.enabled:
            periods.append(self.config.allocation.period)
        next_event = min(self.steps + p - self.steps % p for p in periods)
        down = self.peers.down_until[self.peers.present & (self.peers.down_until > self.steps)]
        if len(down):  # a reloading peer comes back at the start of that step
            next_event = min(next_event, int(down.min()))
        return min(next_event, end) - self.steps

    def _record(self) -> None:
        self._finish_record(self._start_record())

    def _start_record(self, measures: tuple | None = None) -> MarketState:
        """A record's device part, dispatched without waiting for it: the Nash certificate and the
        welfare at the current prices (unless ``measures`` has them: a compiled run measured them),
        and the state the run goes on from (the record's windows emptied). Returns the recorded
        state, for :meth:`_finish_record`."""
        self._settle()
        if measures is None:
            env = self.environment
            measures = measure_record(self._state.price, env.cost, env.stage, env.alive, env.params,
                                      n_stages=self.peers.n_stages, with_welfare=self.market_params.alpha > 0)
        #: the certificate, and the per-stage welfare at the recorded prices (p2pllm_abm.welfare; None at alpha = 0)
        self.certificate, self.welfare = measures
        state = self._state
        self._state = reset_window(state)
        return state

    def _finish_record(self, state: MarketState) -> None:
        """A record's host part, from the recorded ``state`` (:meth:`_start_record`): the stage, load
        and request-class statistics, the reporters' columns and the DataCollector's rows. The model
        must still be at the recorded step."""
        env = self.environment
        stage_load, class_load = load_statistics(self.peers, state, env.capacity is not None, self.request_classes)
        stage_stats = {**stage_statistics(self.peers, np.asarray(state.tick_revenue),
                                          np.asarray(state.tick_expected_revenue), self.certificate, self.welfare),
                       **stage_load}
        class_stats = {**self.request_classes.statistics(np.asarray(state.class_requests),
                                                         np.asarray(state.class_price), np.asarray(state.class_time)),
                       **class_load}
        if env.capacity is not None:
            with np.errstate(invalid="ignore", divide="ignore"):
                self.peers.utilisation = np.asarray(state.window_served) / np.asarray(state.window_capacity)
        #: cumulative requests per outcome (p2pllm_abm.load.OUTCOMES) as of this record
        self.outcomes = np.asarray(state.outcomes).copy()
        self.reported = reported_columns(stage_stats, class_stats)  #: what the model reporters read
        if self.ledger is not None:
            self.peers.update_ledger_columns(self.ledger.peer_columns())
        with deferred_interrupt():  # a record is in every output or in none (Ctrl-C waits for it)
            self._records.append((self.steps, stage_stats, class_stats))
            if self.ledger is not None:
                self._metric_rows.extend(ledger_metric_rows(self.steps, self.ledger))
            if self.security is not None:
                self._metric_rows.append(self.security.behaviour_rows(self.steps, self.peers))
            self.datacollector.collect(self)
            self._recorded_step = self.steps

