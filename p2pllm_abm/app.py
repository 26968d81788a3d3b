"""The interactive dashboard: Mesa's SolaraViz over :class:`~p2pllm_abm.model.P2PLLMModel`.

    make dashboard          # solara run p2pllm_abm.app --host 127.0.0.1: prints the address

The sidebar holds the model's parameters (the config's field names as keywords, see
:func:`~p2pllm_abm.model.model_config`), Reset / Play / Step, and the step count. Four panels
follow the model as it steps:

- :func:`PriceAndPeers`: each layer's mean price and peer count, step by step (eq. 5 and 7-8);
- :func:`NetworkView`: every peer at its position, one column per layer, coloured by price on a
  quantile scale (one expensive peer does not wash the rest out);
- :func:`ParetoView`: the exact Pareto set of (total price, total time) paths at current prices,
  the supported points (Alg. 2's weighted-sum optima for some alpha) and the path a client with
  the chosen alpha takes;
- :func:`NashGapView`: each layer's relative Nash gap at current prices (eq. 6's certificate).

Needs the ``viz`` extra (``pip install -e '.[viz]'``; ``make`` installs it).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import solara
from matplotlib.figure import Figure
from mesa.visualization import SolaraViz
from mesa.visualization.utils import update_counter

from .equilibrium import solver_rules
from .registries import mechanisms
from .figures import quantile_scale
from .model import P2PLLMModel
from .paper import layer_name

#: the sidebar's controls, passed to the model as keywords on Reset (fixed values need no control)
MODEL_PARAMS = {
    "alpha": {"type": "SliderFloat", "value": 0.5, "min": 0.0, "max": 1.0, "step": 0.05,
              "label": "alpha (clients' weight on price)"},
    "eta": {"type": "SliderFloat", "value": 1.0, "min": 0.1, "max": 10.0, "step": 0.1, "label": "eta (price step)"},
    "temperature": {"type": "SliderFloat", "value": 1.0, "min": 0.1, "max": 5.0, "step": 0.1,
                    "label": "T (choice temperature)"},
    "update_rule": {"type": "Select", "value": "gradient", "values": list(solver_rules()), "label": "price update rule"},
    "peers": {"type": "SliderInt", "value": 200, "min": 20, "max": 2000, "step": 20, "label": "peers"},
    "stages": {"type": "SliderInt", "value": 4, "min": 1, "max": 12, "step": 1, "label": "stages (layers)"},
    "seed": {"type": "InputText", "value": "0", "label": "seed"},
    "ledger.enabled": {"type": "Checkbox", "value": False, "label": "ledger (stake, contracts)"},
    "adversary.fraction": {"type": "SliderFloat", "value": 0.0, "min": 0.0, "max": 0.5, "step": 0.05,
                           "label": "dishonest peers (needs the ledger)"},
    "verification.mechanism": {"type": "Select", "value": "none", "values": list(mechanisms.names()),
                               "label": "verification (needs the ledger)"},
}


def initial_parameters() -> dict:
    """The controls' starting values, as model keywords."""
    return {name: control["value"] for name, control in MODEL_PARAMS.items()}


def _layers(model: P2PLLMModel) -> list[str]:
    return [layer_name(stage) for stage in range(model.peers.n_stages)]


@solara.component
def PriceAndPeers(model: P2PLLMModel):
    """Each layer's mean price and number of live peers at every recorded step."""
    update_counter.get()
    frame = model.datacollector.get_model_vars_dataframe()
    figure = Figure(figsize=(5.4, 3.6), layout="constrained")
    price_ax, peers_ax = figure.subplots(2, 1, sharex=True)
    for stage, layer in enumerate(_layers(model)):
        price_ax.plot(frame["step"], frame[f"mean_price_stage_{stage}"], label=layer)
        peers_ax.plot(frame["step"], frame[f"peers_stage_{stage}"], label=layer)
    price_ax.set(ylabel="mean price (per request)", title="Price and peers per layer")
    peers_ax.set(xlabel="step", ylabel="live peers")
    price_ax.legend(fontsize="small", ncol=min(4, model.peers.n_stages))
    solara.FigureMatplotlib(figure, format="png")


@solara.component
def NetworkView(model: P2PLLMModel):
    """Every present peer at its position, in its first layer's column, coloured by price (live
    peers filled, down peers hollow)."""
    update_counter.get()
    peers = model.peers
    here = np.flatnonzero(peers.present)
    x = peers.stage[here] + 0.1 + 0.8 * peers.position[here, 0]
    y = peers.position[here, 1]
    norm = quantile_scale(peers.price[peers.alive])
    figure = Figure(figsize=(5.4, 3.6), layout="constrained")
    ax = figure.subplots()
    live = peers.alive[here]
    points = ax.scatter(x[live], y[live], c=peers.price[here][live], cmap="viridis", norm=norm, s=18)
    ax.scatter(x[~live], y[~live], facecolors="none", edgecolors="grey", s=18, label="down")
    figure.colorbar(points, ax=ax, label="price (per request; 5th-95th percentile scale)", extend="both")
    ax.set_xticks(np.arange(peers.n_stages) + 0.5, _layers(model))
    ax.set(xlim=(0, peers.n_stages), ylim=(0, 1), ylabel="position (unit square, y)",
           title=f"Network: {live.sum()} live peers at step {model.steps}")
    solara.FigureMatplotlib(figure, format="png")


def weighted_sum_choice(model: P2PLLMModel, frontier: pd.DataFrame, alpha: float) -> tuple[float, float]:
    """``(total price, total time)`` of the path a client with ``alpha`` takes (Alg. 2), read off
    the model's Pareto set ``frontier`` (``pareto_frontier().to_frame()``; the weighted-sum optimum
    is one of its supported points)."""
    _, path = model.route(alpha=alpha)
    row = frontier[frontier["path"] == tuple(path)]
    if row.empty:  # a tie between supported points: the one whose alpha range holds alpha
        supported = frontier[frontier["supported"]]
        row = supported[(supported["alpha_low"] <= alpha) & (alpha <= supported["alpha_high"])]
    return float(row["price"].iloc[0]), float(row["time"].iloc[0])


@solara.component
def ParetoView(model: P2PLLMModel):
    """The exact Pareto set of (total price, total time) paths, its supported points, and the
    weighted-sum choice of a client whose alpha the slider sets."""
    update_counter.get()
    alpha = solara.use_reactive(float(model.config.market.alpha))
    frontier = model.pareto_frontier().to_frame()
    price, time = weighted_sum_choice(model, frontier, alpha.value)
    figure = Figure(figsize=(5.4, 3.6), layout="constrained")
    ax = figure.subplots()
    ordered = frontier.sort_values("price")
    ax.step(ordered["price"], ordered["time"], where="post", color="lightgrey", zorder=1)
    ax.scatter(frontier["price"], frontier["time"], s=14, color="grey", label="Pareto path", zorder=2)
    supported = frontier[frontier["supported"]]
    ax.scatter(supported["price"], supported["time"], s=30, color="tab:blue", label="supported", zorder=3)
    ax.scatter([price], [time], s=180, marker="*", color="tab:red", zorder=4,
               label=f"weighted-sum choice, alpha = {alpha.value:.2f}")
    ax.set(xlabel="total price of the path (per request)", ylabel="total time of the path (ms)",
           title=f"Pareto frontier at step {model.steps} ({len(frontier)} paths)")
    ax.legend(fontsize="small")
    with solara.Column():
        solara.FigureMatplotlib(figure, format="png")
        solara.SliderFloat("client alpha", value=alpha, min=0.0, max=1.0, step=0.05)


@solara.component
def NashGapView(model: P2PLLMModel):
    """Each layer's relative Nash gap (the largest gain a peer of the layer could make by
    changing its price alone, over its revenue) at the last record."""
    update_counter.get()
    gap = np.asarray(model.recorder.certificate.stage_relative_gap)
    figure = Figure(figsize=(5.4, 3.6), layout="constrained")
    ax = figure.subplots()
    ax.bar(_layers(model), gap, color="tab:purple")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.set(ylim=(0, None), ylabel="relative Nash gap (gain / revenue)",
           title=f"Nash gap per layer at step {model.steps} (0 at a Nash equilibrium)")
    solara.FigureMatplotlib(figure, format="png")


COMPONENTS = [(PriceAndPeers, 0), (NetworkView, 0), (ParetoView, 0), (NashGapView, 0)]


@solara.component
def Page():
    """The dashboard ``solara run`` serves: a fresh model per browser session."""
    model = solara.use_memo(lambda: P2PLLMModel(**initial_parameters()), [])
    SolaraViz(model, components=COMPONENTS, model_params=MODEL_PARAMS, name="p2pllm-abm")
