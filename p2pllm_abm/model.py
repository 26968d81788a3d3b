"""The P2P-LLM network as a Mesa model (paper section 5.1): the Mesa adapter over the simulation core.

Each step runs the paper's phases in order:

0. membership, with churn or failures (:class:`~p2pllm_abm.phases.Membership`): peers back from
   downtime, leaving, joining, and those that will fail mid-request drawn;
1. requests: every client's request is routed (``clients.routing``), queues at peers with capacity,
   fails over from peers that fail, and pays the peers that served it (:mod:`p2pllm_abm.load`);
2. prices: every peer updates its price (``market.update_rule``; by default the paper's gradient
   ascent, eq. 5);
3. reallocation, every ``allocation.period`` steps (:class:`~p2pllm_abm.phases.Reallocation`);
4. contracts, with ``ledger.enabled`` (:class:`~p2pllm_abm.phases.Contracts`);
5. the record, every ``run.record_interval`` steps (:class:`~p2pllm_abm.recorder.Recorder`): each
   stage's Nash-gap certificate (:func:`~p2pllm_abm.equilibrium.nash_gap`), welfare, load and each
   request class's realised path price and time.

Phases 1-2 are jitted JAX over all peers; how steps are executed on the device (fused calls back to
back, chunks, replays) is :class:`~p2pllm_abm.engine.Engine`'s concern, and gives the same results,
bit for bit, as calling :meth:`~P2PLLMModel.step` repeatedly. This class holds the run's state
(the :class:`~p2pllm_abm.network.PeerTable`, the clients, the ledger) and gives researchers Mesa's
vocabulary: agents as handles on table rows, the DataCollector, ``step`` and ``batch_run``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import mesa
import numpy as np
import pandas as pd
from omegaconf import DictConfig
from tqdm.auto import tqdm

from .agents import ClientAgent, PeerAgent
from .behaviours import Behaviours, assign
from .config import ClientsConfig, Config, ConfigError, dotted_name, security_on, to_config, with_parameters
from .churn import spare_rows
from .compat import DelegatedNames
from .cores import SMALL_MARKET_PEERS, separate_cores
from .dynamics import initial_state
from .economics import market_params
from .engine import MAX_UNSETTLED, Dispatched, Engine, FusedCall
from .ledger import MarketLedger
from .metrics import LEDGER_PEER_COLUMNS, PEER_COLUMNS, PeerTableCollector, RequestClasses, model_reporters
from .network import PeerTable
from .pareto import ParetoFrontier, pareto_paths
from .phases import Contracts, Membership, Phase, Reallocation
from .recorder import Recorder
from .resources import check_memory
from .routing import best_path
from .runtime import deferred_interrupt, long_lived_objects_frozen
from .security import SecurityPhase
from .threefry import register_cpu_lowering

#: the model, its helpers, and the names that lived here before the engine and the runtime moved out
__all__ = ["P2PLLMModel", "model_config", "draw_client_alpha", "spare_rows", "FusedCall", "Dispatched",
           "MAX_UNSETTLED", "deferred_interrupt", "long_lived_objects_frozen"]

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

class P2PLLMModel(DelegatedNames, mesa.Model):
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
        self.alpha_groups = {} if len(values) == len(self.client_alpha) else {
            "alpha_values": jnp.asarray(values), "alpha_group": jnp.asarray(np.eye(len(values))[group])}
        #: the clients on the device once (they never change; churn rebuilds the environment every step)
        self.device_clients = {"alpha": jnp.asarray(self.client_alpha), "position": jnp.asarray(self.client_position),
                               "class": jnp.asarray(self.request_classes.one_hot)}
        rows = np.flatnonzero(self.peers.present)
        self._peer_unique_ids = np.full(len(self.peers), -1, dtype=np.int64)  #: see peer_unique_ids
        self._agents_by_row: dict[int, PeerAgent] = {}
        #: (rows, peer ids) of the peers that joined since the agents were last brought in line
        self._joined: list[tuple[np.ndarray, np.ndarray]] = [(rows, self.peers.peer_id[rows].copy())]
        self._sync_agents()
        ClientAgent.create_agents(self, cfg.clients.count, index=list(range(cfg.clients.count)))
        self.membership = Membership(self)  #: phase 0 (joins, leaves, failures) and the events log
        self.reallocation = Reallocation(self)  #: phase 3

        #: who is dishonest and how (None in an honest run without verification)
        self.behaviours: Behaviours | None = None
        self.security: SecurityPhase | None = None
        adversary_rng = np.random.default_rng(adversary_seed)
        if security_on(cfg):
            self.behaviours = assign(cfg.adversary, len(self.peers), cfg.clients.count, adversary_rng)

        self.market_params = market_params(cfg.market)
        key = jax.random.key(int(noise_seed.generate_state(1)[0]))
        #: phases 1-2 on the device, and how steps run
        self.engine = Engine(self, initial_state(jnp.asarray(self.peers.price), key, self.request_classes.count,
                                                 cfg.clients.count, self.peers.n_stages))
        self.ledger: MarketLedger | None = None  #: the cryptoeconomic layer (ledger.enabled)
        if cfg.ledger.enabled:
            led = cfg.ledger
            self.ledger = MarketLedger(
                led, self.peers, cfg.clients.count, seed=int(ledger_seed.generate_state(1)[0]),
                stake=None if self.behaviours is None else self.behaviours.registration_stake(led.initial_stake,
                                                                                              led.min_stake),
                claimed_cost=self.claimed_cost,
                stale_clients=None if self.behaviours is None else self.behaviours.stale_client)
            if self.behaviours is not None:
                self.security = SecurityPhase(cfg, self.behaviours, self.ledger, adversary_rng, self.peers)
            self.peers.update_ledger_columns(self.ledger.peer_columns())
            periods = [cfg.run.record_interval] + ([cfg.allocation.period] if cfg.allocation.enabled else [])
            self.engine.chunk_length = min(periods)  # the compiled scan's length (the longest chunk)
        self.contracts = Contracts(self)  #: phase 4
        #: the host phases after the market's ticks, in the paper's order (5.1)
        self.phases: tuple[Phase, ...] = (self.reallocation, self.contracts)

        if self.behaviours is not None:
            self.peers.behaviour = self.behaviours.names()
        columns = (PEER_COLUMNS + (LEDGER_PEER_COLUMNS if self.ledger else ())
                   + (("behaviour",) if self.behaviours is not None else ())
                   + (("utilisation",) if cfg.network.step_ms is not None else ()))
        self.datacollector = PeerTableCollector(model_reporters(self.peers.n_stages, self.request_classes.count),
                                                columns)
        self.recorder = Recorder(self)  #: phase 5, and the frames of the records
        self.recorder.record()

    @property
    def claimed_cost(self) -> np.ndarray:
        """The c_i clients weigh (eq. 1) and peers register: overclaimers' claims, else the true cost."""
        if self.behaviours is None:
            return self.peers.cost
        return self.behaviours.claimed_cost(self.peers.cost, self.config.adversary.overclaim_factor)

    # -- the step, in the paper's order ---------------------------------------------------------
    def step(self) -> None:
        """One step: membership (joins, leaves, failures), requests and prices, then reallocation,
        contracts and the record when due."""
        self.membership()
        self.engine.market_ticks(1, first_step=self.steps)  # phases 1-2; Mesa has counted this step already
        self.membership.after_requests()
        for phase in self.phases:  # 3-4
            if phase.due(self.steps):
                phase()
        self.recorder.record_if_due()  # 5
        if not self.engine.in_run:  # called on its own: the table shows this step's market
            self.engine.await_ticks()

    def run(self, steps: int, progress: bool = False) -> None:
        """Advance ``steps`` steps (fusing what the engine can), record the last step, and show a
        progress bar when ``progress``."""
        if steps < 0:
            raise ValueError(f"steps = {steps} is invalid: allowed steps >= 0")
        end = self.steps + steps
        cfg = self.config
        separate = (self.fusable and cfg.run.separate_cores and cfg.clients.count > 0
                    and cfg.network.peers <= SMALL_MARKET_PEERS)
        with long_lived_objects_frozen(), separate_cores(separate), \
                tqdm(total=steps, disable=not progress, unit="step", desc="p2pllm-sim") as bar:
            self.engine.run(end, bar)
        self.engine.await_ticks()
        self.recorder.record_if_due(last=True)

    # -- the Mesa adapter: agents are handles on table rows -------------------------------------
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

    def peers_joined(self, rows: np.ndarray) -> None:
        """Peers joined at ``rows``: their agents are made when agents are next looked at."""
        self._joined.append((rows, self.peers.peer_id[rows].copy()))

    def peers_left(self, rows: np.ndarray) -> None:
        """Peers at ``rows`` left: their agents are removed."""
        for row in rows.tolist():
            agent = self._agents_by_row.pop(row, None)  # None: joined since the agents were last synced
            if agent is not None:
                agent.remove()
        self._peer_unique_ids[rows] = -1

    def rows_added(self, rows: int) -> None:
        """The table grew by ``rows`` free rows."""
        self._peer_unique_ids = np.concatenate([self._peer_unique_ids, np.full(rows, -1, dtype=np.int64)])

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
        """Tidy metrics: one row per recorded step and stage and per recorded step and request class
        (:meth:`Recorder.metrics_frame`), with the ledger's and security's rows."""
        return self.recorder.metrics_frame()

    def peers_frame(self) -> pd.DataFrame:
        """One row per peer per recorded step."""
        frame = self.datacollector.get_agent_vars_dataframe().reset_index()
        return frame.rename(columns={"Step": "step", "AgentID": "agent_id"})

    def events_frame(self) -> pd.DataFrame:
        """Joins, leaves, failures, recoveries and moves (:meth:`Membership.events_frame`)."""
        return self.membership.events_frame()
