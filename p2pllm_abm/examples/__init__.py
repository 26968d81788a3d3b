"""Worked examples that ship with the toolkit: :mod:`p2pllm_abm.examples.plugin` registers a price
rule, a verification mechanism and a behaviour exactly as a researcher's own plug-in would."""
