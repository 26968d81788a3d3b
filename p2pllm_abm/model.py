"""The P2P-LLM network as a Mesa model (paper section 5.1).

Each step runs the paper's phases in order:

1. requests: every client's request is routed (``clients.routing``: per-stage logit choice, or
   whole paths with latency) and pays the chosen peers;
2. prices: every peer updates its price (``market.update_rule``; by default the paper's
   gradient ascent, eq. 5);
3. reallocation, every ``allocation.period`` steps (eq. 7-8);
4. contracts, with ``ledger.enabled``: the step's payments settled on the ledger (SLA terms,
   escrows or channel updates), moved prices posted, the slot's blocks produced
   (:class:`~p2pllm_abm.ledger.phase.MarketLedger`); peers whose stake fell below the minimum
   leave the market;
5. metrics, every ``run.record_interval`` steps, with each stage's Nash-gap certificate
   (:func:`~p2pllm_abm.equilibrium.nash_gap`) and each request class's realised path price and
   time.

Phases 1-2 are jitted JAX over all peers. :meth:`P2PLLMModel.run` fuses the consecutive steps
between two steps that need phases 3-5 into one compiled call; it gives the same results, bit for
bit, as calling :meth:`~P2PLLMModel.step` repeatedly. With the ledger on, the fused call also
returns every tick's paid hops and the contracts phase settles them step by step afterwards
(:meth:`~P2PLLMModel._settled_ticks`; a peer leaving the market mid-chunk makes it recompute the
market up to that step, so results still equal stepping); with ``ledger.registry_view=confirmed``
every tick reads the registry the previous step's blocks left, so ticks run one at a time.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import mesa
import numpy as np
import pandas as pd
from omegaconf import DictConfig
from tqdm.auto import tqdm

from .agents import ClientAgent, PeerAgent
from .behaviours import Behaviours, assign
from .allocation import move_candidates, reallocate
from .config import ClientsConfig, Config, ConfigError, most_extreme_field, to_config
from .dynamics import Environment, Geometry, MarketState, initial_state, paid_tick_jit, run_paid_ticks, run_ticks
from .economics import market_params
from .equilibrium import certify, stage_blocks
from .ledger import MarketLedger
from .metrics import (LEDGER_PEER_COLUMNS, PEER_COLUMNS, PeerTableCollector, RequestClasses, ledger_metric_rows,
                      metric_rows, model_reporters, stage_statistics)
from .network import PeerTable
from .pareto import ParetoFrontier, pareto_paths
from .resources import check_memory
from .routing import best_path
from .security import SecurityPhase
from .welfare import stage_welfare


def draw_client_alpha(clients: ClientsConfig, market_alpha: float, rng: np.random.Generator) -> np.ndarray:
    """Each client's price preference alpha from ``clients.alpha_distribution``."""
    params = list(clients.alpha_params)
    if clients.alpha_distribution == "fixed":
        return np.full(clients.count, params[0] if params else market_alpha)
    if clients.alpha_distribution == "uniform":
        return rng.uniform(params[0], params[1], size=clients.count)
    return rng.beta(params[0], params[1], size=clients.count)


class P2PLLMModel(mesa.Model):
    """Peers competing on price per stage and moving between stages; clients routing requests.

    >>> model = P2PLLMModel(load_config("paper_28", overrides=["seed=3"]))
    >>> model.run(1000)
    >>> model.datacollector.get_model_vars_dataframe()

    One seed (``config.seed``) decides the network, the clients, the request noise and the
    reallocation order.
    """

    def __init__(self, config: Config | DictConfig | None = None) -> None:
        cfg = to_config(config if config is not None else Config())
        check_memory(cfg)  # before anything is allocated
        seeds = np.random.SeedSequence(cfg.seed).spawn(6)
        network_seed, dynamics_seed, client_seed, noise_seed, ledger_seed, adversary_seed = seeds
        super().__init__(rng=np.random.default_rng(dynamics_seed))
        self.config = cfg
        self.peers = PeerTable.from_config(cfg.network, np.random.default_rng(network_seed))
        client_rng = np.random.default_rng(client_seed)
        self.client_alpha = draw_client_alpha(cfg.clients, cfg.market.alpha, client_rng)
        self.client_position = client_rng.uniform(0.0, 1.0, size=(cfg.clients.count, 2))
        self.request_classes = RequestClasses.from_alpha(self.client_alpha, cfg.clients.request_classes)
        peer_agents = PeerAgent.create_agents(self, len(self.peers), index=list(range(len(self.peers))))
        ClientAgent.create_agents(self, cfg.clients.count, index=list(range(cfg.clients.count)))
        self.peer_unique_ids = np.array([agent.unique_id for agent in peer_agents])

        #: who is dishonest and how (None in an honest run without verification)
        self.behaviours: Behaviours | None = None
        self.security: SecurityPhase | None = None
        adversary_rng = np.random.default_rng(adversary_seed)
        if cfg.adversary.fraction > 0 or cfg.verification.mechanism != "none":
            self.behaviours = assign(cfg.adversary, len(self.peers), cfg.clients.count, adversary_rng)
        #: the c_i clients weigh (eq. 1) and peers register: overclaimers' claims
        self.claimed_cost = (self.peers.cost if self.behaviours is None
                             else self.behaviours.claimed_cost(self.peers.cost, cfg.adversary.overclaim_factor))

        mkt = cfg.market
        self.market_params = market_params(mkt)
        key = jax.random.key(int(noise_seed.generate_state(1)[0]))
        self._state = initial_state(jnp.asarray(self.peers.price), key, self.request_classes.count)
        self._environment = self._make_environment()
        self.moves = 0  #: peers moved by reallocation so far
        self.ledger: MarketLedger | None = None  #: the cryptoeconomic layer (ledger.enabled)
        self._paid = None  #: the last tick's paid hops and quoted prices, for the contracts phase
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
                   + (("behaviour",) if self.behaviours is not None else ()))
        self.datacollector = PeerTableCollector(model_reporters(self.peers.n_stages, self.request_classes.count),
                                                columns)
        self._metric_rows: list[pd.DataFrame] = []
        self._record()

    # -- phases ---------------------------------------------------------------------------------
    def step(self) -> None:
        """One step: requests and prices, then reallocation, contracts and metrics when due."""
        self._market_ticks(1, first_step=self.steps)  # Mesa has counted this step already
        self._after_market()

    def reallocation_phase(self) -> None:
        """Phase 3 (eq. 7-8): a seeded random share of live peers move, one after another."""
        alloc = self.config.allocation
        candidates = move_candidates(self.peers.alive, alloc.move_fraction, self.rng)
        stage, moves = reallocate(self.peers.cost, self.peers.stage, self.peers.alive, candidates,
                                  alloc.hysteresis, self.peers.n_stages, alloc.reading)
        if moves:
            self.peers.stage_start = stage
            self.peers.stage_end = stage + 1
            self._environment = self._make_environment()
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
        exited = self.ledger.advance(self.peers.price, self.peers.alive)
        if len(exited):
            self.peers.alive[exited] = False
            self._environment = self._make_environment()
        return len(exited) > 0

    # -- running --------------------------------------------------------------------------------
    def run(self, steps: int, progress: bool = False) -> None:
        """Advance ``steps`` steps (fusing the ones with no reallocation or recording), record
        the last step, and show a progress bar when ``progress``."""
        if steps < 0:
            raise ValueError(f"steps = {steps} is invalid: allowed steps >= 0")
        end = self.steps + steps
        with tqdm(total=steps, disable=not progress, unit="step", desc="p2pllm-sim") as bar:
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
        if self._recorded_step != self.steps:
            self._record()

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
        return pd.concat(self._metric_rows, ignore_index=True)

    def peers_frame(self) -> pd.DataFrame:
        """One row per peer per recorded step."""
        frame = self.datacollector.get_agent_vars_dataframe().reset_index()
        return frame.rename(columns={"Step": "step", "AgentID": "agent_id"})

    # -- internals ------------------------------------------------------------------------------
    def _make_environment(self) -> Environment:
        return Environment(
            cost=jnp.asarray(self.claimed_cost),
            stage=jnp.asarray(self.peers.stage),
            alive=jnp.asarray(self.peers.alive),
            client_alpha=jnp.asarray(self.client_alpha),
            request_rate=self.config.clients.request_rate,
            params=self.market_params,
            blocks=stage_blocks(self.peers.stage, self.peers.alive, self.peers.n_stages),
            damping=self.config.market.damping,
            exploration=self.config.market.exploration,
            baseline_rate=self.config.market.baseline_rate,
            geometry=Geometry(
                position=jnp.asarray(self.peers.position),
                client_position=jnp.asarray(self.client_position),
                latency_range=self.peers.latency_range,
                ends=stage_blocks(self.peers.stage_end, self.peers.alive, self.peers.n_stages + 1).index,
                client_class=jnp.asarray(self.request_classes.one_hot),
            ),
        )

    def _market_ticks(self, ticks: int, first_step: int) -> None:
        options = self._tick_options()
        start = self._state
        if self.ledger is None:
            self._state = run_ticks(self._state, self._environment, ticks, **options)
        elif self.config.ledger.registry_view == "confirmed":  # requests see the registry's prices
            quoted = self.ledger.registry.posted_price.copy()
            self._state, paid = paid_tick_jit(self._state, self._environment, jnp.asarray(quoted), **options)
            self._paid = (np.asarray(paid), quoted)
        else:  # the chunk's compiled scan, one tick long
            self._state, paid, before = run_paid_ticks(self._state, self._environment, 1,
                                                       length=self._chunk_length, **options)
            self._paid = (np.asarray(paid)[0], np.asarray(before)[0])
        self._guard_finite(start, self._state, first_step, ticks)
        self._sync_peers()

    def _guard_finite(self, start: MarketState, state: MarketState, first_step: int, ticks: int) -> None:
        """Stop at the first non-finite price or revenue: replay the chunk from ``start`` one tick
        at a time to find its step and peer, and refuse the market scale most likely to blame
        (:func:`~p2pllm_abm.config.most_extreme_field`) in one line. Nothing non-finite is recorded."""
        if np.isfinite(np.asarray(state.price)).all() and np.isfinite(np.asarray(state.revenue)).all():
            return
        options = self._tick_options()
        probe, step = start, first_step
        for step in range(first_step, first_step + ticks):
            probe = run_ticks(probe, self._environment, 1, **options)
            if not (np.isfinite(np.asarray(probe.price)).all() and np.isfinite(np.asarray(probe.revenue)).all()):
                break
        quantity = "price" if not np.isfinite(np.asarray(probe.price)).all() else "revenue"
        values = np.asarray(getattr(probe, quantity))
        peer = int(np.flatnonzero(~np.isfinite(values))[0])
        field, value = most_extreme_field(self.config)
        raise ConfigError(field, value, f"values that keep the run finite: peer {peer}'s {quantity} (stage "
                          f"{int(self.peers.stage[peer])}) became {values[peer]} at step {step}, its previous "
                          f"record is the last one kept; {field} is the market scale furthest from its default")

    def _tick_options(self) -> dict:
        """The static arguments of the jitted ticks: price rule, routing, number of stages."""
        return dict(rule=self.config.market.update_rule, routing=self.config.clients.routing,
                    n_stages=self.peers.n_stages)

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
        start, env = self._state, self._environment
        options = self._tick_options()
        final, paid, before = run_paid_ticks(start, env, ticks, length=self._chunk_length, **options)
        self._guard_finite(start, final, self.steps + 1, ticks)
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
        if self.ledger is not None and self.config.ledger.registry_view == "confirmed":
            return 1  # every tick reads the registry the previous step's blocks left
        periods = [self.config.run.record_interval]
        if self.config.allocation.enabled:
            periods.append(self.config.allocation.period)
        next_event = min(self.steps + p - self.steps % p for p in periods)
        return min(next_event, end) - self.steps

    def _record(self) -> None:
        env = self._environment
        self.certificate = certify(self._state.price, env.cost, env.stage, env.alive, self.market_params,
                                   n_stages=self.peers.n_stages)
        #: per-stage welfare at the recorded prices (p2pllm_abm.welfare; None at alpha = 0)
        self.welfare = (stage_welfare(self._state.price, env.cost, env.stage, env.alive, self.market_params,
                                      n_stages=self.peers.n_stages) if self.market_params.alpha > 0 else None)
        self.stage_stats = stage_statistics(self.peers, np.asarray(self._state.tick_revenue),
                                            np.asarray(self._state.tick_expected_revenue), self.certificate,
                                            self.welfare)
        state = self._state
        self.class_stats = self.request_classes.statistics(
            np.asarray(state.class_requests), np.asarray(state.class_price), np.asarray(state.class_time))
        zeros = jnp.zeros_like(state.class_requests)
        self._state = state._replace(class_requests=zeros, class_price=zeros, class_time=zeros)
        self._metric_rows.append(metric_rows(self.steps, self.stage_stats, self.class_stats))
        if self.ledger is not None:
            self.peers.update_ledger_columns(self.ledger.peer_columns())
            self._metric_rows.extend(ledger_metric_rows(self.steps, self.ledger))
        if self.security is not None:
            self._metric_rows.append(self.security.behaviour_rows(self.steps, self.peers))
        self.datacollector.collect(self)
        self._recorded_step = self.steps
