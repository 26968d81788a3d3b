"""An experiment's settings: ``experiments/conf/<name>.yaml`` with ``key=value`` overrides."""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parent / "conf"


def load_settings(name: str, argv: list[str] | None = None) -> tuple[DictConfig, Path]:
    """``experiments/conf/<name>.yaml`` merged with the OmegaConf dot-list ``argv`` (default: the
    command line), and its ``out_dir``, created."""
    cfg = OmegaConf.merge(OmegaConf.load(CONF_DIR / f"{name}.yaml"),
                          OmegaConf.from_dotlist(sys.argv[1:] if argv is None else argv))
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return cfg, out
