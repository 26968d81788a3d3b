"""The paper's Figure 1 (the network DAG, chosen path highlighted) and Figure 2 (the Pareto frontier
of path price and time, with the paths no alpha can select), from a run's outputs or a fresh
network.

    python -m analysis pareto-figure --run-dir outputs/paper_28
    python -m analysis network-figure --experiment paper_28 --steps 200 --alpha 0.5
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import networkx as nx
import numpy as np
import pandas as pd
import seaborn as sns

from p2pllm_abm import P2PLLMModel, load_config
from p2pllm_abm.figures import quantile_scale
from p2pllm_abm.network import PeerTable
from p2pllm_abm.paper import layer_name
from p2pllm_abm.pareto import pareto_paths, sample_path_objectives, weighted_sum_sweep
from p2pllm_abm.routing import best_path, build_dag

from .collect import single_run_summary

#: alphas whose weighted-sum choice is annotated in Figure 2
ANNOTATED_ALPHAS = (0.05, 0.25, 0.5, 0.75, 0.95)
#: above this many edges Figure 1 draws only the chosen path's edges
MAX_DRAWN_EDGES = 20_000


def network_from_run(run_dir: Path, step: int | None = None) -> PeerTable:
    """The peers of a ``p2pllm-sim`` run directory at a recorded ``step`` (default: the last),
    from its peers.parquet and summary.json."""
    run_dir = Path(run_dir)
    peers_path, summary_path = run_dir / "peers.parquet", run_dir / "summary.json"
    if not peers_path.is_file() or not summary_path.is_file():
        raise FileNotFoundError(f"run_dir = {str(run_dir)!r} lacks peers.parquet or summary.json: "
                                "allowed a p2pllm-sim run directory")
    network = single_run_summary(run_dir, "the network figure")["config"]["network"]
    frame = pd.read_parquet(peers_path)
    recorded = sorted(frame["step"].unique())
    step = recorded[-1] if step is None else step
    if step not in recorded:
        raise ValueError(f"step = {step} was not recorded in {run_dir}: allowed one of {recorded}")
    rows = frame[frame["step"] == step].sort_values("peer_id")
    return PeerTable(
        stage_start=rows["stage_start"].to_numpy(), stage_end=rows["stage_end"].to_numpy(),
        cost=rows["cost"].to_numpy(), price=rows["price"].to_numpy(),
        position=rows[["x", "y"]].to_numpy(), alive=rows["alive"].to_numpy(),
        n_stages=int(network["stages"]), latency_range=tuple(network["latency_range"]),
    )


def network_from_experiment(experiment: str, overrides: Sequence[str] = (), steps: int = 200) -> PeerTable:
    """A fresh network of ``experiment`` after ``steps`` steps of its market (prices start equal,
    so at step 0 every path costs the same and the frontier is a single point)."""
    model = P2PLLMModel(load_config(experiment, overrides=list(overrides)))
    model.run(steps, progress=True)
    return model.peers


def figure_label(run_dir: Path | None = None, step: int | None = None, experiment: str | None = None,
                 overrides: Sequence[str] = (), steps: int = 0) -> str:
    """What a routing figure's files are named after, so that figures of different runs or
    networks never overwrite each other: ``<run>_step<k>`` or ``<experiment>[_<overrides>]_<steps>steps``."""
    if run_dir is not None:
        return f"{Path(run_dir).name}_step{'last' if step is None else step}"
    parts = [experiment, *(override.replace("=", "-") for override in overrides), f"{steps}steps"]
    return "_".join(part.replace("/", "-").replace(" ", "") for part in parts)


def plot_pareto(peers: PeerTable, client: np.ndarray | None, out_dir: Path, label: str,
                alphas: Sequence[float] = ANNOTATED_ALPHAS, max_points: int = 20_000) -> dict[str, Path]:
    """Figure 2 (``figure2_pareto_<label>``): every path's (price, time) (a uniform sample above
    ``max_points``), the exact frontier as a step line, supported and unsupported Pareto paths
    marked apart, the supported hull dashed, and the weighted-sum choice of each of ``alphas``
    annotated; the title gives the hypervolume and its reference point. Also writes the frontier
    and the weighted-sum sweep as CSV."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    front = pareto_paths(peers, client)
    points = sample_path_objectives(peers, client, max_paths=max_points)
    sweep = weighted_sum_sweep(peers, alphas, client)
    with sns.axes_style("whitegrid"):
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        described = f"sample of {len(points):,}" if points["sampled"].any() else f"all {len(points):,}"
        ax.scatter(points["price"], points["time"], s=6, color="0.75", label=f"paths ({described})", zorder=1)
        ax.step(front.price, front.time, where="post", color="C0", lw=1.2, label="Pareto frontier", zorder=2)
        hull = front.supported
        ax.plot(front.price[hull], front.time[hull], ls="--", color="C2", lw=0.9, zorder=2, label="convex hull")
        ax.scatter(front.price[hull], front.time[hull], color="C2", s=28, zorder=3,
                   label=f"supported ({hull.sum()})")
        ax.scatter(front.price[~hull], front.time[~hull], facecolors="white", edgecolors="C3", s=28, zorder=3,
                   label=f"unsupported ({(~hull).sum()}): no alpha selects them")
        for (price, time), chosen in sweep.groupby(["price", "time"], sort=False):
            alphas_here = "α=" + ", ".join(f"{a:g}" for a in chosen["alpha"])
            ax.annotate(alphas_here, (price, time), xytext=(6, 6), textcoords="offset points", fontsize=8)
        reference = front.reference_point()
        ax.set(xlabel="total price of the path (per request)", ylabel="total time of the path (ms)",
               title=f"{label}: {len(front)} Pareto paths, hypervolume {front.hypervolume(reference):.4g}\n"
                     f"(reference point: price {reference[0]:.4g}, time {reference[1]:.4g} ms = the nadir + 10% "
                     "of the frontier's extent)")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=8, loc="upper right")
        fig.tight_layout()
        paths = _save(fig, out_dir / f"figure2_pareto_{label}")
    tables = {f"pareto_frontier_{label}.csv": front.to_frame(), f"weighted_sum_sweep_{label}.csv": sweep}
    for name, table in tables.items():
        table.to_csv(out_dir / name, index=False)
    return {**paths, **{name: out_dir / name for name in tables}}


def plot_network(peers: PeerTable, alpha: float, client: np.ndarray | None, out_dir: Path,
                 label: str) -> dict[str, Path]:
    """Figure 1 (``figure1_network_<label>``): the DAG of compatible peers drawn by layer (a node at
    its span's first layer, stacked by price; colour = price on a 5th-95th percentile scale, so
    that one expensive peer does not wash out the rest), source and sink, and the path Alg. 2
    chooses for ``alpha`` highlighted. Above :data:`MAX_DRAWN_EDGES` edges only the path's edges
    are drawn."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dag = build_dag(peers.stage_start, peers.stage_end, peers.alive, peers.n_stages)
    tails, heads = dag.edges()
    graph = nx.DiGraph()
    graph.add_nodes_from(range(dag.n_nodes))
    graph.add_edges_from(zip(tails.tolist(), heads.tolist()))
    live = np.flatnonzero(peers.alive)
    position = {dag.source: (-1.0, 0.5), dag.sink: (float(peers.n_stages), 0.5)}
    for first in range(peers.n_stages):
        members = live[peers.stage_start[live] == first]
        members = members[np.argsort(peers.price[members], kind="stable")]
        for rank, peer in enumerate(members):
            position[int(peer)] = (first + 0.5 * (peers.stage_end[peer] - first - 1), (rank + 1) / (len(members) + 1))
    _, path = best_path(peers, alpha, client)
    route = [dag.source, *path, dag.sink]
    route_edges = list(zip(route, route[1:]))
    norm = quantile_scale(peers.price[live])
    with sns.axes_style("white"):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        if len(tails) <= MAX_DRAWN_EDGES:
            nx.draw_networkx_edges(graph, position, ax=ax, edge_color="0.8", width=0.4, arrows=False)
            note = f"{len(tails):,} edges"
        else:
            note = f"{len(tails):,} edges, only the path's drawn"
        nodes = nx.draw_networkx_nodes(graph, position, nodelist=live.tolist(), node_color=peers.price[live],
                                       cmap="viridis", node_size=40, ax=ax, vmin=norm.vmin, vmax=norm.vmax)
        nx.draw_networkx_nodes(graph, position, nodelist=[dag.source, dag.sink], node_color="black", node_size=60,
                               node_shape="s", ax=ax)
        nx.draw_networkx_edges(graph, position, edgelist=route_edges, edge_color="C3", width=2.0, ax=ax,
                               arrows=True, arrowsize=8)
        for node, text in ((dag.source, "client"), (dag.sink, "client")):
            ax.annotate(text, position[node], xytext=(0, -14), textcoords="offset points", ha="center", fontsize=8)
        fig.colorbar(nodes, ax=ax, label="price (per request; 5th-95th percentile scale)", extend="both")
        ax.set_xticks(range(peers.n_stages), [layer_name(s) for s in range(peers.n_stages)])
        ax.tick_params(left=False, labelleft=False, bottom=True, labelbottom=True)
        ax.set_title(f"{label}: {len(live)} live peers, {note}; path for α = {alpha:g} in red", fontsize=9)
        fig.tight_layout()
        return _save(fig, out_dir / f"figure1_network_{label}")


def _save(fig, stem: Path) -> dict[str, Path]:
    paths = {}
    for suffix in (".png", ".pdf"):  # appended: a label may hold dots (market.alpha-0.5)
        paths[stem.name + suffix] = stem.parent / (stem.name + suffix)
        fig.savefig(paths[stem.name + suffix], dpi=200)
    plt.close(fig)
    return paths
