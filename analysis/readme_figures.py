"""One of each figure the toolkit draws, copied (at most 1000 px wide) into ``analysis/readme_figures/``
for the README, from the runs, sweeps and experiments that draw them.

    make readme-figures          # runs every producer below, then: python -m analysis.readme_figures

Each entry names the file the toolkit writes and the command that writes it; a figure whose
producer has not run is reported, not silently skipped.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
DESTINATION = HERE / "readme_figures"
MAX_WIDTH = 1000  #: pixels

#: README file name -> (the file the toolkit writes, the command that writes it)
FIGURES = {
    "run_mean_price_per_stage.png": ("outputs/paper_table1/mean_price_per_stage.png", "make run"),
    "run_nodes_per_stage.png": ("outputs/paper_table1/nodes_per_stage.png", "make run"),
    "calibration_fit.png": ("outputs/paper_table1/calibration/calibration_fit.png", "make run"),
    "a_table1_trajectories.png": ("multirun/sweep_alpha/figures/a_table1_trajectories.png",
                                  "p2pllm-sim -m sweep=alpha && python -m analysis figures multirun/sweep_alpha"),
    "b_convergence_vs_eta.png": ("multirun/sweep_eta/figures/b_convergence_vs_eta.png",
                                 "p2pllm-sim -m sweep=eta && python -m analysis figures multirun/sweep_eta"),
    "c_price_vs_alpha.png": ("multirun/sweep_temperature/figures/c_price_vs_alpha.png",
                             "p2pllm-sim -m sweep=temperature && python -m analysis figures "
                             "multirun/sweep_temperature"),
    "d_revenue_curve.png": ("multirun/sweep_alpha/figures/d_revenue_curve.png",
                            "p2pllm-sim -m sweep=alpha && python -m analysis figures multirun/sweep_alpha"),
    "e_scaling.png": ("multirun/sweep_network_size/figures/e_scaling.png",
                      "p2pllm-sim -m sweep=network_size && python -m analysis figures multirun/sweep_network_size"),
    "figure1_network.png": ("outputs/figures/figure1_network_paper_28_200steps.png",
                            "python -m analysis network-figure --experiment paper_28 --steps 200 --alpha 0.5"),
    "figure2_pareto.png": ("outputs/figures/figure2_pareto_paper_28_200steps.png",
                           "python -m analysis pareto-figure --experiment paper_28 --steps 200"),
    "certification_gap_vs_iteration.png": ("outputs/equilibrium_certification/gap_vs_iteration.png", "make certify"),
    "certification_iterations_heatmap.png": ("outputs/equilibrium_certification/iterations_heatmap.png", "make certify"),
    "certification_equilibrium_price.png": ("outputs/equilibrium_certification/equilibrium_price.png", "make certify"),
    "welfare.png": ("outputs/welfare/welfare_vs_T_alpha.png", "make welfare"),
    "learning_vs_eq5.png": ("outputs/learning/learning_vs_eq5.png", "make learning"),
    "security_vs_sampling.png": ("outputs/security/security_vs_sampling_slash0.25.png", "make security"),
    "security_mechanisms.png": ("outputs/security/security_mechanisms.png", "make security"),
    "security_over_time.png": ("outputs/security/security_over_time.png", "make security"),
    "security_false_slashing.png": ("outputs/security/security_false_slashing.png", "make security"),
    "security_deterrence.png": ("outputs/security/security_deterrence.png", "make security"),
    "security_collusion.png": ("outputs/security/security_collusion.png", "make security"),
    "petals_comparison.png": ("outputs/petals_baseline/petals_comparison.png", "make petals"),
    "petals_p95_over_time.png": ("outputs/petals_baseline/petals_p95_over_time.png", "make petals"),
    "ledger_money.png": ("outputs/paper_table1_ledger/ledger_money_paper_table1_ledger.png",
                             "p2pllm-sim experiment=paper_table1_ledger hydra.run.dir=outputs/paper_table1_ledger && "
                             "python -m analysis ledger-figures outputs/paper_table1_ledger"),
    "ledger_shards.png": ("multirun/sweep_ledger/figures/ledger_shards.png",
                                     "p2pllm-sim -m sweep=ledger && python -m analysis ledger-figures "
                                     "multirun/sweep_ledger"),
    "ledger_payments.png": ("multirun/sweep_ledger/figures/ledger_payments.png",
                                      "p2pllm-sim -m sweep=ledger && python -m analysis ledger-figures "
                                      "multirun/sweep_ledger"),
    "sensitivity.png": ("outputs/sensitivity/sensitivity.png",
                        "python -m analysis sensitivity --experiment paper_table1 --steps 500 --vary market.alpha=0.2:0.8 "
                        "market.eta=20:80 market.temperature=0.5:2 --method sobol --samples 32 --out outputs/sensitivity"),
}


def copy_figures(root: Path, destination: Path = DESTINATION) -> tuple[list[Path], dict[str, str]]:
    """Copy every figure of :data:`FIGURES` found under ``root`` into ``destination`` (scaled down to
    :data:`MAX_WIDTH`); returns the copies and, for each one missing, the command that draws it."""
    destination.mkdir(parents=True, exist_ok=True)
    copied, missing = [], {}
    for name, (source, command) in FIGURES.items():
        path = root / source
        if not path.is_file():
            missing[name] = f"{source} is missing: run {command}"
            continue
        with Image.open(path) as image:
            if image.width > MAX_WIDTH:
                image = image.resize((MAX_WIDTH, round(image.height * MAX_WIDTH / image.width)), Image.LANCZOS)
            image.save(destination / name, optimize=True)
        copied.append(destination / name)
    return copied, missing


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m analysis.readme_figures", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=HERE.parent, help="the checkout the outputs are under")
    copied, missing = copy_figures(parser.parse_args(argv).root)
    for path in copied:
        print(path)
    for why in missing.values():
        print(f"missing: {why}")
    if missing:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
