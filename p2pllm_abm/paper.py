"""The paper's published numbers and the checkpoint table printed beside them.

Table 1 of the paper: nodes and average price per layer at iterations 0, 100, 500, 1000 and 5000
(4 layers, 200 peers).
"""

from __future__ import annotations

import pandas as pd

from .metrics import stage_rows

#: Table 1, per iteration: (nodes per layer, average price per layer)
PAPER_TABLE1 = {
    0: ([78, 52, 34, 36], [5.42, 5.28, 5.87, 5.31]),
    100: ([62, 48, 43, 47], [5.89, 5.96, 5.72, 5.68]),
    500: ([53, 49, 50, 48], [6.12, 6.08, 6.10, 6.05]),
    1000: ([50, 50, 50, 50], [6.14, 6.15, 6.13, 6.15]),
    5000: ([50, 50, 50, 50], [6.13, 6.14, 6.14, 6.13]),
}

REFERENCES = {"paper_table1": PAPER_TABLE1}


def layer_name(stage: int) -> str:
    """The paper's name of stage ``stage`` (0-based in the arrays): ``Layer 1`` .. ``Layer m``, in
    every table, legend and axis the toolkit draws."""
    return f"Layer {stage + 1}"


def checkpoint_table(metrics: pd.DataFrame, steps: list[int], reference: str | None = None) -> pd.DataFrame:
    """Rows (iteration, metric), columns ``Layer 1..m``: nodes and average price at ``steps``, in
    the layout of the paper's Table 1; with ``reference``, each cell reads ``ours (paper)``."""
    published = REFERENCES[reference] if reference else {}
    metrics = stage_rows(metrics)
    rows = []
    for step in steps:
        at = metrics[metrics["step"] == step].sort_values("stage")
        if at.empty:
            raise ValueError(f"step {step} was not recorded; recorded steps: {sorted(metrics['step'].unique())}")
        nodes, prices = at["peers"].tolist(), at["mean_price"].tolist()
        paper_nodes, paper_prices = published.get(step, (None, None))
        for metric, ours, theirs, fmt in (("Nodes", nodes, paper_nodes, "{:d}"),
                                          ("Avg. Price", prices, paper_prices, "{:.2f}")):
            cells = [fmt.format(v) + (f" ({fmt.format(t)})" if theirs else "")
                     for v, t in zip(ours, theirs or [None] * len(ours))]
            rows.append({"Iteration": step, "Metric": metric,
                         **{layer_name(s): cell for s, cell in enumerate(cells)}})
    return pd.DataFrame(rows).set_index(["Iteration", "Metric"])
