"""`thin_ranks = "auto"`: which draws of a fit are ranked, and whether its chains run on first.

Ranks are uniform under calibration only if the L draws they are computed among are close
to independent. The Stan User's Guide (section "Simulation-based calibration") and Talts et
al. (2018, section 5.1) thin so that the effective sample size is about the number of kept
draws. A fixed stride cannot do that for every fit: within one study the slowest-mixing
fit needs ten times the draws of the fastest. Auto thinning decides per fit, after the
planned sampling:

* it reads the bulk and tail ESS of every ranked quantity (derived ones too) over all the
  draws of the fit;
* if the smallest is below ``min_ess_per_draw x L``, the chains are continued (no new
  warm-up: the backend's `extend`) by about the draws that ESS says are missing, and it
  looks again; never beyond ``max_draws`` per chain, and not at all when the ESS so far
  says that even four times ``max_draws`` would not reach the target (a sampler stuck in a
  funnel: such a fit ends below target either way, and its draws are the dearest of the
  study; it is flagged, as one that reached ``max_draws`` is);
* it then keeps exactly ``ceil(L / chains)`` draws per chain, as far apart as the chain
  allows (the largest stride, ending at the last draw; the first few, nearest the warm-up,
  are the ones left over), so every fit of a study has the same L, and reaching the
  target never needs a draw discarded.

Pure functions of ESS values: the caller computes them (`sbc.backends.convergence`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from sbc.errors import SBCError
from sbc.store import Diagnostic

#: ESS grows about linearly with the draws; an extension aims this much past the target,
#: because an ESS estimated from a few hundred draws is noisy (10-20 %) and a second
#: extension costs another CmdStan start.
OVERSHOOT = 1.1
#: The smallest extension, as a share of the draws a chain has: tiny extensions cost a
#: CmdStan start each and move the noisy ESS estimate by less than its noise.
MIN_GROWTH = 0.25
#: The largest, as a multiple of the draws a chain has: an ESS estimated from a few hundred
#: draws of a slowly mixing chain is often far too low, and a chain told to grow tenfold on
#: its word would overshoot by as much; growing by at most half, it looks again on the way
#: (a look costs a CmdStan start, about 10 ms; benchmarks/budget.py --replay chose 0.5).
MAX_GROWTH = 0.5
#: A fit is not continued when its ESS so far projects more than this many times
#: ``max_draws`` to reach the target: it would end below target anyway (a funnel its
#: sampler is stuck in), after the most expensive draws of the study. An ESS of a few
#: draws is very noisy (on the LMM, fits at ESS 2-8 that 2 would have stopped reached 50 in
#: another run), hence 4, which replayed costs the LMM study what 2 does.
GIVE_UP = 4.0


@dataclass(frozen=True)
class AutoThinning:
    """``[thin_ranks_auto]``: the settings of ``thin_ranks = "auto"`` (these defaults when the
    table is absent)."""

    L: int = field(default=100, metadata={"min": 1})  # kept draws per fit: ranks are 0..L
    #: continue the chains until every ranked quantity has bulk and tail ESS >= this x L
    min_ess_per_draw: float = 0.5
    #: draws per chain after warm-up, extensions included, that a fit never exceeds
    max_draws: int = field(default=4000, metadata={"min": 1})

    def check(self, section: str, where: str) -> None:
        if not 0 < self.min_ess_per_draw <= 10:
            raise SBCError(
                f"[{section}] min_ess_per_draw: must be in (0, 10], got {self.min_ess_per_draw}",
                where,
            )

    def per_chain(self, chains: int) -> int:
        """Draws kept from each chain: the kept draws of a fit are ``chains x per_chain``."""
        return math.ceil(self.L / chains)


@dataclass(frozen=True)
class Thinning:
    """What to do with one fit: extend each chain by `extend` draws and look again, or (when
    `extend` is 0) rank its draws ``start, start + every, ...`` of each chain."""

    every: int
    start: int
    extend: int
    ess: float  # the smallest bulk or tail ESS of the ranked quantities, all draws (NaN: none)


def plan_thinning(
    ess_bulk: np.ndarray,
    ess_tail: np.ndarray,
    chains: int,
    draws: int,
    rule: AutoThinning,
    can_extend: bool = True,
    *,
    overshoot: float = OVERSHOOT,
    min_growth: float = MIN_GROWTH,
    max_growth: float = MAX_GROWTH,
    give_up: float = GIVE_UP,
) -> Thinning:
    """The thinning of a fit with `chains` chains of `draws` draws each, whose ranked
    quantities have these bulk and tail ESS (over all its draws). (`overshoot`, `min_growth`,
    `max_growth` and `give_up`: see the module's constants; benchmarks/budget.py varies
    them.)"""
    keep = rule.per_chain(chains)
    if draws < keep:
        raise ValueError(f"{draws} draws per chain cannot give {keep} kept draws per chain")
    values = np.concatenate([np.ravel(ess_bulk), np.ravel(ess_tail)]).astype(float)
    ess = float(np.nanmin(values)) if np.isfinite(values).any() else math.nan
    want = rule.min_ess_per_draw * keep * chains
    room = rule.max_draws - draws
    projected = draws * want / max(ess, 1e-9)  # draws per chain the target needs, at this rate
    hopeless = projected > give_up * rule.max_draws
    if can_extend and room > 0 and ess == ess and ess < want and not hopeless:
        needed = math.ceil(projected * overshoot - draws)
        if max_growth < math.inf:
            needed = min(needed, math.ceil(draws * max_growth))
        extend = min(room, max(needed, math.ceil(draws * min_growth), 1))
        return Thinning(every=0, start=0, extend=extend, ess=ess)
    every = draws // keep
    return Thinning(every=every, start=draws - 1 - (keep - 1) * every, extend=0, ess=ess)


def kept(draws: np.ndarray, thinning: Thinning) -> np.ndarray:
    """The draws a thinning ranks, per chain: (chains, draws, ...) -> (chains, kept, ...)."""
    return draws[:, thinning.start :: thinning.every]


#: What auto thinning records per fit, beside the backend's diagnostics (store columns).
DIAGNOSTICS = (
    Diagnostic("ess_ranked_min", "REAL", "<", 0.5, "smallest bulk or tail ESS of the ranked "
               "quantities (derived ones too) over every draw of the fit, extensions "
               "included: what thin_ranks = \"auto\" samples for", per_kept_draw=True),
    Diagnostic("thin_every", "INTEGER", doc="the stride thin_ranks = \"auto\" chose: every "
               "k-th draw of each chain is ranked"),
)  # fmt: skip
