"""Re-ranking without refitting: `sbc rerank`, `Results.rerank`, and a resumed `sbc run` whose
study only changed what is ranked.

A study that kept its draws (`keep_draws = true`, every `thin`-th draw) can be ranked again
with new derived quantities or coarser thinning. The data a derived quantity needs is not
stored, so each simulation's dataset is simulated again, from the study seed and the
simulation index as the run did (no CmdStan, no worker process). The tie-breaking random
numbers come from the same seeds too, so the ranks are those a fresh run with these settings
from the start would give: same draws, same truths, same random numbers. The posterior
mean and sd of quantities already ranked are copied from the version re-ranked (they were
computed from every draw); those of new quantities come from the kept draws only, which
the version's description records (`moments_from_kept_draws`).

Each re-ranking is stored as a new version of the ranks beside the old ones, in one
transaction (`Store.add_rank_version`): nothing is overwritten, and a failure anywhere
leaves the store as it was.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from sbc.errors import SBCError, one_line
from sbc.execution.folder import results_lock, store_errors
from sbc.ranks import derived_truth_and_draws, expand, rank_rows
from sbc.results import version_info
from sbc.seeds import simulation_seeds
from sbc.simulate import (
    FunctionSpec,
    PythonSimulator,
    Simulator,
    UserFunction,
    call_simulator,
    describe_function,
    resolve_function,
)
from sbc.store import Store
from sbc.study import identity_hash


@dataclass
class RankPlan:
    """What a new version of the ranks is made of, checked before anything is computed."""

    parent: int  # the version whose moments and derived draws are reused
    thin: int  # rank every thin-th draw (a multiple of the kept draws' stride)
    keep_every: int  # the stride the kept draws were stored with
    include: list[str]
    derived: dict[str, str]  # every derived quantity of the new version, described
    compute: dict[str, FunctionSpec]  # those computed now (new or redefined)
    quantities: list[str]  # scalar names ranked, in report order

    def identity(self) -> str:
        return rank_identity_hash(self.thin, self.include, self.derived)

    def info(self, by: str, approximate: list[str]) -> dict[str, Any]:
        return {
            "identity": self.identity(),
            "thin": self.thin,
            "include": self.include,
            "derived": self.derived,
            "quantities": self.quantities,
            "by": by,
            "from_version": self.parent,
            "moments_from_kept_draws": approximate,
            "created": datetime.now(UTC).isoformat(timespec="milliseconds"),
        }


def rank_identity_hash(
    thin: int, include: Sequence[str], derived: Mapping[str, str], stan: Sequence[str] = ()
) -> str:
    """The hash of what changes only the ranks, as `Study.rank_identity()` has it (the
    model's own quantities, ``[quantities] stan``, only when there are some)."""
    identity = {"thin": thin, "include": list(include), "derived": dict(derived)}
    return identity_hash({**identity, **({"stan": list(stan)} if stan else {})})


def version_identity(manifest: dict[str, Any], version: int) -> str | None:
    info = version_info(manifest, version)
    if info.get("identity"):
        return info["identity"]
    if info.get("thin") is None:
        return None
    return rank_identity_hash(
        info["thin"], info.get("include", []), info.get("derived", {}), info.get("stan", [])
    )


def matching_version(store: Store, identity: str) -> int | None:
    """The stored version of the ranks made with these settings, if there is one."""
    manifest = store.manifest()
    for version in store.rank_versions():
        if version_identity(manifest, version) == identity:
            return version
    return None


# -- `sbc rerank` ----------------------------------------------------------------------------------


def rerank(
    folder: str | Path,
    *,
    derived: Mapping[str, FunctionSpec | Any] | None = None,
    thin_ranks: int | None = None,
    simulator: Simulator | None = None,
    from_version: int | None = None,
    progress: bool = True,
    known: Mapping[str, FunctionSpec] | None = None,
) -> int:
    """Rank a kept-draws study again with `derived` quantities added (or redefined) and/or
    every `thin_ranks`-th draw; returns the number of the version stored (or of the stored
    version that already has these settings). `simulator`: the study's, for a study whose
    simulator was a Python object (a notebook's); otherwise it is rebuilt from the manifest."""
    folder = Path(folder)
    where = str(folder)
    with Store.open_for_reading(folder) as store:
        manifest = store.manifest()
        versions = store.rank_versions()
        parent = versions[-1] if from_version is None else from_version
        if parent not in versions:
            raise SBCError(f"no ranks version {parent} (stored: {versions})", where=where)
        sim = _simulator(manifest, simulator, where)
        plan = plan_version(manifest, parent, derived or {}, thin_ranks, where, known=known)
        existing = matching_version(store, plan.identity())
        if existing is not None:
            return existing
        rows, approximate = compute_ranks(store, plan, sim, manifest, progress, where)
    with results_lock(folder), store_errors(folder):
        store = Store.open_for_writing(folder)
        try:
            version = max(store.rank_versions()) + 1
            store.add_rank_version(version, rows, plan.info("rerank", approximate))
        finally:
            store.close()
    return version


def _simulator(manifest: dict[str, Any], given: Simulator | None, where: str) -> Simulator:
    """The simulator that made these results: the one given, or rebuilt from the manifest;
    refused if its code is not the code the results were made with."""
    described = (manifest.get("study") or {}).get("simulator") or {}
    if "stan" in described:  # its datasets would need CmdStan again: not supported (yet)
        raise SBCError(
            f"these results were simulated by a Stan program ({Path(described['stan']).name}): "
            "re-ranking them is not supported; run the study again with --new",
            where=where,
        )
    if given is None:
        if described.get("kind") == "object" or "function" not in described:
            raise SBCError(
                f"these results were simulated by a Python object "
                f"({described.get('function', '?')}) that only a Python session has: re-rank "
                "them from Python, results.rerank(..., simulator=<that function>)",
                where=where,
            )
        given = PythonSimulator(described["function"], described.get("args") or {})
        try:
            given.check_call(where)
        except SBCError as exc:
            raise SBCError(f"cannot re-simulate the datasets: {exc}", where=where) from None
    recorded = (manifest.get("identity") or {}).get("simulator_source")
    if recorded is not None and given.source_hash() != recorded:
        raise SBCError(
            f"the simulator {given} is not the code these results were made with (its source "
            "changed): re-ranking needs the very same datasets",
            where=where,
        )
    return given


def plan_version(
    manifest: dict[str, Any],
    parent: int,
    derived: Mapping[str, FunctionSpec | Any],
    thin_ranks: int | None,
    where: str,
    include: Sequence[str] | None = None,
    quantities: Sequence[str] | None = None,
    exact: bool = False,
    known: Mapping[str, FunctionSpec] | None = None,
    stan: Sequence[str] = (),
) -> RankPlan:
    """Check a re-ranking against what is stored: draws kept, thinning a multiple of their
    stride, derived quantities callable and not named like a model variable. The new
    version has `parent`'s derived quantities and `derived` (added or redefined), or with
    `exact` (a resumed run's study) exactly `derived`. `parent`'s own derived quantities are
    computed again if their 'module:function' imports, or `known` (a session's functions)
    has them; otherwise their kept draws and stored truths are reused."""
    study = manifest.get("study") or {}
    if not study.get("keep_draws"):
        raise SBCError(
            "these results kept no draws (keep_draws = false): re-ranking needs them; run the "
            "study with keep_draws = true (sbc.run(..., keep_draws=True))",
            where=where,
        )
    info = version_info(manifest, parent)
    if stan or info.get("stan") or (study.get("quantities") or {}).get("stan"):
        raise SBCError(
            "these ranks include the model's own quantities ([quantities] stan), which need "
            "CmdStan at each truth: re-ranking them from kept draws is not supported; run the "
            "study again with --new",
            where=where,
        )
    keep_every = int(version_info(manifest, 1)["thin"] or 1)
    thin = int(info["thin"] or keep_every) if thin_ranks is None else int(thin_ranks)
    if thin < 1 or thin % keep_every:
        raise SBCError(
            f"--thin-ranks: {thin} is not a multiple of {keep_every}, the stride the draws "
            "were kept with",
            where=where,
        )
    compute: dict[str, FunctionSpec] = {}
    for name, spec in derived.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise SBCError(f"derived quantity name {name!r} is not a variable name", where)
        compute[name] = _function_spec(spec, name, where)
    if not exact:  # the version's other derived quantities, computed again where we can
        compute = {**_recomputable(info.get("derived") or {}, known or {}), **compute}
    model_vars = {q.split("[")[0] for q in info.get("quantities") or []} - set(
        info.get("derived") or {}
    )
    clash = sorted(set(compute) & model_vars)
    if clash:
        raise SBCError(
            f"derived quantity {clash[0]!r} has the name of a model variable already ranked",
            where=where,
        )
    described = {} if exact else dict(info.get("derived") or {})
    described.update({k: describe_function(v) for k, v in compute.items()})
    if quantities is None:
        quantities = [q for q in info.get("quantities") or [] if q not in compute]
        quantities += [q for q in compute if q not in quantities]
    return RankPlan(
        parent=parent,
        thin=thin,
        keep_every=keep_every,
        include=list(info.get("include") or []) if include is None else list(include),
        derived=described,
        compute=compute,
        quantities=list(quantities),
    )


def _recomputable(
    described: Mapping[str, str], known: Mapping[str, FunctionSpec]
) -> dict[str, FunctionSpec]:
    """Derived quantities of a version whose function is at hand: the same function as the
    version's (by its description: name and code), or a spec string that still imports."""
    out: dict[str, FunctionSpec] = {}
    for name, description in described.items():
        if name in known and describe_function(known[name]) == description:
            out[name] = known[name]
        elif ":" in description and " " not in description:
            try:
                resolve_function(description)
            except SBCError:
                continue
            out[name] = description
    return out


def _function_spec(spec: Any, name: str, where: str) -> FunctionSpec:
    if isinstance(spec, str | UserFunction):
        fn = spec
    elif callable(spec):
        fn = UserFunction(spec)
    else:
        raise SBCError(f"derived.{name}: expected 'module:function' or a function", where)
    try:
        resolve_function(fn)
    except SBCError as exc:
        raise SBCError(f"derived.{name}: {exc}", where=where) from None
    return fn


def compute_ranks(
    store: Store,
    plan: RankPlan,
    simulator: Simulator,
    manifest: dict[str, Any],
    progress: bool,
    where: str,
) -> tuple[dict[int, list[dict[str, Any]]], list[str]]:
    """Every successful simulation's ranks under `plan` ({sim: rows}) and the quantities
    whose mean and sd come from the kept draws only."""
    from tqdm.auto import tqdm

    seed = int(manifest["study"]["seed"])
    parent = store.ranks(plan.parent)
    by_sim = {int(s): g.set_index("quantity") for s, g in parent.groupby("sim")}
    sims = store.simulations()
    ok = [int(s) for s in sims.loc[sims["status"] == "ok", "sim"]]
    functions = {k: resolve_function(v) for k, v in plan.compute.items()}
    out: dict[int, list[dict[str, Any]]] = {}
    approximate: set[str] = set()
    for sim in tqdm(ok, desc="rerank", unit="sim", disable=not progress):
        blob = store.kept_draws(sim)
        if blob is None:
            raise SBCError(f"simulation {sim} has no kept draws to re-rank", where=where)
        with np.load(io.BytesIO(blob)) as npz:
            kept = {k: npz[k] for k in npz.files}
        stored = by_sim.get(sim)
        rows = _ranks_of(sim, seed, simulator, kept, stored, functions, plan, where)
        for row in rows:
            if stored is not None and row["quantity"] in stored.index:
                row["mean"] = float(stored.at[row["quantity"], "mean"])  # from every draw
                row["sd"] = float(stored.at[row["quantity"], "sd"])
            else:
                approximate.add(row["quantity"])
        out[sim] = rows
    return out, sorted(approximate)


def _ranks_of(
    sim: int,
    seed: int,
    simulator: Simulator,
    kept: dict[str, np.ndarray],
    stored: Any,
    functions: Mapping[str, Any],
    plan: RankPlan,
    where: str,
) -> list[dict[str, Any]]:
    """One simulation ranked as the run would have: same dataset, draws and random numbers."""
    sim_rng, _, rank_rng = simulation_seeds(seed, sim)
    try:
        truth, data = call_simulator(simulator, sim_rng)
    except Exception as exc:
        raise SBCError(f"simulation {sim}: the simulator failed: {one_line(exc)}", where) from None
    _check_same_dataset(sim, truth, stored, where)
    model = {k: v for k, v in kept.items() if k not in plan.derived}  # what f(params, data) gets
    truth = dict(truth)
    draws = dict(model)
    for name in set(plan.derived) - set(functions):  # stored derived quantities: reused
        if name in kept and stored is not None and name in stored.index:
            truth[name] = float(stored.at[name, "truth"])
            draws[name] = kept[name]
    if functions:
        try:
            d_truth, d_draws = derived_truth_and_draws(functions, truth, model, data)
        except Exception as exc:
            raise SBCError(
                f"simulation {sim}: a derived quantity failed: {one_line(exc)}", where=where
            ) from None
        truth.update(d_truth)
        draws.update(d_draws)
    wanted = [q for q in plan.quantities if q.split("[")[0] not in draws]
    if wanted:
        raise SBCError(
            f"simulation {sim} kept no draws of {', '.join(wanted)}, a derived quantity "
            "whose function is not at hand: give it again (--derived name=module:function, "
            "or rerank(derived={name: function}))",
            where=where,
        )
    return rank_rows(
        truth,
        draws,
        thin_every=plan.thin // plan.keep_every,
        rng=rank_rng,
        quantities=list(plan.quantities),
    )


def _check_same_dataset(sim: int, truth: dict[str, Any], stored: Any, where: str) -> None:
    """The simulator gives the truths stored for this simulation (else it is not the same
    simulator, or it does not use only its rng)."""
    if stored is None:
        return
    for var, value in truth.items():
        for name, x in expand(var, value).items():
            if name in stored.index and not np.isclose(
                x, float(stored.at[name, "truth"]), rtol=1e-12, atol=0
            ):
                raise SBCError(
                    f"simulation {sim}: the simulator gives {name} = {x:.6g}, but the stored "
                    f"truth is {float(stored.at[name, 'truth']):.6g}: not the datasets these "
                    "results were made from",
                    where=where,
                )
