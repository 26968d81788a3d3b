"""Optional PyTorch backend: real Llama-style layer shards, timed to ground peers' compute costs.

Installed by the ``[torch]`` extra; nothing in ``p2pllm_abm`` imports it.
"""
