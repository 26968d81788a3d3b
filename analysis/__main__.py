"""``python -m analysis <command>``: tidy tables and figures for papers from run outputs.

    python -m analysis collect multirun/sweep_alpha                  # runs.parquet, steps.parquet
    python -m analysis figures multirun/sweep_alpha                  # the gallery (a)-(e), PDF + PNG + captions
    python -m analysis table multirun/sweep_alpha --format latex     # Table-1-style table, mean ± sd
    python -m analysis pareto-figure --run-dir outputs/paper_28      # Figure 2 of a finished run
    python -m analysis pareto-figure --experiment paper_28 --steps 200  # of a fresh network
    python -m analysis network-figure --experiment paper_28 --alpha 0.5 # Figure 1
    python -m analysis ledger-figures outputs/paper_table1_ledger     # money, stake Gini, latency of a ledger run
    python -m analysis ledger-figures multirun/sweep_ledger           # latency vs shards, escrow vs channels
    python -m analysis sensitivity --experiment paper_table1 --vary market.alpha=0.2:0.8 market.eta=20:80 \
        --method sobol --samples 64 --steps 500                   # Sobol indices of the outcomes (SALib)
    python -m analysis calibrate --table paper_table1 --fit market.temperature network.initial_price market.eta \
        --fixed market.alpha=0.5 --out outputs/calibration          # fit the paper's unstated settings
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

import numpy as np

import yaml

from .collect import Collection, collect, run_directories
from .gallery import FIGURES, draw_gallery
from .routing_figures import (ANNOTATED_ALPHAS, figure_label, network_from_experiment, network_from_run, plot_network,
                              plot_pareto)


def _network_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--run-dir", type=Path, help="a p2pllm-sim run directory (peers.parquet + summary.json)")
    source.add_argument("--experiment", default="paper_28", help="a fresh network of conf/experiment/<name>.yaml")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="Hydra override for --experiment (repeatable), e.g. --override seed=3")
    parser.add_argument("--steps", type=int, default=200, help="market steps before drawing a fresh network")
    parser.add_argument("--step", type=int, help="recorded step of --run-dir (default: the last)")
    parser.add_argument("--client", type=float, nargs=2, default=[0.5, 0.5], metavar=("X", "Y"),
                        help="the client's position in the unit square (its latencies count)")
    parser.add_argument("--no-client", action="store_true", help="leave the client's endpoint latencies out")
    parser.add_argument("--out", type=Path, help="output folder (default: the run directory, or outputs/figures)")


def main(argv: list[str] | None = None) -> None:
    """``p2pllm-analysis`` (an installed wheel) or ``python -m analysis`` (a checkout)."""
    matplotlib.use("Agg")  # the figures are files
    program = "python -m analysis" if sys.argv[0].endswith("__main__.py") else "p2pllm-analysis"
    parser = argparse.ArgumentParser(prog=program, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    pareto = commands.add_parser("pareto-figure", help="Figure 2: exact Pareto frontier of path price and time")
    _network_arguments(pareto)
    pareto.add_argument("--alphas", type=float, nargs="+", default=list(ANNOTATED_ALPHAS),
                        help="weighted-sum alphas to annotate")
    network = commands.add_parser("network-figure", help="Figure 1: the peer DAG with the chosen path")
    _network_arguments(network)
    network.add_argument("--alpha", type=float, default=0.5, help="the client's alpha for the highlighted path")
    collecting = commands.add_parser("collect", help="read a multirun directory into runs.parquet and steps.parquet")
    collecting.add_argument("multirun_dir", type=Path)
    collecting.add_argument("--out", type=Path, help="output folder (default: the multirun directory)")
    gallery = commands.add_parser("figures", help="the figure gallery (a)-(e) of a sweep")
    gallery.add_argument("source", type=Path, help="a multirun directory, or a folder of collected tables")
    gallery.add_argument("--only", nargs="+", choices=list(FIGURES), help="draw only these figures")
    gallery.add_argument("--out", type=Path, help="output folder (default: <source>/figures)")
    table = commands.add_parser("table", help="Table-1-style table over the runs of a sweep")
    table.add_argument("source", type=Path, help="a multirun directory, or a folder of collected tables")
    table.add_argument("--format", choices=["markdown", "latex"], default="markdown")
    table.add_argument("--steps", type=int, nargs="+", help="iterations (default: up to 6 recorded ones)")
    table.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                       help="keep runs whose runs.parquet column KEY equals VALUE (repeatable)")
    table.add_argument("--out", type=Path, help="also write the table to this file")
    ledger = commands.add_parser("ledger-figures", help="the ledger's figures of a run or of sweep=ledger")
    ledger.add_argument("source", type=Path, help="a ledger run directory, or a multirun directory (sweep=ledger)")
    ledger.add_argument("--out", type=Path, help="output folder (default: the run directory, or <sweep>/figures)")
    calibrating = commands.add_parser("calibrate", help="fit unstated settings to a published checkpoint table")
    calibrating.add_argument("--table", default="paper_table1",
                             help="a published table of p2pllm_abm/paper.py, or a CSV file with columns iteration, "
                                  "layer (1-based), nodes, avg_price: one row per checkpoint and layer (needs --experiment)")
    calibrating.add_argument("--fit", nargs="+", required=True, metavar="FIELD",
                             help="config fields to fit, e.g. market.temperature network.initial_price market.eta")
    calibrating.add_argument("--fixed", nargs="*", default=[], metavar="FIELD=VALUE",
                             help="fields held at a value (e.g. market.alpha=0.5)")
    calibrating.add_argument("--seeds", type=int, nargs="+", default=list(range(8)),
                             help="cost draws to fit on; the 90%% interval is over them (default 0-7)")
    calibrating.add_argument("--reading", default="auto",
                             help="allocation reading for the fit: auto (the one whose node rows fit best), "
                                  "compute_share or head_count")
    calibrating.add_argument("--experiment", help="the experiment to start from (default: the table's name)")
    calibrating.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                             help="Hydra override of that experiment (repeatable)")
    calibrating.add_argument("--out", type=Path, required=True, help="output folder for calibration.json + figure")
    calibrating.add_argument("--reproduce", type=Path, metavar="RUN_DIR",
                             help="also run the calibrated experiment in full into RUN_DIR and print it beside "
                                  "the literal reading and the paper")
    sensitive = commands.add_parser("sensitivity", help="Sobol or Morris indices of run outcomes (SALib)")
    sensitive.add_argument("--experiment", default="paper_table1", help="conf/experiment/<name>.yaml")
    sensitive.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                           help="Hydra override of that experiment (repeatable)")
    sensitive.add_argument("--vary", nargs="+", required=True, metavar="FIELD=LOW:HIGH",
                           help="float settings and their ranges, e.g. market.alpha=0.2:0.8 market.eta=20:80")
    sensitive.add_argument("--method", choices=["sobol", "morris"], default="sobol")
    sensitive.add_argument("--samples", type=int, default=64,
                           help="Sobol: base samples N (N x (settings + 2) runs); Morris: trajectories "
                                "(each settings + 1 runs)")
    sensitive.add_argument("--steps", type=int, default=500, help="steps per run")
    sensitive.add_argument("--seed", type=int, default=0, help="the design's and the bootstrap's seed")
    sensitive.add_argument("--jobs", type=int, default=2, help="runs in parallel")
    sensitive.add_argument("--out", type=Path, default=Path("outputs/sensitivity"))
    args = parser.parse_args(argv)

    if args.command == "sensitivity":
        return _sensitivity(parser, args)
    if args.command == "calibrate":
        return _calibrate(parser, args)

    if args.command == "ledger-figures":
        from .ledger_figures import draw

        try:
            written = draw(args.source, args.out)
        except (ValueError, FileNotFoundError) as error:
            parser.error(str(error))
        for path in written:
            print(path)
        return None
    if args.command == "collect":
        return _collect(args.multirun_dir, args.out)
    if args.command == "figures":
        try:
            written, skipped = draw_gallery(_collection(args.source), args.out or args.source / "figures", args.only)
        except ValueError as error:
            parser.error(str(error))
        for path in written.values():
            print(path)
        for stem, why in skipped.items():
            print(f"skipped {stem}: {why}")
        return None
    if args.command == "table":
        return _table(parser, args)

    for name in ("alphas",) if args.command == "pareto-figure" else ("alpha",):
        values = np.atleast_1d(getattr(args, name))
        if not np.all((values >= 0) & (values <= 1)):
            parser.error(f"--{name} = {getattr(args, name)} is invalid: allowed values in [0, 1]")
    if args.steps < 0:
        parser.error(f"--steps = {args.steps} is invalid: allowed steps >= 0")
    client = None if args.no_client else np.array(args.client)
    if args.run_dir is not None:
        peers = network_from_run(args.run_dir, args.step)
        out, label = args.out or args.run_dir, figure_label(run_dir=args.run_dir, step=args.step)
    else:
        peers = network_from_experiment(args.experiment, args.override, args.steps)
        out = args.out or Path("outputs/figures")
        label = figure_label(experiment=args.experiment, overrides=args.override, steps=args.steps)
    if args.command == "pareto-figure":
        written = plot_pareto(peers, client, out, label, args.alphas)
    else:
        written = plot_network(peers, args.alpha, client, out, label)
    for path in written.values():
        print(path)


def _collection(source: Path) -> Collection:
    """A multirun directory is collected afresh (its runs may have changed); a folder holding only
    collected tables is read."""
    return collect(source) if run_directories(source) else Collection.read(source)


def _collect(multirun_dir: Path, out: Path | None) -> None:
    collection = collect(multirun_dir)
    for path in collection.write(out or multirun_dir).values():
        print(path)
    counts = collection.runs["status"].value_counts().to_dict()
    print(f"{len(collection.runs)} runs ({', '.join(f'{n} {s}' for s, n in counts.items())}); "
          f"swept: {', '.join(collection.swept) or 'nothing'}")
    for problem in collection.problems:
        print(f"  {problem}")


def _table(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    from .tables import render, table1

    where = _key_values(parser, args.where, "--where")
    try:
        text = render(table1(_collection(args.source), args.steps, where), args.format)
    except ValueError as error:
        parser.error(str(error))
    print(text, end="")
    if args.out:
        args.out.write_text(text)


def _key_values(parser: argparse.ArgumentParser, items: list[str], flag: str) -> dict:
    """``KEY=VALUE`` arguments as a dict (values read as YAML); a malformed one is a usage error."""
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"{flag} = {item!r} is invalid: allowed KEY=VALUE")
        pairs[key] = yaml.safe_load(value)
    return pairs


def _calibrate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    from p2pllm_abm.calibration import calibrate

    from .calibration import findings, reproduce, write_calibration

    fixed = _key_values(parser, args.fixed, "--fixed")
    try:
        result = calibrate(args.table, args.fit, fixed, args.seeds, args.reading, args.experiment, args.override,
                           progress=True)
    except ValueError as error:
        parser.error(str(error))
    for path in write_calibration(result, args.out):
        print(path)
    if args.reproduce is not None:
        reproduce(result, args.reproduce)
    else:
        print(findings(result))


def _sensitivity(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    from p2pllm_abm import load_config

    from .sensitivity import sensitivity, parse_ranges

    try:
        if args.steps < 1:
            raise ValueError(f"--steps = {args.steps} is invalid: allowed steps >= 1")
        cfg = load_config(args.experiment, overrides=args.override)
        result = sensitivity(cfg, args.experiment, parse_ranges(args.vary, cfg), args.method, args.samples, args.steps,
                             args.seed, args.jobs, args.out)
    except ValueError as error:
        parser.error(str(error))
    print(result["indices"].to_string(index=False, float_format=lambda value: f"{value:.4g}"))
    for name in result["left_out"]:
        print(f"left out {name}: not defined in every run (e.g. surplus at alpha = 0)")
    for name in ("sensitivity.csv", "samples.parquet", "sensitivity.png"):
        print(args.out / name)


if __name__ == "__main__":
    main()
