"""``python -m analysis <command>``: figures for papers from run outputs or fresh networks.

    python -m analysis pareto-figure --run-dir outputs/paper_28         # Figure 2 of a finished run
    python -m analysis pareto-figure --experiment paper_28 --steps 200  # of a fresh network
    python -m analysis network-figure --experiment paper_28 --alpha 0.5 # Figure 1
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .routing_figures import ANNOTATED_ALPHAS, network_from_experiment, network_from_run, plot_network, plot_pareto


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
    parser = argparse.ArgumentParser(prog="python -m analysis", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    pareto = commands.add_parser("pareto-figure", help="Figure 2: exact Pareto frontier of path price and time")
    _network_arguments(pareto)
    pareto.add_argument("--alphas", type=float, nargs="+", default=list(ANNOTATED_ALPHAS),
                        help="weighted-sum alphas to annotate")
    network = commands.add_parser("network-figure", help="Figure 1: the peer DAG with the chosen path")
    _network_arguments(network)
    network.add_argument("--alpha", type=float, default=0.5, help="the client's alpha for the highlighted path")
    args = parser.parse_args(argv)

    for name in ("alphas",) if args.command == "pareto-figure" else ("alpha",):
        values = np.atleast_1d(getattr(args, name))
        if not np.all((values >= 0) & (values <= 1)):
            parser.error(f"--{name} = {getattr(args, name)} is invalid: allowed values in [0, 1]")
    if args.steps < 0:
        parser.error(f"--steps = {args.steps} is invalid: allowed steps >= 0")
    client = None if args.no_client else np.array(args.client)
    if args.run_dir is not None:
        peers = network_from_run(args.run_dir, args.step)
        out = args.out or args.run_dir
    else:
        peers = network_from_experiment(args.experiment, args.override, args.steps)
        out = args.out or Path("outputs/figures")
    if args.command == "pareto-figure":
        written = plot_pareto(peers, client, out, args.alphas)
    else:
        written = plot_network(peers, args.alpha, client, out)
    for path in written.values():
        print(path)


if __name__ == "__main__":
    main()
