"""`thin_ranks` of a study file: a fixed stride, or "auto" with its ``[thin_ranks_auto]``
settings, and what "auto" needs of the method (chains to continue, full-precision draws,
enough draws per chain for L). Read once, by `sbc.study`."""

from __future__ import annotations

from typing import Any

from sbc.backends import BackendSpec, backend_class
from sbc.errors import SBCError
from sbc.options import check_int, check_table, parse_options
from sbc.thinning import AutoThinning


def thin_ranks_setting(value: Any, sampler_thin: Any, where: str) -> tuple[int | str, str]:
    """`thin_ranks` (R SBC's name: a stride, or "auto") or ``[sampler] thin`` (sbc 0.1's),
    and which was written. (The one place its value is read.)"""
    if value is not None and sampler_thin is not None:
        raise SBCError("thin_ranks: also given as [sampler] thin (its old name); give it once",
                       where=where)  # fmt: skip
    if sampler_thin is not None:
        return check_int(sampler_thin, "[sampler] thin", where, minimum=1), "[sampler] thin"
    if value == "auto":
        return "auto", "thin_ranks"
    if isinstance(value, str):
        raise SBCError(f'thin_ranks: expected an integer >= 1 or "auto", got {value!r}', where)
    return check_int(10 if value is None else value, "thin_ranks", where, minimum=1), "thin_ranks"


def auto_thinning_setting(value: Any, thin_ranks: int | str, where: str) -> AutoThinning | None:
    """``[thin_ranks_auto]`` (defaults when absent) if thin_ranks is "auto", else None."""
    if thin_ranks != "auto":
        if value is not None:
            raise SBCError('[thin_ranks_auto]: needs thin_ranks = "auto"', where=where)
        return None
    table = check_table({} if value is None else value, "thin_ranks_auto", where)
    return parse_options(AutoThinning, table, "thin_ranks_auto", where)


def check_auto(
    spec: BackendSpec, auto: AutoThinning, draws: tuple[int, str] | None, where: str
) -> None:
    """What thin_ranks = "auto" needs of the method: chains it can continue, every draw
    written at full precision, and enough draws per chain for L."""
    cls = backend_class(spec.type, where)
    if not callable(getattr(cls, "extend", None)):
        raise SBCError(
            f'thin_ranks: "auto" thins by the chains\' effective sample size and continues '
            f"short chains; backend {spec.type} has no chains to continue (its draws are "
            "independent: set thin_ranks = 1 and its number of draws to L)",
            where=where,
        )
    options = spec.options
    if getattr(options, "thin", 1) != 1:
        raise SBCError(
            '[backend] thin: must be 1 with thin_ranks = "auto" (auto thinning chooses the '
            "stride, and continues each chain from its last draw)",
            where=where,
        )
    if getattr(options, "sig_figs", None) is not None:
        raise SBCError(
            '[backend] sig_figs: leave it unset with thin_ranks = "auto" (chains are '
            "continued from their last draw, which CmdStan then writes at full precision)",
            where=where,
        )
    if draws is None:
        return
    keep = auto.per_chain(int(getattr(options, "chains", 1)))
    if draws[0] < keep:
        raise SBCError(
            f"[thin_ranks_auto] L: {auto.L} needs {keep} draws per chain; {draws[1]} is {draws[0]}",
            where=where,
        )
    if auto.max_draws < draws[0]:
        raise SBCError(
            f"[thin_ranks_auto] max_draws: {auto.max_draws} is less than {draws[1]} ({draws[0]})",
            where=where,
        )


def draws_per_chain(spec: BackendSpec) -> tuple[int, str] | None:
    """(draws a chain yields, their name) when the settings say, for the thin_ranks check."""
    for settings in (spec.options, spec.sampler):
        count = getattr(settings, "draws_per_chain", None)
        if callable(count):
            return count()
    draws = getattr(spec.sampler, "draws", None)  # sbc 0.1's [sampler] draws
    return (draws, "draws") if isinstance(draws, int) else None
