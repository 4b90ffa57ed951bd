"""Formula models (issue 16): the acceptance runs, and the figures they give.

    python benchmarks/formula_models.py run      [--sims 200] [--out DIR] [--only seed,...]
    python benchmarks/formula_models.py report   [--out DIR]
    python benchmarks/formula_models.py timing   [--datasets 30]
    python benchmarks/formula_models.py recover  [--draws 5000] [--recover-datasets 5]
    python benchmarks/formula_models.py verify   [--out DIR]   (stored results vs this code)

Parts (``--only``):

* ``seed``: `studies/lmm_sbc.toml` (hand-written program, `sbc.simulators.lmm`) and
  `studies/lmm_formula_seed.toml` (the same model from its formula) on one seed: the truths
  of every simulation compared bit for bit, the verdicts side by side.
* ``crossed``: `studies/lmm_formula_crossed.toml` in both parameterisations (centred, non-
  centred) on the same datasets: per-fit time (wall, and CmdStan's warm-up + sampling
  seconds summed over chains), divergences and other flags, and each one's `sbc check`.
* ``missing``: `studies/lmm_formula_crossed_missing_slope.toml`: which quantities fail.

``timing`` fits the first --datasets datasets of the crossed study with both programs, one
after the other in one process (order alternating), and measures each fit's CPU seconds
(CmdStan's child processes, from getrusage) and divergences: a side-by-side ratio that the
machine's load does not bias, unlike the wall times of two runs made at different times.

``recover`` fits the seed's example (lmm_recovery's datasets: seed 1, sims 0..k-1, truths at the
seed's values, group effects and noise drawn anew) with the hand-written program and with the
program generated from the formula, long chains, and tests equality of every posterior mean
within Monte Carlo error (z on the two MCSEs, Bonferroni over datasets x quantities).

Runs resume (each part is an ordinary sbc study folder under --out); `report` only reads.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sbc  # noqa: E402
from sbc.checks import check  # noqa: E402
from sbc.study import Study, load_study, parse_study  # noqa: E402

STUDIES = ROOT / "studies"
CROSSED = STUDIES / "lmm_formula_crossed.toml"
STYLES = {"centred": "lmm_formula_crossed_centred", "non-centred": "lmm_formula_crossed_noncentred"}
#: lmm_sbc's names -> the formula's names (the seed's model, one factor "group").
SEED_NAMES = {"beta": "beta", "sigma": "sigma", "tau": "tau_group", "rho": "rho_group",
              "b": "b_group", "loglik": "loglik"}  # fmt: skip


def crossed_variant(style: str) -> Study:
    """lmm_formula_crossed.toml with its parameterisation set (same seed, same datasets)."""
    raw = tomllib.loads(CROSSED.read_text())
    raw["model"]["parameterisation"] = style
    raw["name"] = STYLES[style]
    return parse_study(raw, CROSSED)


def studies(part: str) -> list[tuple[str, Study]]:
    if part == "seed":
        return [(n, load_study(STUDIES / f"{n}.toml")) for n in ("lmm_sbc", "lmm_formula_seed")]
    if part == "crossed":
        return [(STYLES[s], crossed_variant(s)) for s in STYLES]
    if part == "missing":
        name = "lmm_formula_crossed_missing_slope"
        return [(name, load_study(STUDIES / f"{name}.toml"))]
    raise SystemExit(f"unknown part {part!r}")


def run(args: argparse.Namespace) -> None:
    for part in args.only:
        for name, study in studies(part):
            print(f"== {part}: {name} ({args.sims} simulations)", flush=True)
            sbc.run(study, sims=args.sims, out=args.out / name, progress=not args.quiet)


# -- report ----------------------------------------------------------------------------------------


def _seed_name(q: str) -> str:
    base, _, rest = q.partition("[")
    name = SEED_NAMES[base]
    if base == "rho":  # lmm's rho[1] (a vector) is the formula's scalar rho_group
        return name
    return f"{name}[{rest}" if rest else name


def report_seed(out: Path, alpha: float) -> None:
    a, b = sbc.load(out / "lmm_sbc"), sbc.load(out / "lmm_formula_seed")
    ra = a.ranks.assign(quantity=a.ranks["quantity"].map(_seed_name))
    m = ra.merge(b.ranks, on=["sim", "quantity"], suffixes=("_lmm", "_formula"))
    params = m[m["quantity"] != "loglik"]
    same = (params["truth_lmm"].to_numpy() == params["truth_formula"].to_numpy()).mean()
    ll = m[m["quantity"] == "loglik"]
    print(f"seed: {m['sim'].nunique()} simulations in both, {len(params)} (simulation, "
          f"parameter) truths: {same:.1%} bit-identical; loglik truths identical: "
          f"{(ll['truth_lmm'] == ll['truth_formula']).mean():.1%}; ranks identical: "
          f"{(m['rank_lmm'] == m['rank_formula']).mean():.1%}")  # fmt: skip
    ca, cb = check(a, alpha=alpha), check(b, alpha=alpha)
    va = ca.verdicts.assign(quantity=ca.verdicts["quantity"].map(_pooled_seed_name))
    v = va.merge(cb.verdicts, on="quantity", suffixes=("_lmm", "_formula"))
    agree = (v["calibrated_lmm"] == v["calibrated_formula"]).mean()
    print(f"seed: verdicts agree on {agree:.0%} of {len(v)} rows; lmm_sbc "
          f"{'passes' if ca.passed else 'FAILS'}, lmm_formula_seed "
          f"{'passes' if cb.passed else 'FAILS'}")  # fmt: skip
    cols = ["quantity", "p_holm_lmm", "p_holm_formula", "coverage90_lmm", "coverage90_formula"]
    print(_table(v[~v["quantity"].str.match(r"b_group\[\d")][cols]))
    print(f"  lmm_sbc: {ca.headline}\n  formula: {cb.headline}")


def _pooled_seed_name(q: str) -> str:
    return _seed_name(q.replace("*", "0")).replace("[0,", "[*,")


def report_crossed(out: Path, alpha: float) -> None:
    rows, per_sim = [], {}
    for style, name in STYLES.items():
        if not (out / name).exists():
            continue
        res = sbc.load(out / name)
        s = res.simulations
        ok = s[s["status"] == "ok"]
        cpu = ok["warmup_seconds"] + ok["sampling_seconds"]
        per_sim[style] = cpu.set_axis(ok["sim"])
        c = check(res, alpha=alpha)
        failing = ", ".join(c.calibration.failing()["quantity"].head(6)) or "-"
        rows.append({
            "parameterisation": style,
            "sims": len(ok),
            "failed": int((s["status"] == "failed").sum()),
            "fit wall s (median)": ok["fit_seconds"].median(),
            "fit wall s (mean)": ok["fit_seconds"].mean(),
            "CmdStan s/fit (median)": cpu.median(),
            "CmdStan s/fit (mean)": cpu.mean(),
            "divergences (total)": int(ok["divergences"].sum()),
            **{f"flagged: {r.rule}": r.flagged for r in c.diagnostics.itertuples()
               if r.diagnostic != "failed"},
            "sbc check": "passes" if c.passed else "FAILS",
            "failing": failing,
        })  # fmt: skip
    if not rows:
        return
    print(_table(pd.DataFrame(rows).T.reset_index(), header=False))
    if len(per_sim) == 2:
        both = pd.concat(per_sim, axis=1).dropna()
        ratio = both["centred"] / both["non-centred"]
        print(f"crossed: paired over {len(both)} datasets, CmdStan seconds centred / non-centred: "
              f"median {ratio.median():.2f}, geometric mean {np.exp(np.log(ratio).mean()):.2f}; "
              f"centred slower on {(ratio > 1).mean():.0%}")  # fmt: skip


def report_missing(out: Path, alpha: float) -> None:
    name = "lmm_formula_crossed_missing_slope"
    if not (out / name).exists():
        return
    c = check(out / name, alpha=alpha)
    t = c.verdicts
    print(f"missing slope: {c.headline}")
    bad = c.calibration.failing()
    print(
        _table(
            bad[["quantity", "label", "p_holm", "coverage90", "shape"]]
            if "label" in bad
            else bad[["quantity", "p_holm", "coverage90", "shape"]]
        )
    )
    print(f"  ({len(bad)} of {len(t)} rows fail)")


def report(args: argparse.Namespace) -> None:
    for part in args.only:
        try:
            {"seed": report_seed, "crossed": report_crossed, "missing": report_missing}[part](
                args.out, args.alpha
            )
        except (FileNotFoundError, sbc.SBCError) as exc:
            print(f"{part}: no results yet ({exc})")
        print()


def _table(df: pd.DataFrame, header: bool = True) -> str:
    with pd.option_context("display.max_rows", 500, "display.width", 160):
        return df.to_string(index=False, header=header, float_format=lambda v: f"{v:.3g}")


# -- recover: the hand-written program and the generated one on the seed's dataset ---------------


def recover(args: argparse.Namespace) -> None:
    from scipy.stats import norm

    from sbc.backends.cmdstan.program import cmdstanpy_model, compile_program
    from sbc.seeds import simulation_seeds
    from sbc.simulate import call_simulator

    hand = load_study(STUDIES / "lmm_recovery.toml")
    formula = load_study(STUDIES / "lmm_formula_recovery.toml")
    models = {}
    for label, study in (("hand", hand), ("formula", formula)):
        # sbc's compile cache, not cmdstanpy's (which builds beside the .stan file)
        cmdstan, exe, _ = compile_program(Path(study.stan), progress=False)
        models[label] = cmdstanpy_model(str(exe), str(cmdstan))
    zs, worst = [], None
    for sim in range(args.recover_datasets):
        _, data_a = call_simulator(hand.simulator, simulation_seeds(hand.seed, sim)[0])
        _, data_b = call_simulator(formula.simulator, simulation_seeds(formula.seed, sim)[0])
        same = np.array_equal(data_a["y"], data_b["y"]) and np.array_equal(data_a["X"], data_b["X"])
        summaries = {}
        for label, data, seed in (("hand", data_a, 1 + 2 * sim), ("formula", data_b, 2 + 2 * sim)):
            fit = models[label].sample(data=data, chains=4, iter_warmup=1000, seed=seed,
                                       iter_sampling=args.draws, show_progress=False)  # fmt: skip
            summaries[label] = fit.summary()
        a = summaries["hand"].rename(index=_seed_name_or_none).dropna(how="all")
        b = summaries["formula"]
        names = [q for q in a.index if q in b.index]
        z = (a.loc[names, "Mean"] - b.loc[names, "Mean"]) / np.hypot(
            a.loc[names, "MCSE"], b.loc[names, "MCSE"]
        )
        zs.append(z.to_numpy())
        print(f"recover: dataset {sim} ({'bit-identical' if same else 'DIFFERENT'} in both), "
              f"{len(names)} quantities, max |z| {np.abs(z).max():.2f}", flush=True)  # fmt: skip
        if worst is None or np.abs(z).max() > worst[0]:
            table = pd.DataFrame({"mean hand": a.loc[names, "Mean"],
                                  "mean formula": b.loc[names, "Mean"],
                                  "sd hand": a.loc[names, "StdDev"],
                                  "sd formula": b.loc[names, "StdDev"], "z": z})  # fmt: skip
            worst = (np.abs(z).max(), sim, table)
    every = np.concatenate(zs)
    limit = norm.isf(0.01 / 2 / len(every))
    print(f"recover: {len(zs)} datasets x {len(zs[0])} quantities; posterior means differ by "
          f"|z| <= {np.abs(every).max():.2f} (z on the two MCSEs; Bonferroni limit at family "
          f"level 0.01: {limit:.2f}) -> {'match' if np.abs(every).max() < limit else 'DIFFER'}; "
          f"sd of the z's {every.std():.2f} (about 1 if only Monte Carlo error)")  # fmt: skip
    _, sim, table = worst
    print(f"dataset {sim}, the largest |z|:")
    print(_table(table.reset_index().rename(columns={"index": "quantity"}).head(12)))


def timing(args: argparse.Namespace) -> None:
    import resource
    import tempfile
    import time

    from sbc.execution.prepare import make_backend
    from sbc.seeds import simulation_seeds
    from sbc.simulate import call_simulator

    variants = {s: crossed_variant(s) for s in STYLES}
    backends = {}
    for style, study in variants.items():
        backends[style] = make_backend(study, cores=1)  # chains one after the other
        backends[style].prepare(progress=False)
    rows = []
    base = variants["centred"]
    for sim in range(args.datasets):
        sim_rng, fit_seed, _ = simulation_seeds(base.seed, sim)
        _, data = call_simulator(base.simulator, sim_rng)
        order = list(STYLES) if sim % 2 == 0 else list(reversed(STYLES))
        for style in order:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                fit = backends[style].fit(data, fit_seed, Path(tmp))
                diag = backends[style].diagnose(fit)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            rows.append({"sim": sim, "style": style, "cpu_s": cpu,
                         "wall_s": time.perf_counter() - t0,
                         "divergences": diag["divergences"],
                         "ess_bulk_min": diag["ess_bulk_min"]})  # fmt: skip
        print(f"  dataset {sim}: " + ", ".join(
            f"{r['style']} {r['cpu_s']:.1f} CPU s, {r['divergences']} div" for r in rows[-2:]
        ), flush=True)  # fmt: skip
    t = pd.DataFrame(rows)
    wide = t.pivot(index="sim", columns="style", values="cpu_s")
    ratio = wide["centred"] / wide["non-centred"]
    summary = t.groupby("style").agg(
        cpu_median=("cpu_s", "median"), cpu_mean=("cpu_s", "mean"),
        fits_with_divergences=("divergences", lambda d: int((d > 0).sum())),
        divergences=("divergences", "sum"), ess_bulk_min_median=("ess_bulk_min", "median"),
        fits_ess_below_half_L=("ess_bulk_min", lambda e: int((e < 50).sum())),  # L = 100
    )  # fmt: skip
    print(_table(summary.reset_index()))
    gmean = np.exp(np.log(ratio).mean())
    print(f"timing: {len(wide)} datasets, 2 chains x (500 + 500) iterations; CPU seconds "
          f"centred / non-centred: median {ratio.median():.2f}, geometric mean {gmean:.2f}, "
          f"centred slower on {(ratio > 1).mean():.0%}")  # fmt: skip


def verify(args: argparse.Namespace) -> None:
    """Stored results against the current code: the same program text and, simulation by
    simulation, bit-identical truths (so figures from an earlier commit still stand)."""
    from sbc.ranks import expand
    from sbc.seeds import simulation_seeds
    from sbc.simulate import call_simulator

    for part in args.only:
        for name, study in studies(part):
            folder = args.out / name
            if not (folder / "sbc.sqlite").is_file():
                continue
            r = sbc.load(folder).ranks
            program = "-"
            if study.model is not None:
                same_text = (folder / "model.stan").read_text() == study.model.program
                program = "identical" if same_text else "DIFFERENT"
            same = 0
            for sim, rows in r.groupby("sim"):
                truth, _ = call_simulator(study.simulator, simulation_seeds(study.seed, sim)[0])
                flat = {q: v for k, t in truth.items() for q, v in expand(k, t).items()}
                rows = rows[rows["quantity"].isin(list(flat))]
                same += int((rows["truth"].to_numpy() == rows["quantity"].map(flat)).sum())
            known = int(r["quantity"].map(lambda q: q != "loglik").sum())
            print(f"verify {name}: {r['sim'].nunique()} simulations; program {program}; "
                  f"{same} of {known} stored truths identical to this code's")  # fmt: skip


def _seed_name_or_none(q: str) -> str | None:
    base = q.partition("[")[0]
    return _seed_name(q) if base in SEED_NAMES and base != "loglik" else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["run", "report", "timing", "recover", "verify"])
    p.add_argument("--sims", type=int, default=200)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "formula_models")
    p.add_argument("--only", type=lambda s: s.split(","), default=["seed", "crossed", "missing"])
    p.add_argument("--alpha", type=float, default=0.01)
    p.add_argument("--draws", type=int, default=5000, help="recover: draws per chain")
    p.add_argument("--recover-datasets", type=int, default=5, help="recover: datasets (sims)")
    p.add_argument("--datasets", type=int, default=30, help="timing: datasets")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    commands = {"run": run, "report": report, "timing": timing, "recover": recover}
    {**commands, "verify": verify}[args.what](args)


if __name__ == "__main__":
    main()
