"""Table-1-style tables (nodes and average price per layer at chosen iterations) over the runs of
a sweep, as Markdown or LaTeX, each cell ``mean ± sd`` over the runs (a node count on which every
run agrees as an integer), each row with the number of runs it averages.

    python -m analysis table multirun/sweep_alpha --where market.alpha=0.5 --format latex
"""

from __future__ import annotations

import pandas as pd

from p2pllm_abm.paper import layer_name

from .collect import Collection

FORMATS = ("markdown", "latex")


def table1(collection: Collection, steps: list[int] | None = None, where: dict[str, object] | None = None) -> pd.DataFrame:
    """Rows (iteration, metric, runs averaged), columns ``Layer 1..m``, cells ``mean ± sd`` over the complete runs
    matching ``where`` (parameter -> value) at each of ``steps`` (default: every recorded step of
    the runs, at most 6 of them evenly spaced)."""
    runs = collection.complete_runs
    for key, value in (where or {}).items():
        if key not in runs:
            raise ValueError(f"where: {key!r} is not a column of runs.parquet: allowed one of {sorted(runs.columns)}")
        runs = runs[runs[key] == value]
    if runs.empty:
        raise ValueError(f"where = {where} matches no complete run")
    data = collection.steps[collection.steps["run"].isin(runs["run"])]
    recorded = sorted(data["step"].unique())
    if steps is None:
        steps = recorded if len(recorded) <= 6 else [recorded[i] for i in
                                                     sorted({round(k * (len(recorded) - 1) / 5) for k in range(6)})]
    missing = [s for s in steps if s not in recorded]
    if missing:
        raise ValueError(f"steps {missing} were not recorded: allowed some of {recorded}")
    stats = data[data["step"].isin(steps)].groupby(["step", "stage"])[["peers", "mean_price"]].agg(["mean", "std"])
    counted = data.groupby("step")["run"].nunique()
    rows = []
    for step in steps:
        at = stats.loc[step]
        for metric, label, digits in (("peers", "Nodes", 1), ("mean_price", "Avg. Price", 2)):
            cells = {layer_name(stage): _cell(at.loc[stage, (metric, "mean")], at.loc[stage, (metric, "std")], digits,
                                                 count=metric == "peers") for stage in at.index}
            rows.append({"Iteration": step, "Metric": label, "Runs": int(counted[step]), **cells})
    return pd.DataFrame(rows).set_index(["Iteration", "Metric", "Runs"]).rename_axis(columns=f"{len(runs)} runs")


def _cell(mean: float, sd: float, digits: int, count: bool = False) -> str:
    """``mean ± sd`` over the runs; a count on which every run agrees as the integer it is."""
    if count and (pd.isna(sd) or sd == 0) and float(mean).is_integer():
        return str(int(mean))
    return f"{mean:.{digits}f}" if pd.isna(sd) else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def render(table: pd.DataFrame, fmt: str) -> str:
    """The table as Markdown or as a LaTeX ``tabular`` (booktabs rules)."""
    if fmt not in FORMATS:
        raise ValueError(f"format = {fmt!r} is invalid: allowed one of {FORMATS}")
    header = ["Iteration", "Metric", "Runs", *table.columns]
    body = [[str(step), metric, str(runs), *row]
            for (step, metric, runs), row in zip(table.index, table.itertuples(index=False))]
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in body]) + "\n"
    latex = [r"\begin{tabular}{llr" + "r" * len(table.columns) + "}", r"\toprule",
             " & ".join(header) + r" \\", r"\midrule"]
    latex += [" & ".join(cell.replace("±", r"$\pm$") for cell in cells) + r" \\" for cells in body]
    return "\n".join(latex + [r"\bottomrule", r"\end{tabular}"]) + "\n"
