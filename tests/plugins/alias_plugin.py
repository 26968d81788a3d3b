"""A plug-in that registers built-ins' own objects under new names (the aliased runs must give
exactly the built-ins' outputs: tests/test_plugins.py)."""

from p2pllm_abm.registries import behaviours, mechanisms, price_rules, routings

price_rules.register("my_gradient", price_rules.get("gradient"))
mechanisms.register("my_spot_check", mechanisms.get("spot_check"))
behaviours.register("my_lazy", behaviours.get("lazy"))
routings.register("my_path", routings.get("path"))
