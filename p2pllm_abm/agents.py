"""Mesa agents: thin handles into the model's arrays.

A :class:`PeerAgent` is an index into ``model.peers`` (a :class:`~p2pllm_abm.network.PeerTable`)
and a :class:`ClientAgent` an index into ``model.client_alpha``. With churn, peer agents are
created when their peers join and removed when they leave (``model.agents`` holds the present ones). They give researchers Mesa's
vocabulary (``model.agents``, ``model.agents_by_type[PeerAgent]``, AgentSet selection, agent
reporters) while the step phases run vectorised over the arrays.
"""

from __future__ import annotations

import mesa


class PeerAgent(mesa.Agent):
    """A peer serving a span of stages; every attribute reads (or writes) its row of the table."""

    def __init__(self, model: mesa.Model, index: int) -> None:
        super().__init__(model)
        self.index = index

    @property
    def peer_id(self) -> int:
        """The peer's id for the whole run (``events.parquet``, ``peers.parquet``; rows are reused)."""
        return int(self.model.peers.peer_id[self.index])

    @property
    def stage(self) -> int:
        return int(self.model.peers.stage[self.index])

    @property
    def span(self) -> tuple[int, int]:
        return int(self.model.peers.stage_start[self.index]), int(self.model.peers.stage_end[self.index])

    @property
    def cost(self) -> float:
        return float(self.model.peers.cost[self.index])

    @property
    def price(self) -> float:
        return float(self.model.peers.price[self.index])

    @property
    def revenue(self) -> float:
        """Cumulative realised revenue."""
        return float(self.model.peers.revenue[self.index])

    @property
    def alive(self) -> bool:
        """Serving now (False while down after a failure or reloading after a move)."""
        return bool(self.model.peers.alive[self.index])

    @property
    def behaviour(self) -> str:
        """honest, lazy, malicious, ... (:mod:`p2pllm_abm.behaviours`)."""
        return "honest" if self.model.behaviours is None else str(self.model.peers.behaviour[self.index])

    @property
    def balance(self) -> int | None:
        """Ledger balance now, in base units (None with the ledger off)."""
        ledger = self.model.ledger
        return None if ledger is None else ledger.ledger.balance(int(ledger.registry.accounts[self.index]))

    @property
    def stake(self) -> int | None:
        """Bonded stake now, in base units (None with the ledger off)."""
        ledger = self.model.ledger
        return None if ledger is None else int(ledger.registry.bonded[self.index])


class ClientAgent(mesa.Agent):
    """A client sending inference requests, scoring peers with its own ``alpha`` (eq. 1)."""

    def __init__(self, model: mesa.Model, index: int) -> None:
        super().__init__(model)
        self.index = index

    @property
    def alpha(self) -> float:
        return float(self.model.client_alpha[self.index])
