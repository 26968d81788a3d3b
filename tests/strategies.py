"""Hypothesis strategies shared by the routing tests."""

import numpy as np
from hypothesis import strategies as st

from p2pllm_abm.network import PeerTable


@st.composite
def span_networks(draw, served: bool = False, integer: bool = False):
    """Random networks of 1-4 stages whose peers serve random spans, some dead. ``served``: a live
    peer starts at every stage (so a path always exists); ``integer``: integer prices and costs
    and no latency (objective sums are exact)."""
    n_stages = draw(st.integers(1, 4))
    forced = list(range(n_stages)) if served else []
    starts = forced + draw(st.lists(st.integers(0, n_stages - 1), min_size=0 if served else 1, max_size=9 - len(forced)))
    ends = [draw(st.integers(s + 1, n_stages)) for s in starts]
    n = len(starts)
    values = st.integers(0, 30).map(float) if integer else st.floats(0.0, 50.0, allow_nan=False)
    alive = [True] * len(forced) + draw(st.lists(st.booleans(), min_size=n - len(forced), max_size=n - len(forced)))
    return PeerTable(
        stage_start=np.array(starts),
        stage_end=np.array(ends),
        cost=np.array(draw(st.lists(values, min_size=n, max_size=n))),
        price=np.array(draw(st.lists(values, min_size=n, max_size=n))),
        position=np.array(draw(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=n, max_size=n))),
        alive=np.array(alive),
        n_stages=n_stages,
        latency_range=(0.0, 0.0) if integer else (1.0, 20.0),
    )
