"""What a run records: per-stage statistics, the DataCollector, and the run directory's files.

Files written by :func:`write_run_outputs` (analysis reads only these):

- ``metrics.parquet``: tidy, one row per recorded step and stage (:data:`STAGE_METRICS`);
- ``peers.parquet``: one row per peer per recorded step (:data:`PEER_COLUMNS`);
- ``summary.json``: the config, final per-stage counts and mean prices, allocation status, timing.
"""

from __future__ import annotations

import json
from itertools import repeat
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mesa
import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from .allocation import stage_capacity
from .equilibrium import NashGap, allocation_equilibrium
from .network import PeerTable

if TYPE_CHECKING:
    from .model import P2PLLMModel

#: per-stage columns of metrics.parquet (besides ``step`` and ``stage``)
STAGE_METRICS = (
    "peers",  # live peers serving the stage
    "mean_price",
    "median_price",
    "mean_cost",
    "capacity",  # sum of 1/c_i, the stage's compute capacity
    "compute_share",  # capacity / total capacity
    "revenue",  # realised revenue in the recorded step
    "expected_revenue",  # sum_i p_i * (expected requests of peer i) in the recorded step
    "requests",  # cumulative requests served
    "expected_requests",  # cumulative expected requests (Boltzmann probabilities)
    "nash_gap",  # max revenue a peer of the stage would gain by best-responding (eq. 6 epsilon)
    "relative_nash_gap",  # the same relative to that peer's best-response revenue
)

#: columns of peers.parquet (besides ``step`` and ``agent_id``)
PEER_COLUMNS = (
    "peer_id", "stage", "stage_start", "stage_end", "cost", "price", "alive",
    "revenue", "requests", "expected_requests", "x", "y",
)


def peer_columns(peers: PeerTable) -> dict[str, np.ndarray]:
    """The table's columns under their :data:`PEER_COLUMNS` names."""
    return {
        "peer_id": np.arange(len(peers)),
        "stage": peers.stage,
        "stage_start": peers.stage_start,
        "stage_end": peers.stage_end,
        "cost": peers.cost,
        "price": peers.price,
        "alive": peers.alive,
        "revenue": peers.revenue,
        "requests": peers.requests,
        "expected_requests": peers.expected_requests,
        "x": peers.position[:, 0],
        "y": peers.position[:, 1],
    }


def stage_statistics(peers: PeerTable, tick_revenue: np.ndarray, tick_expected_revenue: np.ndarray,
                     certificate: NashGap) -> pd.DataFrame:
    """One row per stage with :data:`STAGE_METRICS`, over live peers."""
    live = peers.alive
    frame = pd.DataFrame({
        "stage": peers.stage[live],
        "price": peers.price[live],
        "cost": peers.cost[live],
        "revenue": tick_revenue[live],
        "expected_revenue": tick_expected_revenue[live],
        "requests": peers.requests[live],
        "expected_requests": peers.expected_requests[live],
    })
    stats = frame.groupby("stage").agg(
        peers=("price", "size"),
        mean_price=("price", "mean"),
        median_price=("price", "median"),
        mean_cost=("cost", "mean"),
        revenue=("revenue", "sum"),
        expected_revenue=("expected_revenue", "sum"),
        requests=("requests", "sum"),
        expected_requests=("expected_requests", "sum"),
    ).reindex(range(peers.n_stages))
    capacity = stage_capacity(peers.cost, peers.stage, live, peers.n_stages)
    stats["capacity"] = capacity
    stats["compute_share"] = capacity / capacity.sum()
    stats["nash_gap"] = np.asarray(certificate.stage_gap)
    stats["relative_nash_gap"] = np.asarray(certificate.stage_relative_gap)
    stats["peers"] = stats["peers"].fillna(0).astype(np.int64)
    return stats.reset_index()[["stage", *STAGE_METRICS]]


class PeerTableCollector(mesa.DataCollector):
    """Mesa's DataCollector, with agent reporters read column-wise from the PeerTable.

    The stock collector calls every reporter on every agent in Python (about 100 ms per collect at
    10^5 peers); this one zips the table's columns (:data:`PEER_COLUMNS`) in one pass. Agent
    records cover the peers; ``AgentID`` is the PeerAgent's ``unique_id``.
    """

    def __init__(self, model_reporters: dict[str, Any]):
        super().__init__(model_reporters=model_reporters, agent_reporters={name: name for name in PEER_COLUMNS})

    def _record_agents(self, model: P2PLLMModel):
        columns = peer_columns(model.peers)
        return zip(repeat(model.steps), model.peer_unique_ids.tolist(),
                   *(columns[name].tolist() for name in self.agent_reporters))


def stage_reporters(n_stages: int) -> dict[str, Any]:
    """Model reporters ``<metric>_stage_<s>`` reading the model's latest stage statistics."""
    reporters: dict[str, Any] = {"step": lambda m: m.steps}
    for metric in STAGE_METRICS:
        for s in range(n_stages):
            reporters[f"{metric}_stage_{s}"] = lambda m, metric=metric, s=s: m.stage_stats[metric].iat[s]
    return reporters


def allocation_status(peers: PeerTable) -> dict[str, Any]:
    """Eq. 8 for every peer (:func:`~p2pllm_abm.equilibrium.allocation_equilibrium`) and balance."""
    check = allocation_equilibrium(peers.cost, peers.stage, peers.alive, peers.n_stages)
    return {"efficient": check.efficient, "peers_that_would_move": len(check.violators),
            "max_share_gain": float(check.share_gain.max(initial=0.0)),
            "capacity_per_stage": check.capacity_per_stage.tolist(), "capacity_ratio": check.capacity_ratio}


def summary(model: P2PLLMModel, wall_time_s: float) -> dict[str, Any]:
    final = model.stage_stats
    return {
        "config": OmegaConf.to_container(OmegaConf.structured(model.config)),
        "steps": model.steps,
        "final": {
            "peers_per_stage": final["peers"].tolist(),
            "mean_price_per_stage": final["mean_price"].tolist(),
            "compute_share_per_stage": final["compute_share"].tolist(),
            "nash_gap_per_stage": final["nash_gap"].tolist(),
            "relative_nash_gap_per_stage": final["relative_nash_gap"].tolist(),
        },
        "allocation": allocation_status(model.peers),
        "wall_time_s": wall_time_s,
        "steps_per_s": model.steps / wall_time_s if wall_time_s > 0 else None,
    }


def write_run_outputs(model: P2PLLMModel, outdir: Path, wall_time_s: float) -> dict[str, Path]:
    """Write metrics.parquet, peers.parquet and summary.json into ``outdir``; return their paths."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = {name: outdir / name for name in ("metrics.parquet", "peers.parquet", "summary.json")}
    model.metrics_frame().to_parquet(paths["metrics.parquet"], index=False)
    model.peers_frame().to_parquet(paths["peers.parquet"], index=False)
    paths["summary.json"].write_text(json.dumps(summary(model, wall_time_s), indent=2))
    return paths
