"""What a run records: per-stage statistics, the DataCollector, and the run directory's files.

Files written by :func:`write_run_outputs` (analysis reads only these):

- ``metrics.parquet``: tidy, one row per recorded step and stage (``scope = "stage"``,
  :data:`STAGE_METRICS`) and one per recorded step and request class (``scope =
  "request_class"``, :data:`CLASS_METRICS`); the other scope's columns are null;
- ``peers.parquet``: one row per present peer per recorded step (:data:`PEER_COLUMNS`; with capacity
  also ``utilisation``);
- ``events.parquet``: joins, leaves, failures, recoveries and moves, one row per peer and event
  (``step, event, peer_id, stage``; :data:`EVENT_KINDS`);
- ``summary.json``: the config, final per-stage counts and mean prices, allocation status, the
  ``requests`` block (sent = served + failed_over + dropped, with the reasons), the ``churn``
  block (events by kind), timing.

With the ledger on, ``metrics.parquet`` also has ``scope = "shard"`` and ``scope = "chain"`` rows
(:data:`SHARD_METRICS`, :data:`CHAIN_METRICS`), ``peers.parquet`` the
:data:`LEDGER_PEER_COLUMNS`, ``summary.json`` a ``ledger`` block, and the journal is written to
``ledger.parquet`` (:meth:`~p2pllm_abm.ledger.accounts.Ledger.journal_frame`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import mesa
import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from .allocation import allocation_equilibrium, stage_capacity
from .equilibrium import NashGap
from .load import OUTCOMES
from .network import PeerTable
from .paths import atomic_path, write_text_atomic
from .welfare import WELFARE_METRICS, Welfare

if TYPE_CHECKING:
    from .ledger import MarketLedger
    from .model import P2PLLMModel

#: per-stage load columns (p2pllm_abm.load), over the steps since the previous record
LOAD_METRICS = (
    "throughput",  # requests the stage's peers served per step
    "utilisation",  # served / capacity of the stage's live peers (null without capacity)
    "queued",  # requests waiting in the stage's queues at the record
    "hop_time_p50",  # percentiles of the time a request spent in the stage (wait + compute, + a failed
    "hop_time_p95",  # attempt's), in ms, over the last SAMPLE_TICKS steps before the record
    "hop_time_p99",
)
#: per-request-class load columns
REQUEST_LOAD_METRICS = ("request_throughput", "request_time_p50", "request_time_p95", "request_time_p99")
#: the kinds of events.parquet rows
EVENT_KINDS = ("join", "leave", "fail", "recover", "move")

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
    *LOAD_METRICS,  # p2pllm_abm.load: throughput, utilisation, queue, hop-time percentiles
    *WELFARE_METRICS,  # p2pllm_abm.welfare: surplus, planner's benchmark, HHI, markup, elasticity (null at alpha = 0)
)

#: per-request-class columns of metrics.parquet (besides ``step`` and ``request_class``): the
#: requests routed since the previous record and their paths' mean totals
CLASS_METRICS = (
    "alpha_low",  # the class holds clients with alpha_low <= alpha < alpha_high (1 included in the last)
    "alpha_high",
    "clients",
    "path_requests",  # requests routed since the previous record
    "path_price",  # their mean total price
    "path_time",  # their mean total time: compute costs + latencies (client endpoints included) + waits
    *REQUEST_LOAD_METRICS,  # requests completed per step, request-time percentiles
)

#: columns of peers.parquet (besides ``step`` and ``agent_id``)
PEER_COLUMNS = (
    "peer_id", "stage", "stage_start", "stage_end", "cost", "price", "alive",
    "revenue", "requests", "expected_requests", "x", "y",
)


#: extra columns of peers.parquet with the ledger on, in base units
LEDGER_PEER_COLUMNS = ("balance", "stake", "escrowed")

#: columns of metrics.parquet's ledger scopes: ``scope = "shard"`` (one row per shard, figures over
#: the steps since the previous record) and ``scope = "chain"`` (one row, figures at the step)
SHARD_METRICS = ("shard", "tx_submitted", "tx_included", "tx_failed", "queue", "block_fill",
                 "confirmation_latency", "cross_shard_share")
CHAIN_METRICS = ("slot", "blocks", "validators", "stake_gini", "nakamoto_coefficient", "finalized_slot",
                 "finality_lag", "mempool", "total_supply", "conserved", "staked", "escrow_locked",
                 "channel_locked", "burned", "window_requests")


def peer_columns(peers: PeerTable) -> dict[str, np.ndarray]:
    """The table's columns under their :data:`PEER_COLUMNS` names (and
    :data:`LEDGER_PEER_COLUMNS` when the ledger has set them)."""
    ledger = {} if peers.balance is None else {name: getattr(peers, name) for name in LEDGER_PEER_COLUMNS}
    if peers.behaviour is not None:
        ledger["behaviour"] = peers.behaviour
    if peers.utilisation is not None:
        ledger["utilisation"] = peers.utilisation
    return {**ledger,
        "peer_id": peers.peer_id,
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


def stage_medians(values: np.ndarray, stage: np.ndarray, n_stages: int) -> np.ndarray:
    """The median of ``values`` per stage (NaN for a stage without values), by one sort."""
    counts = np.bincount(stage, minlength=n_stages)
    if not len(values):
        return np.full(n_stages, np.nan)
    order = np.lexsort((values, stage))
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    ordered = values[order]
    low, high = first + (counts - 1) // 2, first + counts // 2
    with np.errstate(invalid="ignore"):
        return np.where(counts > 0, (ordered[np.minimum(low, len(values) - 1)]
                                     + ordered[np.minimum(high, len(values) - 1)]) / 2, np.nan)


#: stage and request-class metrics that are nullable floats: null, not NaN, where undefined (no
#: welfare at alpha = 0, no load measured, no request in a class)
NULLABLE_METRICS = frozenset((*WELFARE_METRICS, *LOAD_METRICS, "path_price", "path_time", *REQUEST_LOAD_METRICS))

#: one record's statistics of one scope (stage or request class): a column per metric, a row per
#: stage or class; NaN where a :data:`NULLABLE_METRICS` column is null (see :func:`statistics_frame`)
Columns = dict[str, np.ndarray]


def nullable(values: Any) -> pd.arrays.FloatingArray:
    """``values`` as a nullable float column, NaN as null (``pd.array(values, dtype="Float64")``,
    built directly: the inferring constructor costs 8x more)."""
    data = np.array(values, dtype=np.float64)
    return pd.arrays.FloatingArray(data, np.isnan(data))


def stage_statistics(peers: PeerTable, tick_revenue: np.ndarray, tick_expected_revenue: np.ndarray,
                     certificate: NashGap, welfare: Welfare | None = None) -> Columns:
    """The columns ``stage`` and :data:`STAGE_METRICS`, one row per stage, over live peers (the
    welfare columns null without ``welfare``: at alpha = 0 surplus has no price scale; the load
    columns null until :func:`load_statistics` fills them in). Sums and means by ``np.bincount``: a
    pandas groupby costs about ten times as much per record."""
    live, m = peers.alive, peers.n_stages
    stage = peers.stage[live]
    count = np.bincount(stage, minlength=m)

    def total(values: np.ndarray) -> np.ndarray:
        return np.where(count > 0, np.bincount(stage, weights=values[live], minlength=m), np.nan)

    capacity = stage_capacity(peers.cost, peers.stage, live, m)
    with np.errstate(invalid="ignore", divide="ignore"):  # 0 / 0: a stage without peers, or every peer gone
        columns = {
            "stage": np.arange(m),
            "peers": count.astype(np.int64),
            "mean_price": total(peers.price) / count,
            "median_price": stage_medians(peers.price[live], stage, m),
            "mean_cost": total(peers.cost) / count,
            "capacity": capacity,
            "compute_share": capacity / capacity.sum(),
            "revenue": total(tick_revenue),
            "expected_revenue": total(tick_expected_revenue),
            "requests": total(peers.requests),
            "expected_requests": total(peers.expected_requests),
            # copies: a view of a device array would keep the array (and three Python objects the
            # garbage collector scans) alive for as long as the record
            "nash_gap": np.array(certificate.stage_gap),
            "relative_nash_gap": np.array(certificate.stage_relative_gap),
        }
    for name in WELFARE_METRICS:
        columns[name] = np.array(getattr(welfare, name), dtype=np.float64) if welfare is not None else np.full(m, np.nan)
    for name in LOAD_METRICS:
        columns[name] = np.full(m, np.nan)
    return {name: columns[name] for name in ("stage", *STAGE_METRICS)}


#: the load percentiles (:data:`LOAD_METRICS`, :data:`REQUEST_LOAD_METRICS`)
PERCENTILES = (50, 95, 99)


def nan_percentiles(samples: np.ndarray) -> np.ndarray:
    """:data:`PERCENTILES` of every row of ``samples`` ``(groups, values)`` ignoring NaN (NaN where a
    row has none), ``(3, groups)``: ``np.nanpercentile(samples, PERCENTILES, axis=1)``'s numbers (its
    ``linear`` method: the same order statistics and interpolation arithmetic), for all rows at once
    by one sort along contiguous rows (``np.nanpercentile`` goes row by row, and cost 40% of a
    record; sorting and counting along the first axis of a ``(values, groups)`` array cost twice
    as much again)."""
    samples = np.ascontiguousarray(samples)
    if not samples.shape[1]:
        return np.full((len(PERCENTILES), samples.shape[0]), np.nan)
    ordered = np.sort(samples, axis=1)  # NaN last
    count = samples.shape[1] - np.count_nonzero(np.isnan(samples), axis=1)
    virtual = (count - 1) * np.true_divide(PERCENTILES, 100)[:, None]  # numpy's index of the linear method
    last = np.maximum(count - 1, 0)
    below = np.clip(np.floor(virtual), 0, last).astype(np.intp)
    above = np.minimum(below + 1, last)  # at the largest value: it twice
    groups = np.arange(samples.shape[0])
    a, b, gamma = ordered[groups, below], ordered[groups, above], virtual - np.floor(virtual)
    with np.errstate(invalid="ignore"):  # rows without values
        value = np.where(gamma >= 0.5, b - (b - a) * (1 - gamma), a + (b - a) * gamma)
    return np.where(count > 0, value, np.nan)


def load_statistics(peers: PeerTable, state, capacity: bool, classes: RequestClasses) -> tuple[Columns, Columns]:
    """The load columns since the previous record from the market ``state`` (a
    :class:`~p2pllm_abm.dynamics.MarketState`): per stage :data:`LOAD_METRICS`, per request class
    :data:`REQUEST_LOAD_METRICS` (NaN, null in the frames, where there was nothing to measure;
    utilisation null without ``capacity``)."""
    ticks = max(int(state.window_ticks), 1)
    stage, m = peers.stage, peers.n_stages  # every row: peers down or gone now served before
    served = np.bincount(stage, weights=np.asarray(state.window_served), minlength=m)
    queue = np.bincount(stage, weights=np.asarray(state.backlog), minlength=m)
    if not capacity:
        utilisation = np.full(m, np.nan)
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            utilisation = served / np.bincount(stage, weights=np.asarray(state.window_capacity), minlength=m)
    rows = min(int(state.sample_count), np.asarray(state.request_samples).shape[0])
    hops = np.asarray(state.hop_samples)[:rows]  # (ticks, clients, stages)
    hop = nan_percentiles(np.moveaxis(hops, 2, 0).reshape(m, -1))
    times = np.asarray(state.request_samples)[:rows]  # (ticks, clients): each class's row holds its clients' times
    request = nan_percentiles(np.where(classes.one_hot.T[:, None, :] > 0, times, np.nan).reshape(classes.count, -1))
    stage_columns = {"throughput": served / ticks, "utilisation": utilisation, "queued": queue,
                     **{f"hop_time_p{q}": v for q, v in zip(PERCENTILES, hop)}}
    class_columns = {"request_throughput": np.asarray(state.class_requests) / ticks,
                     **{f"request_time_p{q}": v for q, v in zip(PERCENTILES, request)}}
    return stage_columns, class_columns


@dataclass(frozen=True)
class RequestClasses:
    """Clients binned by alpha into ``count`` equal-width classes over [0, 1]."""

    count: int
    one_hot: np.ndarray  #: (clients, count)

    @classmethod
    def from_alpha(cls, client_alpha: np.ndarray, count: int) -> RequestClasses:
        index = np.minimum((np.asarray(client_alpha) * count).astype(np.int64), count - 1)
        return cls(count, np.eye(count)[index])

    def statistics(self, requests: np.ndarray, price_sum: np.ndarray, time_sum: np.ndarray) -> Columns:
        """The columns ``request_class`` and :data:`CLASS_METRICS`, one row per class, from the
        per-class sums (the path means null for a class without requests: no path to average; the
        load columns null until :func:`load_statistics` fills them in)."""
        edges = np.linspace(0.0, 1.0, self.count + 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            price, time = price_sum / requests, time_sum / requests
        return {
            "request_class": np.arange(self.count), "alpha_low": edges[:-1], "alpha_high": edges[1:],
            "clients": self.one_hot.sum(axis=0).astype(np.int64),
            "path_requests": np.array(requests),  # a copy: a view of a device array would keep it alive
            "path_price": np.where(requests > 0, price, np.nan), "path_time": np.where(requests > 0, time, np.nan),
            **{name: np.full(self.count, np.nan) for name in REQUEST_LOAD_METRICS},
        }


def statistics_frame(records: Sequence[Columns]) -> pd.DataFrame:
    """The rows of one scope's statistics of one or more records (:data:`Columns`), one record after
    another, with the :data:`NULLABLE_METRICS` as nullable floats (NaN as null). A run builds its
    frames from the records at once: a DataFrame per record costs more than the record's arithmetic."""
    return pd.DataFrame({name: (nullable if name in NULLABLE_METRICS else np.asarray)(
        np.concatenate([record[name] for record in records])) for name in records[0]})


def record_rows(records: Sequence[Columns]) -> list[int]:
    """The rows (stages, or request classes) of each record."""
    return [len(next(iter(record.values()))) for record in records]


def metric_rows(steps: Sequence[int], stage_stats: Sequence[Columns], class_stats: Sequence[Columns]) -> pd.DataFrame:
    """The metrics.parquet rows of the recorded ``steps`` (one stage and one request-class record of
    :data:`Columns` per step), built at once: every step's stage rows, then every step's
    request-class rows (a stable sort by step then puts each step's stage rows before its
    request-class rows)."""
    def scope(records: Sequence[Columns], name: str, other: str) -> pd.DataFrame:
        return statistics_frame(records).assign(
            step=np.repeat(np.asarray(steps, dtype=np.int64), record_rows(records)), scope=name, **{other: pd.NA})

    frame = pd.concat([scope(stage_stats, "stage", "request_class"), scope(class_stats, "request_class", "stage")],
                      ignore_index=True)
    integer = ["stage", "request_class", "peers", "clients"]
    frame[integer] = frame[integer].astype("Int64")
    return frame[["step", "scope", "stage", "request_class", *STAGE_METRICS, *CLASS_METRICS]]


def ledger_metric_rows(step: int, ledger: MarketLedger) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ledger's metrics.parquet rows of one recorded step: one per shard
    (:data:`SHARD_METRICS`) and one for the chain (:data:`CHAIN_METRICS`); counts and money (base
    units) as nullable integers, so that they stay exact next to the other scopes' nulls."""
    shards = ledger.shard_rows()
    integer = {"shard", "tx_submitted", "tx_included", "tx_failed"}
    shard_frame = pd.DataFrame({
        "step": np.full(len(shards), step), "scope": "shard",
        **{name: pd.array(shards[name], dtype="Int64") if name in integer else shards[name] for name in SHARD_METRICS},
    })
    row = ledger.chain_row()
    chain_frame = pd.DataFrame({
        "step": [step], "scope": "chain",
        **{name: pd.array([row[name]], dtype="Float64" if name == "stake_gini" else
                          "boolean" if name == "conserved" else "Int64") for name in CHAIN_METRICS},
    })
    return shard_frame, chain_frame


def shard_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    """The per-shard rows of a metrics table (ledger runs)."""
    rows = metrics[metrics["scope"] == "shard"]
    return rows.assign(shard=rows["shard"].astype(np.int64))


def chain_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    """The chain rows of a metrics table (ledger runs), one per recorded step."""
    return metrics[metrics["scope"] == "chain"]


def stage_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    """The per-stage rows of a metrics table (with integer ``stage`` and ``peers``)."""
    rows = metrics[metrics["scope"] == "stage"]
    return rows.assign(stage=rows["stage"].astype(np.int64), peers=rows["peers"].astype(np.int64))


def class_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    """The per-request-class rows of a metrics table (with integer ``request_class``)."""
    rows = metrics[metrics["scope"] == "request_class"]
    return rows.assign(request_class=rows["request_class"].astype(np.int64))


class StepRecords(Sequence):
    """One model variable as ``mesa.batch_run`` reads it: item ``k`` is the record of step ``k``
    (None at a step not recorded), while only the records are held (a run recorded every 100 steps
    keeps no Nones in between). Mesa's ``collect`` appends; ``collector.step`` says at which step."""

    def __init__(self, collector: PeerTableCollector):
        self.collector = collector
        self.by_step: dict[int, Any] = {}  #: step -> record, in recording order
        self.length = 0  #: the last recorded step + 1 (batch_run reads every step: no max() per read)

    def append(self, value: Any) -> None:
        self.by_step[self.collector.step] = value
        self.length = max(self.length, self.collector.step + 1)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, step):
        if isinstance(step, slice):
            return [self[k] for k in range(*step.indices(len(self)))]
        if not -len(self) <= step < len(self):
            raise IndexError(f"step {step} is beyond the last record ({len(self) - 1})")
        return self.by_step.get(step % len(self))


class PeerRecords(Sequence):
    """One step's agent records as Mesa keeps them (``(step, agent_id, *values)`` per peer, in the
    order of the agent reporters), held as the PeerTable's columns at that step: a record copies
    arrays, and the tuples are built only when read (``mesa.batch_run`` does)."""

    def __init__(self, step: int, agent_id: np.ndarray, columns: dict[str, np.ndarray]):
        self.step, self.agent_id, self.columns = step, agent_id, columns

    def __len__(self) -> int:
        return len(self.agent_id)

    def __getitem__(self, row):
        if isinstance(row, slice):
            return list(self)[row]
        return (self.step, self.agent_id[row].item(), *(values[row].item() for values in self.columns.values()))

    def __iter__(self):
        return zip(repeat(self.step), self.agent_id.tolist(), *(values.tolist() for values in self.columns.values()))


class PeerTableCollector(mesa.DataCollector):
    """Mesa's DataCollector, with agent reporters read column-wise from the PeerTable and model
    variables kept by step.

    The stock collector calls every reporter on every agent in Python (about 100 ms per collect at
    10^5 peers); this one copies the table's columns (:data:`PEER_COLUMNS`) of the present peers
    (:class:`PeerRecords`), and builds the agent-variables frame from them. Agent records cover the
    peers; ``AgentID`` is the PeerAgent's ``unique_id``. A model records every
    ``run.record_interval`` steps, and ``model_vars[name][k]`` is step ``k``'s record (None at a
    step not recorded, :class:`StepRecords`), which is how ``mesa.batch_run`` reads it; the
    model-variables frame holds the recorded steps, indexed by step.
    """

    def __init__(self, model_reporters: dict[str, Any], columns: tuple[str, ...] = PEER_COLUMNS):
        self.step = 0  #: the step being recorded
        super().__init__(model_reporters=model_reporters, agent_reporters={name: name for name in columns})

    def _new_model_reporter(self, name: str, reporter: Any) -> None:
        super()._new_model_reporter(name, reporter)
        self.model_vars[name] = StepRecords(self)

    def get_model_vars_dataframe(self) -> pd.DataFrame:
        steps = list(self.model_vars["step"].by_step)
        return pd.DataFrame({name: [values.by_step[k] for k in steps] for name, values in self.model_vars.items()},
                            index=steps)

    def _record_agents(self, model: P2PLLMModel) -> PeerRecords:
        present = model.peers.present  # free rows and peers that left have no agent
        columns = peer_columns(model.peers)
        return PeerRecords(model.steps, model.peer_unique_ids[present],
                           {name: columns[name][present] for name in self.agent_reporters})

    def collect(self, model: P2PLLMModel) -> None:
        self.step = model.steps
        records, self.agent_reporters = self.agent_reporters, {}  # Mesa's collect would list the tuples
        try:
            super().collect(model)
        finally:
            self.agent_reporters = records
        self._agent_records[model.steps] = self._record_agents(model)

    def get_agent_vars_dataframe(self) -> pd.DataFrame:
        """Mesa's frame (index ``Step, AgentID``, a column per agent reporter), from the columns."""
        records = list(self._agent_records.values())
        if not records:
            return super().get_agent_vars_dataframe()
        return pd.DataFrame({
            "Step": np.repeat(np.array([record.step for record in records], dtype=np.int64), [len(r) for r in records]),
            "AgentID": np.concatenate([record.agent_id for record in records]),
            **{name: np.concatenate([record.columns[name] for record in records]) for name in self.agent_reporters},
        }).set_index(["Step", "AgentID"])


#: the request-class metrics with a model reporter per class
CLASS_REPORTED = ("path_requests", "path_price", "path_time")


def reported_columns(stage_stats: Columns, class_stats: Columns) -> dict[str, Any]:
    """What the model reporters read at a record: every stage metric's column and every reported
    class metric's (as ``<metric>_class``), indexed by stage or class, as in the frames (a
    :data:`NULLABLE_METRICS` column's null reads ``pd.NA``): one lookup per reporter, not a pandas
    access (126 of them per record for Table 1). The items are Python numbers, which Mesa's
    ``collect`` copies at once (NumPy scalars it deep-copies one by one: half of a collect)."""
    def column(columns: Columns, name: str) -> list[Any]:
        values = columns[name].tolist()
        if name not in NULLABLE_METRICS:
            return values
        return [pd.NA if value != value else value for value in values]  # a nullable column's items: NaN reads NA
    return {**{name: column(stage_stats, name) for name in STAGE_METRICS},
            **{f"{name}_class": column(class_stats, name) for name in CLASS_REPORTED}}


def model_reporters(n_stages: int, n_classes: int) -> dict[str, Any]:
    """Model reporters ``step``, ``seed`` (``mesa.batch_run``'s rows then say which run they come
    from), ``<metric>_stage_<s>`` and ``<metric>_class_<k>`` reading the model's latest stage and
    request-class statistics."""
    reporters: dict[str, Any] = {"step": lambda m: m.steps, "seed": lambda m: m.config.seed}
    for metric in STAGE_METRICS:
        for s in range(n_stages):
            reporters[f"{metric}_stage_{s}"] = lambda m, metric=metric, s=s: m.recorder.reported[metric][s]
    for metric in CLASS_REPORTED:
        for k in range(n_classes):
            reporters[f"{metric}_class_{k}"] = lambda m, metric=metric, k=k: m.recorder.reported[f"{metric}_class"][k]
    return reporters


def allocation_status(peers: PeerTable, reading: str = "compute_share") -> dict[str, Any]:
    """Eq. 8 for every peer (:func:`~p2pllm_abm.allocation.allocation_equilibrium`) and balance;
    ``efficient = None`` for a network of spans, where eq. 7-8 (shares of single stages) do not
    apply."""
    if np.any(peers.stage_end - peers.stage_start > 1):
        return {"efficient": None, "reason": "peers serve spans of several stages; eq. 7-8 assume one stage each"}
    check = allocation_equilibrium(peers.cost, peers.stage, peers.alive, peers.n_stages, reading)
    return {"efficient": check.efficient, "peers_that_would_move": len(check.violators),
            "max_share_gain": float(check.share_gain.max(initial=0.0)),
            "capacity_per_stage": check.capacity_per_stage.tolist(), "capacity_ratio": check.capacity_ratio}


#: a run has converged at the first recorded step where every stage's relative Nash gap is this small
CONVERGENCE_GAP = 1e-3


def convergence_step(stages: pd.DataFrame, tol: float = CONVERGENCE_GAP) -> float:
    """The first recorded step at which every stage's relative Nash gap is <= ``tol`` (the
    stage rows of a metrics table); NaN if none."""
    gaps = stages.groupby("step")["relative_nash_gap"].max()
    below = gaps[gaps <= tol]
    return float(below.index[0]) if len(below) else float("nan")


def convergence_objective(stages: pd.DataFrame, steps: int) -> float:
    """What the Optuna sweep minimises: :func:`convergence_step`, or for a run that did not
    converge ``steps * (1 + final largest relative gap)``, so such runs still rank by how close
    they came."""
    step = convergence_step(stages)
    if not np.isnan(step):
        return step
    final = stages[stages["step"] == stages["step"].max()]["relative_nash_gap"].max()
    return float(steps * (1.0 + min(final, 1e6)))


def reset_peak_memory() -> None:
    """Start a new peak-memory measurement (Linux: clears the process's VmHWM; a joblib worker
    runs many jobs, so each job resets it). Elsewhere a no-op."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory_mb() -> float:
    """Peak resident memory of this process since :func:`reset_peak_memory`, in MiB (where the
    peak cannot be reset, since the process started)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def request_summary(outcomes: np.ndarray) -> dict[str, Any]:
    """The ``requests`` block of summary.json from the cumulative outcome counts
    (:data:`~p2pllm_abm.load.OUTCOMES`): ``sent = served + failed_over + dropped``."""
    count = dict(zip(OUTCOMES, np.asarray(outcomes).round().astype(np.int64).tolist()))
    reasons = {name.removeprefix("dropped_"): count[name] for name in OUTCOMES if name.startswith("dropped_")}
    dropped = sum(reasons.values())
    return {"sent": count["served"] + count["failed_over"] + dropped, "served": count["served"],
            "failed_over": count["failed_over"], "dropped": dropped, "dropped_by_reason": reasons}


class RunSnapshot(NamedTuple):
    """What ``summary.json`` reads of a run as of its last record (:meth:`Recorder.snapshot
    <p2pllm_abm.recorder.Recorder.snapshot>`): the outputs read this, not the model."""

    config: Any  #: the run's Config
    steps: int
    stage_stats: pd.DataFrame  #: the last record's per-stage statistics
    class_stats: pd.DataFrame  #: the last record's per-request-class statistics
    outcomes: np.ndarray  #: cumulative requests per outcome (:data:`~p2pllm_abm.load.OUTCOMES`)
    churn: dict[str, int]  #: joins, leaves, ..., peers present and alive, table rows
    allocation: dict[str, Any]  #: :func:`allocation_status`
    welfare: dict[str, Any]  #: :func:`~p2pllm_abm.welfare.welfare_summary`, or a note at alpha = 0
    security_layers: dict[str, Any]  #: the ``ledger`` and ``security`` blocks, where on


def summary(run: RunSnapshot | P2PLLMModel, wall_time_s: float) -> dict[str, Any]:
    """summary.json of a run (a :class:`RunSnapshot`, or a model: its recorder's snapshot) that took
    ``wall_time_s``."""
    snap = run if isinstance(run, RunSnapshot) else run.recorder.snapshot()
    final, classes = snap.stage_stats, snap.class_stats
    return {
        "config": OmegaConf.to_container(OmegaConf.structured(snap.config)),
        "steps": snap.steps,
        "final": {
            "peers_per_stage": final["peers"].tolist(),
            "mean_price_per_stage": final["mean_price"].tolist(),
            "compute_share_per_stage": final["compute_share"].tolist(),
            "nash_gap_per_stage": final["nash_gap"].tolist(),
            "relative_nash_gap_per_stage": final["relative_nash_gap"].tolist(),
            "path_price_per_class": classes["path_price"].tolist(),
            "path_time_per_class": classes["path_time"].tolist(),
            "throughput_per_stage": final["throughput"].tolist(),
            "utilisation_per_stage": final["utilisation"].tolist(),
            "request_time_p95_per_class": classes["request_time_p95"].tolist(),
        },
        "requests": request_summary(snap.outcomes),
        "churn": snap.churn,
        "allocation": snap.allocation,
        "welfare": snap.welfare,
        "wall_time_s": wall_time_s,
        "steps_per_s": snap.steps / wall_time_s if wall_time_s > 0 else None,
        "peak_memory_mb": peak_memory_mb(),
        **snap.security_layers,
    }


def label_columns(frame: pd.DataFrame) -> list[str]:
    """The leading columns of an ensemble job's frame that name its members (``replicate`` and the
    ensemble's parameters, before ``step``; :mod:`p2pllm_abm.ensemble`); none for a single run."""
    return list(frame.columns[: frame.columns.get_loc("step")])


def run_config(summary: dict[str, Any]) -> dict[str, Any]:
    """The config in a run directory's summary.json; an ensemble job's: its first member's."""
    return summary["members"][0]["config"] if "members" in summary else summary["config"]


def write_run_outputs(model: P2PLLMModel, outdir: Path, wall_time_s: float) -> dict[str, Path]:
    """Write metrics.parquet, peers.parquet and summary.json (and, with the ledger on, its journal
    as ledger.parquet) into ``outdir``; return their paths."""
    journal = model.ledger.ledger.journal_frame() if model.ledger is not None else None
    return write_outputs(model, summary(model, wall_time_s), outdir, journal)


def write_outputs(run: Any, record: dict[str, Any], outdir: Path, journal: pd.DataFrame | None = None) -> dict[str, Path]:
    """Write a run directory: ``run``'s (a model's or an ensemble's) metrics, peers and events
    frames as parquet, ``record`` as summary.json (strict JSON) and a ledger ``journal`` if given;
    return their paths."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = {name: outdir / name for name in ("metrics.parquet", "peers.parquet", "events.parquet", "summary.json")}
    write_parquet(run.metrics_frame(), paths["metrics.parquet"])
    write_parquet(run.peers_frame(), paths["peers.parquet"])
    write_parquet(run.events_frame(), paths["events.parquet"])
    write_text_atomic(paths["summary.json"], json.dumps(strict_json(record), indent=2, allow_nan=False))
    if journal is not None:
        paths["ledger.parquet"] = outdir / "ledger.parquet"
        write_parquet(journal, paths["ledger.parquet"])
    return paths


#: why a summary figure is not a finite number, by kind
NON_FINITE_REASONS = {
    "nan": "undefined: no data (e.g. a request class that sent no request)",
    "inf": "unbounded: no best response (a peer alone in its stage, or alpha = 0)",
    "-inf": "unbounded below",
}


def strict_json(tree: Any) -> Any:
    """``tree`` (summary.json's content) as strict JSON: every non-finite number becomes null, and a
    top-level ``non_finite`` maps each such field's path to the reason (:data:`NON_FINITE_REASONS`)."""
    reasons: dict[str, str] = {}

    def clean(node: Any, path: str) -> Any:
        if isinstance(node, dict):
            return {key: clean(value, f"{path}.{key}" if path else str(key)) for key, value in node.items()}
        if isinstance(node, (list, tuple)):
            return [clean(value, f"{path}[{k}]") for k, value in enumerate(node)]
        if isinstance(node, float) and not np.isfinite(node):
            reasons[path] = NON_FINITE_REASONS["nan" if np.isnan(node) else "inf" if node > 0 else "-inf"]
            return None
        if node is pd.NA:
            reasons[path] = NON_FINITE_REASONS["nan"]
            return None
        return node

    cleaned = clean(tree, "")
    return {**cleaned, "non_finite": reasons} if reasons else cleaned


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """``frame`` to ``path`` atomically (:func:`~p2pllm_abm.paths.atomic_path`)."""
    with atomic_path(path) as temporary:
        frame.to_parquet(temporary, index=False)
