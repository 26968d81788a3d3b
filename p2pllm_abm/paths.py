"""Where the toolkit's data lives."""

from pathlib import Path

#: the Hydra config tree (config.yaml, experiment/, sweep/, ...), devices.yaml and profiles/
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
