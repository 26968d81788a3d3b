"""Calibrating the settings a paper leaves unstated against its published checkpoint table.

The paper's Table 1 (:data:`p2pllm_abm.paper.PAPER_TABLE1`) gives peers and mean price per layer
at five iterations, but not the temperature ``T``, nor the prices it starts from (section 5.2 says
1, the table's step 0 says about 5.4), nor the effective step size. :func:`calibrate` finds the
listed config fields that make the simulated table match the published one, and says how well.

Three facts make this cheap and exact:

1. **The allocation does not depend on prices.** Eq. 7-8 move peers by compute share (or head
   count, :mod:`p2pllm_abm.allocation`), and the model's reallocation draws its candidates from
   its own generator; so each seed's sequence of stage assignments is computed once
   (:func:`allocation_schedule`, by the model's own reallocation phase) and reused for every
   candidate parameter.
2. **Prices do not depend on requests** under the price rules that read expected revenue (eq. 5,
   best response, fixed point): the trajectory is a deterministic function of the schedule, the
   costs and the parameters. :func:`replay_table` replays it as one jitted scan over the
   reallocation periods (``vmap``-able over parameter sets and seeds) and gives the model's
   table to rounding (``tests/test_calibration.py`` checks it against full runs).
3. **The steady state is an equilibrium.** The last checkpoint is fitted first by least squares
   on the equilibrium's stage means, with the Jacobian from the implicit function theorem
   (:func:`p2pllm_abm.equilibrium.sensitivities`); every fitted field is then refined on the
   replayed trajectory by Nelder-Mead (derivative-free: the trajectory has kinks where the
   allocation changes), starting from the best point of a coarse grid for the trajectory-only
   fields (start price, step size).

Each seed (one draw of costs and positions) is fitted on its own; a parameter's ``value`` is the
median over seeds and ``low``/``high`` the 5th and 95th percentiles (a 90% interval over cost
draws). The loss is the mean squared *relative* error of the price cells. Node rows do not depend
on the market fields: they are compared per allocation reading (``compute_share``, eq. 7 as
written, and ``head_count``), after fitting the allocation fields in :data:`ALLOCATION_FITTABLE`
on them by a grid (node counts change in steps, so there is no gradient to follow); the reading
with the smaller node error is the one the prices are fitted under, unless one is named.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from functools import partial
from typing import Any, Iterable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from scipy.optimize import least_squares, minimize
from tqdm.auto import tqdm

from .config import ALLOCATION_READINGS, Config, field_value, load_config, price_rule_options
from .registries import price_rules
from .economics import MarketParams, market_params
from .equilibrium import price_update, sensitivities, solve_equilibrium
from .model import P2PLLMModel
from .paper import REFERENCES

#: fields :func:`calibrate` can fit, and the map to an unbounded search coordinate
FITTABLE = {
    "market.temperature": "log",
    "market.alpha": "logit",
    "market.eta": "log",
    "network.initial_price": "log",
    "market.marginal_cost": "log",
}
#: allocation fields calibrate can fit, on the node rows alone (a grid: node counts are steps in them)
ALLOCATION_FITTABLE = {"allocation.move_fraction": np.geomspace(0.005, 0.5, 21)}
#: fields that move the equilibrium (fitted first on the last checkpoint by implicit differentiation)
STEADY_STATE = ("market.temperature", "market.alpha")
def replay_rules() -> tuple[str, ...]:
    """The price rules a schedule can be replayed with: deterministic maps of prices that read no
    stage blocks (the blocks change with every reallocation)."""
    return tuple(name for name, rule in price_rules.items() if rule.solver and not rule.reads_blocks)


class Schedule(NamedTuple):
    """One seed's network and allocation: ``stages[k]`` is every peer's stage after the ``k``-th
    reallocation (``stages[0]`` at start), ``period`` steps apart."""

    stages: np.ndarray  #: (periods + 1, n) int
    cost: np.ndarray  #: (n,) the costs clients weigh
    alive: np.ndarray  #: (n,)
    period: int


def _with(cfg: Config, values: dict[str, float]) -> Config:
    """``cfg`` with dotted ``section.field`` values replaced (validated by the model later)."""
    for name, value in values.items():
        section, field = name.split(".")
        cfg = dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **{field: value})})
    return cfg


def allocation_schedule(cfg: Config, steps: int) -> Schedule:
    """Every reallocation of a run of ``steps`` steps, by the model's own reallocation phase (same
    seed, same generator, same moves: prices play no part in eq. 7-8)."""
    model = P2PLLMModel(_with(cfg, {"clients.count": 0}))
    period = cfg.allocation.period if cfg.allocation.enabled else max(steps, 1)
    stages = [model.peers.stage.copy()]
    for _ in range(steps // period):
        if cfg.allocation.enabled:
            model.reallocation()
        stages.append(model.peers.stage.copy())
    return Schedule(np.array(stages), np.asarray(model.claimed_cost), model.peers.alive.copy(), period)


@partial(jax.jit, static_argnames=("rule", "period", "n_stages"))
def replay_prices(stages: jax.Array, cost: jax.Array, alive: jax.Array, params: MarketParams,
                  initial_price: float | jax.Array, options: dict, rule: str, period: int,
                  n_stages: int) -> jax.Array:
    """Prices after each reallocation period, ``(periods + 1, n)`` (row 0: the start): period ``k``
    runs ``period`` updates of ``rule`` on the stages ``stages[k]``, as the model's steps do."""
    start = jnp.full(cost.shape, initial_price, dtype=float)

    def one_period(price, stage):
        def update(_, p):
            return price_update(rule, p, cost, stage, alive, params, n_stages, None, options)

        price = jax.lax.fori_loop(0, period, update, price)
        return price, price

    _, prices = jax.lax.scan(one_period, start, stages[:-1])
    return jnp.concatenate([start[None], prices])


def stage_means(price: jax.Array, stage: jax.Array, alive: jax.Array, n_stages: int) -> jax.Array:
    """Mean price of the live peers of every stage."""
    total = jax.ops.segment_sum(jnp.where(alive, price, 0.0), stage, num_segments=n_stages)
    count = jax.ops.segment_sum(alive.astype(float), stage, num_segments=n_stages)
    return total / count


class Table(NamedTuple):
    """A checkpoint table: peers and mean price per stage at ``steps``."""

    steps: tuple[int, ...]
    nodes: np.ndarray  #: (checkpoints, stages) int
    prices: np.ndarray  #: (checkpoints, stages)


#: the columns of a table file (:func:`read_table`); ``nodes`` or ``avg_price`` may be left out
TABLE_COLUMNS = ("iteration", "layer", "nodes", "avg_price")


def read_table(path: str | Path) -> Table:
    """A checkpoint table from a CSV file in the shape of the paper's Table 1: columns ``iteration,
    layer, nodes, avg_price``, ``layer`` 1-based, one row per checkpoint and layer; either metric
    column may be absent (its cells are NaN in the :class:`Table`). A malformed file is refused in
    one line naming the line and column."""
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise ValueError(f"--table {path}: cannot be read as CSV ({error})") from None
    columns = [c.strip() for c in frame.columns]
    frame.columns = columns
    unknown = [c for c in columns if c not in TABLE_COLUMNS]
    missing = [c for c in ("iteration", "layer") if c not in columns]
    if unknown or missing or not ({"nodes", "avg_price"} & set(columns)):
        raise ValueError(f"--table {path}: columns {columns} are invalid: allowed iteration, layer and at least one "
                         f"of nodes, avg_price (no others)")
    if frame.empty:
        raise ValueError(f"--table {path}: no rows: allowed one row per checkpoint and layer")

    def number(line: int, column: str, text: str, integer: bool, low: float) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not np.isfinite(value) or value < low or (integer and value != int(value)):
            kind = f"an integer >= {low:g}" if integer else f"a finite number > {low:g}"
            raise ValueError(f"--table {path} line {line}, column {column}: {text!r} is invalid: allowed {kind}")
        return value

    rows = {}
    for k, record in enumerate(frame.to_dict("records")):
        line = k + 2  # the header is line 1
        step = int(number(line, "iteration", record["iteration"], True, 0))
        layer = int(number(line, "layer", record["layer"], True, 1))
        if (step, layer) in rows:
            raise ValueError(f"--table {path} line {line}, column layer: iteration {step} layer {layer} appears "
                             f"twice: allowed one row per checkpoint and layer")
        nodes = number(line, "nodes", record["nodes"], True, 0) if "nodes" in record else np.nan
        price = number(line, "avg_price", record["avg_price"], False, 0) if "avg_price" in record else np.nan
        if "avg_price" in record and price <= 0:
            raise ValueError(f"--table {path} line {line}, column avg_price: {record['avg_price']!r} is invalid: "
                             f"allowed a finite number > 0")
        rows[step, layer] = (nodes, price)
    steps = sorted({step for step, _ in rows})
    layers = max(layer for _, layer in rows)
    for step in steps:
        absent = [layer for layer in range(1, layers + 1) if (step, layer) not in rows]
        if absent:
            raise ValueError(f"--table {path}, column layer: iteration {step} has no row for layer {absent[0]}: "
                             f"allowed every layer 1-{layers} at every iteration")
    nodes = np.array([[rows[s, layer][0] for layer in range(1, layers + 1)] for s in steps])
    prices = np.array([[rows[s, layer][1] for layer in range(1, layers + 1)] for s in steps])
    return Table(tuple(steps), nodes, prices)


def load_table(table: str) -> Table:
    """A table by name (:data:`p2pllm_abm.paper.REFERENCES`) or from a ``.csv`` file (:func:`read_table`)."""
    return read_table(table) if str(table).endswith(".csv") else published_table(table)


def published_table(name: str) -> Table:
    """A published table shipped in :mod:`p2pllm_abm.paper`."""
    if name not in REFERENCES:
        raise ValueError(f"table = {name!r} is invalid: allowed one of {sorted(REFERENCES)} or a .csv file "
                         f"(columns {', '.join(TABLE_COLUMNS)})")
    reference = REFERENCES[name]
    steps = tuple(sorted(reference))
    return Table(steps, np.array([reference[s][0] for s in steps]), np.array([reference[s][1] for s in steps]))


def _rows(schedule: Schedule, steps: Sequence[int]) -> np.ndarray:
    for step in steps:
        if step % schedule.period:
            raise ValueError(f"table step {step} is invalid for calibration: allowed multiples of "
                             f"allocation.period = {schedule.period} (the replay records at reallocations)")
    return np.array(steps) // schedule.period


def node_rows(schedule: Schedule, steps: Sequence[int], n_stages: int) -> np.ndarray:
    """Peers per stage at ``steps`` (they depend on the schedule only)."""
    return np.array([np.bincount(schedule.stages[k][schedule.alive], minlength=n_stages)
                     for k in _rows(schedule, steps)])


def replay_table(cfg: Config, schedule: Schedule, steps: Sequence[int]) -> Table:
    """The checkpoint table of ``cfg`` on ``schedule``, replayed (see the module docstring)."""
    rows = _rows(schedule, steps)
    n_stages = cfg.network.stages
    prices = _price_rows(cfg, schedule, jnp.asarray(rows), market_params(cfg.market), cfg.network.initial_price)
    return Table(tuple(steps), node_rows(schedule, steps, n_stages), np.asarray(prices))


def _price_rows(cfg: Config, schedule: Schedule, rows: jax.Array, params: MarketParams, initial_price) -> jax.Array:
    rule = cfg.market.update_rule
    if rule not in replay_rules():
        raise ValueError(f"market.update_rule = {rule!r} is invalid for calibration: allowed one of {replay_rules()}")
    stages, alive = jnp.asarray(schedule.stages), jnp.asarray(schedule.alive)
    prices = replay_prices(stages, jnp.asarray(schedule.cost), alive, params, initial_price, price_rule_options(cfg),
                           rule, schedule.period, cfg.network.stages)
    return jax.vmap(lambda p, s: stage_means(p, s, alive, cfg.network.stages))(prices[rows], stages[rows])


def price_loss(ours: np.ndarray, paper: np.ndarray) -> float:
    """Mean squared relative error of the price cells (``inf`` when a price is not finite)."""
    ours = np.asarray(ours, dtype=float)
    if not np.all(np.isfinite(ours)):
        return math.inf
    return float(np.mean(((ours - paper) / paper) ** 2))


# -- search coordinates -------------------------------------------------------------------------------

def _to_search(name: str, value: float) -> float:
    return math.log(value) if FITTABLE[name] == "log" else math.log(value / (1.0 - value))


def _from_search(name: str, z: float) -> float:
    return math.exp(z) if FITTABLE[name] == "log" else 1.0 / (1.0 + math.exp(-z))


def _market_with(params: MarketParams, values: dict[str, Any]) -> MarketParams:
    """``params`` with the ``market.*`` entries of ``values`` (same names, floats or traced)."""
    return params._replace(**{k.split(".")[1]: v for k, v in values.items() if k.startswith("market.")})


# -- the fit of one seed ----------------------------------------------------------------------------

def fit_steady_state(cfg: Config, schedule: Schedule, target: np.ndarray, names: Sequence[str],
                     start: dict[str, float]) -> dict[str, float]:
    """Least squares of the equilibrium's stage means (on the last allocation) against ``target``
    over the ``names`` in :data:`STEADY_STATE`, with the Jacobian by implicit differentiation."""
    names = [n for n in names if n in STEADY_STATE]
    if not names:
        return {}
    stage, alive, cost = schedule.stages[-1], schedule.alive, schedule.cost
    n_stages = cfg.network.stages
    base = _market_with(market_params(cfg.market), start)
    members = np.array([(stage == s) & alive for s in range(n_stages)], dtype=float)
    members /= members.sum(axis=1, keepdims=True)
    warm = {"price": np.full(len(cost), 2.0)}

    def solve(z):
        values = {n: _from_search(n, zi) for n, zi in zip(names, z)}
        params = _market_with(base, values)
        run = solve_equilibrium("newton", warm["price"], cost, stage, alive, params, n_stages)
        if not run.converged:
            run = solve_equilibrium("newton", np.full(len(cost), 2.0), cost, stage, alive, params, n_stages)
        warm["price"] = np.asarray(run.price)
        return values, params, np.asarray(run.price)

    def residuals(z):
        _, _, price = solve(z)
        return (members @ price - target) / target

    def jacobian(z):
        values, params, price = solve(z)
        slopes = sensitivities(price, cost, stage, alive, params, n_stages)
        columns = []
        for name in names:
            d_price = np.asarray(slopes.d_temperature if name == "market.temperature" else slopes.d_alpha)
            v = values[name]
            chain = v if FITTABLE[name] == "log" else v * (1.0 - v)  # d value / d search coordinate
            columns.append(members @ d_price * chain / target)
        return np.column_stack(columns)

    z0 = np.array([_to_search(n, start[n]) for n in names])
    result = least_squares(residuals, z0, jac=jacobian, method="lm", xtol=1e-12, ftol=1e-12)
    return {n: _from_search(n, zi) for n, zi in zip(names, result.x)}


#: the coarse grid for the trajectory-only fields, before Nelder-Mead
_GRID = {"market.eta": np.geomspace(1e-2, 1e3, 11), "network.initial_price": np.geomspace(0.1, 50.0, 10)}


def _prices_function(cfg: Config, schedule: Schedule, paper: Table, names: Sequence[str]):
    """The replayed price rows at the paper's steps as a function of one vector of ``names``'
    values (``vmap`` it for many)."""
    rows = jnp.asarray(_rows(schedule, paper.steps))
    base = market_params(cfg.market)

    def prices_at(values: jax.Array) -> jax.Array:
        named = dict(zip(names, values))
        start = named.get("network.initial_price", cfg.network.initial_price)
        return _price_rows(cfg, schedule, rows, _market_with(base, named), start)

    return prices_at


def fit_seed(cfg: Config, schedule: Schedule, paper: Table, names: Sequence[str]) -> tuple[dict[str, float], float]:
    """Fit ``names`` for one seed: steady state by implicit differentiation, then Nelder-Mead on
    the replayed table from the best grid point. Returns the values and the price loss."""
    start = {n: float(field_value(cfg, n)) for n in names}
    start.update(fit_steady_state(cfg, schedule, paper.prices[-1], names, start))
    prices_at = _prices_function(cfg, schedule, paper, names)
    batched = jax.jit(jax.vmap(prices_at))
    trajectory = [n for n in names if n in _GRID]
    if trajectory:
        mesh = np.array(np.meshgrid(*[_GRID[n] for n in trajectory], indexing="ij")).reshape(len(trajectory), -1).T
        candidates = np.tile([start[n] for n in names], (len(mesh), 1))
        for k, name in enumerate(trajectory):
            candidates[:, names.index(name)] = mesh[:, k]
        losses = [price_loss(p, paper.prices) for p in np.asarray(batched(jnp.asarray(candidates)))]
        start = dict(zip(names, candidates[int(np.argmin(losses))]))
    single = jax.jit(prices_at)

    def objective(z):
        values = jnp.asarray([_from_search(n, zi) for n, zi in zip(names, z)])
        return price_loss(single(values), paper.prices)

    z0 = np.array([_to_search(n, start[n]) for n in names])
    result = minimize(objective, z0, method="Nelder-Mead",
                      options={"xatol": 1e-4, "fatol": 1e-10, "maxfev": 200 * len(names), "adaptive": True})
    return {n: _from_search(n, zi) for n, zi in zip(names, result.x)}, float(result.fun)


# -- the whole calibration --------------------------------------------------------------------------

def _node_rmse(cfg: Config, paper: Table, seed: int, values: dict[str, float]) -> tuple[float, bool]:
    """Node-row RMSE of one seed against the paper, and whether its last two rows equal the paper's."""
    run = dataclasses.replace(_with(cfg, values), seed=seed)
    nodes = node_rows(allocation_schedule(run, paper.steps[-1]), paper.steps, cfg.network.stages)
    return float(np.sqrt(np.mean((nodes - paper.nodes) ** 2))), bool(np.array_equal(nodes[-2:], paper.nodes[-2:]))


def reading_fit(cfg: Config, paper: Table, seeds: Iterable[int], names: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """For each allocation reading: the allocation ``names`` (:data:`ALLOCATION_FITTABLE`) fitted on
    the node rows (per seed, the grid value with the smallest RMSE; ``values`` holds their
    medians, ``per_seed`` the draws), then at those values the node rows' RMSE against the paper
    (mean over seeds) and the share of seeds whose last two node rows equal the paper's."""
    seeds = list(seeds)
    out = {}
    for reading in ALLOCATION_READINGS:
        base = _with(cfg, {"allocation.reading": reading})
        per_seed = {name: [] for name in names}
        for name in names:
            for seed in seeds:
                errors = [_node_rmse(base, paper, seed, {name: float(v)})[0] for v in ALLOCATION_FITTABLE[name]]
                per_seed[name].append(float(ALLOCATION_FITTABLE[name][int(np.argmin(errors))]))
        values = {name: float(np.median(draws)) for name, draws in per_seed.items()}
        fits = [_node_rmse(base, paper, seed, values) for seed in seeds]
        out[reading] = {"node_rmse": float(np.mean([f[0] for f in fits])),
                        "final_rows_exact_share": float(np.mean([f[1] for f in fits])),
                        "values": values, "per_seed": per_seed}
    return out


def calibrate(table: str, fit: Sequence[str], fixed: dict[str, float] | None = None, seeds: Sequence[int] = range(8),
              reading: str = "auto", experiment: str | None = None, overrides: Sequence[str] = (),
              progress: bool = False) -> dict[str, Any]:
    """Fit the config fields ``fit`` so that the simulated checkpoint table matches the published
    ``table``, holding ``fixed`` (``{field: value}``) and the experiment's other settings. Returns
    the dict written as ``calibration.json`` (see :func:`write_calibration`)."""
    fixed = dict(fixed or {})
    names = list(fit)
    for name in names:
        if name not in FITTABLE and name not in ALLOCATION_FITTABLE:
            raise ValueError(f"--fit {name!r} is invalid: allowed any of {sorted([*FITTABLE, *ALLOCATION_FITTABLE])}")
    if len(set(names)) != len(names) or set(names) & set(fixed):
        raise ValueError(f"--fit {names} and --fixed {sorted(fixed)} are invalid: allowed distinct fields, none both")
    paper = load_table(table)
    from_file = str(table).endswith(".csv")
    if from_file and experiment is None:
        raise ValueError(f"--experiment is missing: allowed the experiment the table file {table} describes "
                         "(conf/experiment/<name>.yaml), required with a table file")
    absent = [name for name, cells in (("nodes", paper.nodes), ("avg_price", paper.prices)) if np.isnan(cells).any()]
    if absent:
        raise ValueError(f"--table {table}: column {absent[0]} is absent: allowed tables with both nodes and "
                         "avg_price for now (the fit reads the node rows for the reading and the prices for the "
                         "market fields)")
    if not from_file:
        experiment = experiment or table
    base = load_config(experiment, overrides=[*overrides, *(f"{k}={v}" for k, v in fixed.items())])
    if paper.nodes.shape[1] != base.network.stages:
        raise ValueError(f"--table {table}: {paper.nodes.shape[1]} layers is invalid: allowed network.stages = "
                         f"{base.network.stages} of experiment {experiment}")
    if reading != "auto" and reading not in ALLOCATION_READINGS:
        raise ValueError(f"--reading {reading!r} is invalid: allowed 'auto' or one of {ALLOCATION_READINGS}")
    seeds = list(seeds)
    allocation_names = [n for n in names if n in ALLOCATION_FITTABLE]
    market_names = [n for n in names if n in FITTABLE]
    readings = reading_fit(base, paper, seeds, allocation_names)
    if reading == "auto":
        reading = min(readings, key=lambda r: readings[r]["node_rmse"])
    base = _with(base, {"allocation.reading": reading, **readings[reading]["values"]})
    per_seed = []
    for k, seed in enumerate(tqdm(seeds, desc="calibrate", unit="seed", disable=not progress)):
        # each seed on its own: its own allocation fields (fitted on its node rows), then its price fit
        own = {name: readings[reading]["per_seed"][name][k] for name in allocation_names}
        cfg = _with(dataclasses.replace(base, seed=seed), own)
        schedule = allocation_schedule(cfg, paper.steps[-1])
        values, loss = (fit_seed(cfg, schedule, paper, market_names) if market_names else
                        ({}, price_loss(replay_table(cfg, schedule, paper.steps).prices, paper.prices)))
        values.update(own)
        per_seed.append({"seed": seed, "values": values, "loss": loss})
    parameters = {}
    for name in names:
        draws = np.array([run["values"][name] for run in per_seed])
        value = readings[reading]["values"][name] if name in allocation_names else float(np.median(draws))
        parameters[name] = {"value": value, "low": float(np.quantile(draws, 0.05)),
                            "high": float(np.quantile(draws, 0.95))}
    calibrated = _with(dataclasses.replace(base, seed=seeds[0]), {n: p["value"] for n, p in parameters.items()})
    literal = dataclasses.replace(load_config(experiment, overrides=list(overrides)), seed=seeds[0])
    fitted_table = replay_table(calibrated, allocation_schedule(calibrated, paper.steps[-1]), paper.steps)
    literal_table = replay_table(literal, allocation_schedule(literal, paper.steps[-1]), paper.steps)
    return {
        "table_name": table,
        "experiment": experiment,
        "user_overrides": list(overrides),
        "parameters": parameters,
        "fixed": fixed,
        "reading": reading,
        "readings": readings,
        "loss": price_loss(fitted_table.prices, paper.prices),
        "literal_loss": price_loss(literal_table.prices, paper.prices),
        "seeds": seeds,
        "per_seed": per_seed,
        "table": _table_dict(fitted_table, paper),
        "literal_table": _table_dict(literal_table, paper),
        "overrides": [*overrides, *(f"{k}={v}" for k, v in fixed.items()), f"allocation.reading={reading}",
                      *(f"{n}={p['value']!r}" for n, p in parameters.items())],
    }


def _table_dict(ours: Table, paper: Table) -> dict[str, Any]:
    return {"steps": list(ours.steps), "nodes": ours.nodes.tolist(), "prices": ours.prices.tolist(),
            "paper_nodes": paper.nodes.tolist(), "paper_prices": paper.prices.tolist()}


def trajectory(cfg: Config, steps: int) -> pd.DataFrame:
    """Peers and mean price per stage after every reallocation period up to ``steps`` (replayed):
    columns ``step, stage, peers, mean_price``."""
    schedule = allocation_schedule(cfg, steps)
    rows = np.arange(len(schedule.stages))
    table = replay_table(cfg, schedule, list(rows * schedule.period))
    return pd.DataFrame([{"step": int(step), "stage": s, "peers": int(table.nodes[k, s]),
                          "mean_price": float(table.prices[k, s])}
                         for k, step in enumerate(table.steps) for s in range(cfg.network.stages)])


def calibrated_config(result: dict[str, Any], seed: int | None = None) -> Config:
    """The experiment's config at the calibrated values (``result`` from :func:`calibrate`)."""
    cfg = load_config(result["experiment"], overrides=result["overrides"])
    return cfg if seed is None else dataclasses.replace(cfg, seed=seed)
