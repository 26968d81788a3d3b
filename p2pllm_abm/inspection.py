"""The inspection game between peers and strategic verifiers (paper 4.2; the verifier's dilemma).

A spot check works only if the validator really re-executes. A validator paid per check whatever it
does saves the re-execution's cost ``k`` by reporting "ok" unchecked; if nobody checks, cheating
pays; if everybody cheats, checking pays. In the stage game a peer cheats or not, a verifier
inspects or not:

- a cheat saves the peer ``c``; if inspected it is caught with probability ``1 - FN`` and loses
  ``F = price + L + S`` (payment refunded, SLA penalty, slash);
- inspecting costs the verifier ``k``; catching a cheat earns it ``R`` (the whistleblower share of
  the slash); with forced errors (rate ``phi``, Truebit's remedy) an inspecting verifier also finds
  the planted error and wins the jackpot ``J``, and a skipping one is exposed and loses ``P``.

The mixed equilibrium (:func:`mixed_equilibrium`) makes each side indifferent:

    y* = c / ((1 - FN) F)                              (inspection rate: the peer is indifferent)
    x* = (k - phi (J + P)) / ((1 - FN) R)              (cheat rate: the verifier is indifferent)

clipped to pure play where a side has a dominant action: with ``phi >= k / (J + P)`` inspecting
dominates, so verifiers always inspect and peers cheat only if ``c > (1 - FN) F``.

:func:`simulate` plays the game repeatedly between populations of peers and verifiers who learn by
fictitious play from what they observe (each peer: how often its own hops were inspected; each
verifier: the share of hops cheated, as wrong outputs come to light afterwards) and best respond each round; the
long-run frequencies approach the mixed equilibrium (tested within 10%).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class InspectionGame(NamedTuple):
    """The stage game's payoffs, in price units."""

    saving: float  #: c, what a cheat saves the peer
    fine: float  #: F = price + SLA penalty + slash, what a caught cheat loses
    inspection_cost: float  #: k, the re-execution's compute cost to the verifier
    reward: float  #: R, what a verifier earns for a caught cheat (whistleblower share of the slash)
    fn: float = 0.0  #: the fingerprint's miss rate
    forced_error_rate: float = 0.0  #: phi
    jackpot: float = 0.0  #: J, won by an inspecting verifier on a forced error
    exposure_penalty: float = 0.0  #: P, lost by a skipping verifier on a forced error


def mixed_equilibrium(game: InspectionGame) -> tuple[float, float]:
    """``(cheat rate x*, inspection rate y*)`` of the stage game (see the module docstring)."""
    catch = 1.0 - game.fn
    inspect_edge = game.forced_error_rate * (game.jackpot + game.exposure_penalty) - game.inspection_cost
    if catch <= 0:  # a check never catches a cheat: peers cheat; verifiers inspect only for the forced errors
        return (1.0 if game.saving > 0 else 0.0), (1.0 if inspect_edge >= 0 else 0.0)
    if inspect_edge >= 0:  # inspecting dominates: peers face y = 1
        return (1.0 if game.saving > catch * game.fine else 0.0), 1.0
    x = -inspect_edge / (catch * game.reward) if game.reward > 0 else float("inf")
    y = game.saving / (catch * game.fine) if game.fine > 0 else float("inf")
    if x >= 1.0:  # even all-out cheating does not make inspecting pay: nobody inspects, everybody cheats
        return 1.0, 0.0
    return (x, y) if y < 1.0 else (1.0, 1.0)


class Play(NamedTuple):
    """What :func:`simulate` observed."""

    cheat_rate: float  #: share of hops cheated, over the rounds after burn-in
    inspection_rate: float  #: share of hops inspected, likewise
    cheat_path: np.ndarray  #: per round
    inspection_path: np.ndarray  #: per round


def simulate(game: InspectionGame, peers: int = 200, verifiers: int = 50, rounds: int = 20_000,
             burn_in: int = 2_000, seed: int = 0) -> Play:
    """Repeated play with fictitious-play learners. Each round every peer serves one hop, checked by a
    verifier drawn at random. A peer cheats iff ``c`` exceeds ``(1 - FN) F`` times its estimate of the
    inspection rate (the share of its own hops inspected so far, with one inspected and one unchecked
    hop as a prior); a verifier inspects iff its expected gain ``x (1 - FN) R + phi (J + P)`` exceeds
    ``k``, with ``x`` the share of all hops so far that were cheated (wrong outputs come to light
    afterwards, caught or not: the public record; the same prior). Ties are broken at random."""
    rng = np.random.default_rng(seed)
    catch = 1.0 - game.fn
    seen_inspected, seen_hops = np.ones(peers), np.full(peers, 2.0)
    cheats_public, hops_public = 1.0, 2.0
    cheat_path, inspection_path = np.zeros(rounds), np.zeros(rounds)
    for t in range(rounds):
        y_hat = seen_inspected / seen_hops
        cheat = (game.saving - catch * game.fine * y_hat + 1e-12 * rng.standard_normal(peers)) > 0
        x_hat = cheats_public / hops_public
        gain = x_hat * catch * game.reward + game.forced_error_rate * (game.jackpot + game.exposure_penalty)
        inspects = (gain - game.inspection_cost + 1e-12 * rng.standard_normal(verifiers)) > 0
        checker = rng.integers(verifiers, size=peers)
        inspected = inspects[checker]
        seen_inspected += inspected
        seen_hops += 1.0
        cheats_public += cheat.sum()
        hops_public += peers
        cheat_path[t], inspection_path[t] = cheat.mean(), inspected.mean()
    return Play(float(cheat_path[burn_in:].mean()), float(inspection_path[burn_in:].mean()), cheat_path,
                inspection_path)
