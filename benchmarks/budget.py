"""Sampling budget: cost per simulation and near-independence of the kept draws, per setting.

    python benchmarks/budget.py --quick    # 8 sims per setting (a few minutes)
    python benchmarks/budget.py            # 40 sims per setting (--sims 60 for the README)
    python benchmarks/budget.py --studies studies/lmm_sbc.toml studies/lmm_sbc_auto.toml \\
        --broken --sims 200                # shipped study files side by side (issue 18)

Settings mode: the same simulations (datasets and seeds) of studies/lmm_sbc.toml, fitted with
each setting, written CHAINSxWARMUP+DRAWS/THIN (a fixed stride: L = chains x draws / thin)
or CHAINSxWARMUP+DRAWS/auto[:R[:MAX]] (thin_ranks = "auto" with L = 100: each fit is
continued until every ranked quantity has bulk and tail ESS >= R x L, at most MAX draws per
chain, then thinned to L; R defaults to 0.5 and MAX to 4000):

    2x250+500/10     the shipped fixed budget (studies/lmm_sbc.toml)
    2x150+100/auto   auto thinning from 100 draws per chain after 150 warm-up iterations
    1x300+200/auto,a0.99,dense
                     ... with adapt_delta 0.99 and a dense metric (lmm_sbc_auto.toml)

(`,aDELTA` sets adapt_delta, lmm_sbc.toml's 0.9 otherwise; `,dense` the metric dense_e.)

Studies mode: study files as they are (`--broken` adds, for each, the same study with the
Stan program swapped for stan/lmm_broken_tau.stan: the deliberately wrong prior on tau,
which both budgets must flag), each run once, interleaved.

Replay mode (`--replay`): each setting's rule replayed on the same long chains (one long
fit per dataset and (chains, warm-up), cached with --cache; `_replay.py` says why that is
exact), costed in gradient evaluations; a setting may add the extension rule's constants
(sbc/thinning.py), e.g. 2x150+100/auto:0.5,o1.3,g2,u0 (overshoot 1.3, an extension at most
triples the draws, a fit is continued whatever its ESS projects; g0 and u0: no limit):

    python benchmarks/budget.py --replay --sims 60 --cache /tmp/budget-cache

The long fits are cached per (chains, warm-up, adapt_delta, metric), in folders named after
them (1x300+4000-a0.99-dense).

Per setting or study: CPU seconds per simulation of the whole `sbc run` process tree (wait4:
load-independent, unlike wall time) and simulations per CPU-hour; CmdStan's own seconds
(warm-up + sampling, summed over chains) and the warm-up share; gradient evaluations after
warm-up (sum of n_leapfrog__) and an estimate of all of them (scaled by CmdStan's total /
sampling seconds, as warm-up iterations are not saved); draws per chain (extensions
included) and how many fits were continued; the rank quality: per fit the worst ESS per
kept draw, min(ess_bulk_min, ess_tail_min[, ess_ranked_min]) / L (bulk and tail ESS of
every parameter, and with auto of every ranked quantity, loglik included), and the share
of fits with it >= 0.5 (the criterion of issue 18: >= 95 %); divergent fits; and `sbc
check` at alpha 0.01 with the smallest Holm p (and tau's, in studies mode).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from _common import (
    ROOT,
    abba,
    banner,
    cores,
    fresh_dir,
    load_str,
    sbc_run,
    scratch,
    table,
    write_study,
)

DEFAULT_SETTINGS = (
    "2x250+500/10",
    "2x250+150/auto",
    "2x150+150/auto",
    "2x150+100/auto",
    "2x150+150/auto:1",
    "4x100+50/auto",
    "1x200+200/auto",
)
#: What issue 18 asks of a budget: this share of fits with ESS / L >= 0.5.
QUALITY = 0.95
BROKEN = ROOT / "stan" / "lmm_broken_tau.stan"


#: A setting's options: ``,oN ,gN ,uN`` are auto thinning's rule constants (replay only;
#: g0 and u0: no limit), ``,aN`` the sampler's adapt_delta and ``,dense`` its dense metric.
RULE_OPTIONS = {"o": "overshoot", "g": "max_growth", "u": "give_up"}


def parse_setting(text: str) -> dict:
    pattern = (r"(\d+)x(\d+)\+(\d+)/(\d+|auto(?::([\d.]+))?(?::(\d+))?)"
               r"((?:,(?:[ogua][\d.]+|dense))*)")  # fmt: skip
    m = re.fullmatch(pattern, text.replace(" ", ""))
    if not m:
        raise SystemExit(
            f"setting {text!r}: expected CHAINSxWARMUP+DRAWS/THIN or .../auto[:R[:MAX]], then "
            "options ,aDELTA ,dense (and for auto ,oN ,gN ,uN), e.g. 2x500+500/10 or "
            "1x300+200/auto:0.5,a0.99,dense"
        )
    chains, warmup, draws = map(int, m.groups()[:3])
    s: dict = {"chains": chains, "warmup": warmup, "draws": draws, "sampler": {}, "rule": {}}
    for option in filter(None, m.group(7).split(",")):
        if option == "dense":
            s["sampler"]["metric"] = "dense_e"
        elif option[0] == "a":
            s["sampler"]["adapt_delta"] = float(option[1:])
        else:
            name, value = RULE_OPTIONS[option[0]], float(option[1:])
            no_limit = value == 0 and name in ("max_growth", "give_up")
            s["rule"][name] = float("inf") if no_limit else value
    if m.group(4).startswith("auto"):
        s["auto"] = {
            "min_ess_per_draw": float(m.group(5) or 0.5),
            "max_draws": int(m.group(6) or 4000),
        }
    else:
        if s["rule"]:
            raise SystemExit(f"setting {text!r}: ,o ,g and ,u are auto thinning's")
        s["thin"] = int(m.group(4))
    return s


def sampler_options(sampler: dict) -> str:
    """`parse_setting`'s sampler options, written back: ',a0.99,dense'."""
    delta = sampler.get("adapt_delta")
    return (f",a{delta:g}" if delta else "") + (",dense" if "metric" in sampler else "")


def setting_study(dest: Path, name: str, text: str, sims: int) -> Path:
    """studies/lmm_sbc.toml with one setting's sampler and thinning."""
    s = parse_setting(text)
    auto = s.pop("auto", None)
    if s.pop("rule"):
        raise SystemExit(f"setting {text!r}: the rule's constants (,o ,g ,u) are for --replay")
    sampler = s.pop("sampler")
    if auto is None:
        return write_study(dest, name, sims=sims, **s, **sampler)
    path = write_study(dest, name, sims=sims, **s, **sampler, thin=10)
    body = re.sub(r"^thin_ranks = .*$", 'thin_ranks = "auto"', path.read_text(), flags=re.M)
    table_ = "".join(f"{k} = {v}\n" for k, v in auto.items())
    body = body.replace("\n[simulator]", f"\n[thin_ranks_auto]\n{table_}\n[simulator]", 1)
    path.write_text(body)
    return path


def study_copy(dest: Path, source: Path, sims: int, broken: bool = False) -> Path:
    """A shipped study with absolute paths (and the broken Stan program if asked)."""
    text = source.read_text()
    name = source.stem + ("-broken_tau" if broken else "")
    text = re.sub(r'^name = ".*"', f'name = "{name}"', text, count=1, flags=re.M)
    own = re.search(r'^stan = "([^"]+)"', text, re.M)
    stan = BROKEN if broken or own is None else source.parent / own.group(1)
    text = re.sub(r'^stan = "[^"]+"', f'stan = "{Path(stan).resolve()}"', text, count=1, flags=re.M)
    text = re.sub(r"^sims = \d+", f"sims = {sims}", text, count=1, flags=re.M)
    path = dest / f"{name}.toml"
    path.write_text(text)
    return path


def rank_spread(ranks) -> np.ndarray:
    """Per simulation, the mean over its quantities (pooled rows left out) of
    (rank - L/2)^2 / the uniform's variance on 0..L: 1 on average when ranks are uniform,
    above 1 when they are U-shaped (kept draws too narrow or too dependent)."""
    single = ranks[~ranks["quantity"].str.contains("*", regex=False)]
    L = single["L"].to_numpy(dtype=float)
    z = (single["rank"].to_numpy(dtype=float) - L / 2) ** 2 / (((L + 1) ** 2 - 1) / 12)
    return single.assign(z=z).groupby("sim")["z"].mean().to_numpy()


def spread_interval(per_sim: np.ndarray, seed: int = 0) -> str:
    """The mean of `rank_spread` with a 95 % interval, resampling whole simulations (their
    quantities are dependent)."""
    rng = np.random.default_rng(seed)
    boot = [per_sim[rng.integers(0, len(per_sim), len(per_sim))].mean() for _ in range(2000)]
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return f"{per_sim.mean():.3f} ({lo:.2f}-{hi:.2f})"


def measure(out: Path, run, alpha: float = 0.01) -> dict:
    """Per-simulation figures of one finished run (`sbc_run`)."""
    import sbc
    from sbc.checks import check

    res = sbc.load(out)
    sims = res.simulations
    ok = sims[sims["status"] == "ok"]
    L = float(res.ranks.groupby("sim")["L"].max().median()) if len(res.ranks) else np.nan
    chains = float((res.manifest.get("study", {}).get("sampler") or {}).get("chains", 1))
    worst = [ok[c].to_numpy(dtype=float) for c in ("ess_bulk_min", "ess_tail_min", "ess_ranked_min")
             if c in ok]  # fmt: skip
    ess = np.nanmin(np.vstack(worst), axis=0) / L
    outcome = check(res, alpha=alpha)
    v = outcome.verdicts.set_index("quantity")
    own = (ok["warmup_seconds"] + ok["sampling_seconds"]).to_numpy(dtype=float)
    samp = ok["sampling_seconds"].to_numpy(dtype=float)
    none = np.full(len(ok), np.nan)
    leap = ok["n_leapfrog"].to_numpy(dtype=float) if "n_leapfrog" in ok else none
    extensions = ok["extensions"].fillna(0).to_numpy(dtype=float) if "extensions" in ok else none
    return {
        "n": len(sims),
        "failed": int((sims["status"] != "ok").sum()),
        "cpu": run.cpu / len(sims),
        "wall": run.wall / len(sims),
        "L": L,
        "own": own,
        "warm": ok["warmup_seconds"].to_numpy(dtype=float),
        "leap": leap,
        "leap_total": leap * own / np.where(samp > 0, samp, np.nan),
        "draws": ok["n_draws"].to_numpy(dtype=float) / chains,
        "extensions": extensions,
        "ess": ess,
        "ess_b": ok["ess_bulk_min"].to_numpy(dtype=float) / L,
        "ess_t": ok["ess_tail_min"].to_numpy(dtype=float) / L,
        "div": (ok["divergences"].fillna(0) > 0).to_numpy(),
        "spread": rank_spread(res.ranks),
        "passed": outcome.passed,
        "p_min": float(v["p_holm"].min()),
        "p_tau": {q: float(v.at[q, "p_holm"]) for q in v.index if q.startswith("tau[")},
        "load": run.load,
    }


def summarise(label: str, runs: list[dict]) -> dict:
    cat = lambda key: np.concatenate([r[key] for r in runs])  # noqa: E731
    ess = cat("ess")
    n = sum(r["n"] for r in runs)
    cpu = float(np.mean([r["cpu"] for r in runs]))
    p_tau = runs[0]["p_tau"]
    return {
        "setting": label,
        "L": runs[0]["L"],
        "n": n,
        "failed": sum(r["failed"] for r in runs),
        "cpu": cpu,
        "per_cpu_hour": 3600 / cpu,
        "own": float(np.mean(cat("own"))),
        "warm_share": float(cat("warm").sum() / cat("own").sum()),
        "wall": float(np.mean([r["wall"] for r in runs])),
        "leap": float(np.nanmean(cat("leap"))),
        "leap_total": float(np.nanmean(cat("leap_total"))),
        "draws_med": float(np.median(cat("draws"))),
        "draws_p90": float(np.percentile(cat("draws"), 90)),
        "draws_max": float(np.max(cat("draws"))),
        "extended": float(np.mean(cat("extensions") > 0)),
        "ext_mean": float(np.mean(cat("extensions"))),
        "ess_med": float(np.nanmedian(ess)),
        "ess_p5": float(np.nanpercentile(ess, 5)),
        "ess_ok": float(np.mean(ess >= 0.5)),
        "bulk_ok": float(np.mean(cat("ess_b") >= 0.5)),
        "tail_ok": float(np.mean(cat("ess_t") >= 0.5)),
        "div": float(np.mean(cat("div"))),
        "spread": spread_interval(cat("spread")),
        "sbc": "/".join("pass" if r["passed"] else "FAIL" for r in runs),
        "p_min": min(r["p_min"] for r in runs),
        "p_tau": ", ".join(f"{q} {p:.2g}" for q, p in p_tau.items()) or "-",
    }


COST = [
    ("setting", "setting", ""),
    ("n", "sims", "{}"),
    ("cpu", "CPU s/sim", "{:.2f}"),
    ("per_cpu_hour", "sims/CPU-h", "{:.0f}"),
    ("own", "CmdStan s/fit", "{:.2f}"),
    ("warm_share", "warm-up share", "{:.0%}"),
    ("leap", "grad evals (sampling)", "{:.0f}"),
    ("leap_total", "grad evals (all, est.)", "{:.0f}"),
    ("draws_med", "draws/chain med.", "{:.0f}"),
    ("draws_p90", "p90", "{:.0f}"),
    ("draws_max", "max", "{:.0f}"),
    ("extended", "fits continued", "{:.0%}"),
    ("ext_mean", "continuations/fit", "{:.2f}"),
]
QUALITY_COLUMNS = [
    ("setting", "setting", ""),
    ("L", "L", "{:.0f}"),
    ("ess_ok", "ESS/L >= 0.5", "{:.1%}"),
    ("bulk_ok", "bulk only", "{:.1%}"),
    ("tail_ok", "tail only", "{:.1%}"),
    ("ess_med", "ESS/L median", "{:.2f}"),
    ("ess_p5", "5th pct", "{:.2f}"),
    ("div", "divergent fits", "{:.0%}"),
    ("spread", "rank variance / uniform (95 %)", ""),
    ("failed", "failed", "{}"),
    ("sbc", "sbc check", ""),
    ("p_min", "min Holm p", "{:.2g}"),
]


REPLAY_SETTINGS = (
    "2x250+500/10",
    "2x250+150/auto",
    "2x150+150/auto",
    "2x150+100/auto",
    "2x150+100/auto:0.5,g0",
    "2x150+100/auto:0.5,o1.3",
    "2x150+100/auto:0.75",
    "2x150+100/auto:1",
    "2x100+100/auto",
    "4x100+50/auto",
    "1x250+150/auto",
)


def replay_main(args, sims: int, work: Path) -> int:
    """--replay: every setting replayed on the same long chains, costed in gradients."""
    from _replay import collect, replay_auto, replay_fixed

    settings = {t: parse_setting(t) for t in args.settings}
    key = lambda s: (s["chains"], s["warmup"], sampler_options(s["sampler"]))  # noqa: E731
    cache = Path(args.cache) if args.cache else work / "cache"
    chains_of: dict[tuple[int, int, str], list] = {}
    for chains, warmup, options in sorted({key(s) for s in settings.values()}):
        long = f"{chains}x{warmup}+100/1{options}"
        study = setting_study(work, f"long{len(chains_of)}", long, sims)
        # as many draws in all as 2 chains of --replay-draws (1 chain: as many per chain)
        draws = args.replay_draws * 2 // max(chains, 2)
        folder = cache / f"{chains}x{warmup}+{draws}{options.replace(',', '-')}"
        print(f"  long fits {chains} x ({warmup} + {draws}){options}: {folder}", flush=True)
        chains_of[(chains, warmup, options)] = collect(study, sims, draws, args.workers, folder)
    rows = []
    for text, s in settings.items():
        fits = chains_of[key(s)]
        if "auto" in s:
            out = [replay_auto(c, s["draws"], 100, **s["auto"], **s["rule"]) for c in fits]
        else:
            out = [replay_fixed(c, s["draws"], s["thin"]) for c in fits]
        col = lambda k, out=out: np.array([o[k] for o in out], dtype=float)  # noqa: E731
        rows.append({
            "setting": text, "n": len(out), "grads": col("grads").mean(),
            "warm_share": col("grads_warmup").sum() / col("grads").sum(),
            "draws_med": np.median(col("draws")), "draws_p90": np.percentile(col("draws"), 90),
            "draws_max": col("draws").max(), "extended": np.mean(col("extensions") > 0),
            "ext_mean": col("extensions").mean(), "ess_ok": np.mean(col("ess_per_draw") >= 0.5),
            "ranked_ok": np.mean(col("ess_ranked") >= 0.5),
            "ess_med": np.median(col("ess_per_draw")),
            "ess_p5": np.percentile(col("ess_per_draw"), 5), "capped": np.mean(col("capped")),
            "div": np.mean(col("divergent")),
            "div_rate": 1000 * col("divergent_share").mean(),
            "div_1pc": np.mean(col("divergent_share") > 0.01),
        })  # fmt: skip
    for r in rows:
        r["rel"] = r["grads"] / rows[0]["grads"]
        r["speed"] = rows[0]["grads"] / r["grads"]
    print()
    print(table(rows, [
        ("setting", "setting", ""), ("n", "fits", "{}"), ("grads", "grad evals/fit", "{:.0f}"),
        ("rel", "rel.", "{:.2f}"), ("speed", "fits per grad", "{:.2f}x"),
        ("warm_share", "warm-up share", "{:.0%}"), ("draws_med", "draws/chain med.", "{:.0f}"),
        ("draws_p90", "p90", "{:.0f}"), ("draws_max", "max", "{:.0f}"),
        ("extended", "continued", "{:.0%}"), ("ext_mean", "continuations", "{:.2f}"),
    ], title="Replayed cost per fit (gradient evaluations, warm-up included)"))  # fmt: skip
    print()
    print(table(rows, [
        ("setting", "setting", ""), ("ess_ok", "ESS/L >= 0.5", "{:.1%}"),
        ("ranked_ok", "ranked only", "{:.1%}"), ("ess_med", "ESS/L median", "{:.2f}"),
        ("ess_p5", "5th pct", "{:.2f}"), ("capped", "at max_draws", "{:.0%}"),
        ("div", "divergent fits", "{:.0%}"),
        ("div_1pc", "> 1 % divergent", "{:.1%}"), ("div_rate", "divergent per 1000", "{:.1f}"),
    ], title="Replayed quality (ESS/L: the worst bulk or tail ESS of every parameter and "
             "every ranked quantity, / L)"))  # fmt: skip
    print(f"\nload average at the end: {load_str()}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="8 simulations per setting")
    ap.add_argument("--sims", type=int, help="simulations per setting or study")
    ap.add_argument("--settings", nargs="+", default=list(DEFAULT_SETTINGS),
                    help="CHAINSxWARMUP+DRAWS/THIN or .../auto[:R[:MAX]], then options "
                         ",aDELTA ,dense (auto: ,oN ,gN ,uN)")  # fmt: skip
    ap.add_argument("--studies", nargs="+", type=Path, help="study files to compare instead")
    ap.add_argument("--replay", action="store_true", help="replay the settings on long chains")
    ap.add_argument("--replay-draws", type=int, default=2000, help="draws per chain of a long fit")
    ap.add_argument("--cache", help="--replay: folder of the long fits (reused when present)")
    ap.add_argument("--broken", action="store_true",
                    help="with --studies: each study also with the broken-tau model")  # fmt: skip
    ap.add_argument("--repeats", type=int, default=1, help="rounds of the interleaved cycle")
    ap.add_argument("--workers", type=int, default=cores())
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = ap.parse_args()
    sims = args.sims or (8 if args.quick else 40)
    mode = "quick" if args.quick else "full"
    banner("sampling budget: cost per simulation vs ESS per kept draw", mode)
    work = scratch("sbc-bench-budget-", keep=args.keep)
    if args.keep:
        print(f"   scratch folder {work}\n")
    if args.replay:
        if args.settings == list(DEFAULT_SETTINGS):
            args.settings = list(REPLAY_SETTINGS)
        return replay_main(args, sims, work)
    studies: dict[str, Path] = {}
    if args.studies:
        for path in args.studies:  # the studies first, so their comparison comes first
            studies[path.stem] = study_copy(work, path.resolve(), sims)
        for path in args.studies if args.broken else []:
            studies[f"{path.stem} (broken tau)"] = study_copy(work, path.resolve(), sims, True)
    else:
        for k, text in enumerate(args.settings):
            studies[text] = setting_study(work, f"budget{k}", text, sims)
    labels = list(studies)
    # compile the models, warm the caches
    sbc_run(studies[labels[0]], fresh_dir(work, "warm"), "warm", work, workers=1, sims=1,
            trace=False)  # fmt: skip
    if args.broken:
        first_broken = next(label for label in labels if "broken" in label)
        sbc_run(studies[first_broken], fresh_dir(work, "warm-b"), "warm", work, workers=1,
                sims=1, trace=False)  # fmt: skip
    print(f"{sims} simulations per setting, {args.workers} workers\n")

    per: dict[str, list[dict]] = {t: [] for t in labels}
    for i, label in enumerate(abba(labels, args.repeats)):
        out = fresh_dir(work, f"out-{i}")
        run = sbc_run(studies[label], out, label, work, workers=args.workers, trace=False)
        per[label].append(measure(out, run))
        print(f"  run {i + 1:2d} {label:34s} CPU {run.cpu:7.1f} s  wall {run.wall:7.1f} s  "
              f"load {run.load[0]:.1f}-{run.load[1]:.1f}", flush=True)  # fmt: skip
    print()
    rows = [summarise(label, per[label]) for label in labels]
    ref = rows[0]
    for r in rows:
        r["speed"] = r["per_cpu_hour"] / ref["per_cpu_hour"]
        r["grad_rel"] = r["leap_total"] / ref["leap_total"]
    cost = [*COST[:4], ("speed", f"vs {ref['setting']}", "{:.2f}x"), *COST[4:7],
            ("grad_rel", "rel.", "{:.2f}"), *COST[7:]]  # fmt: skip
    print(table(rows, cost, title="Cost per simulation (CPU: the whole sbc run process tree)"))
    print()
    quality = QUALITY_COLUMNS + ([("p_tau", "Holm p of tau", "")] if args.studies else [])
    title = ("Quality of the kept draws (ESS/L: per fit, the worst bulk or tail ESS of every "
             "parameter, and with auto of every ranked quantity, / L)")  # fmt: skip
    print(table(rows, quality, title=title))
    print()
    for r in rows[1:]:
        if "broken" in r["setting"]:
            continue
        good = r["ess_ok"] >= QUALITY
        print(f"{r['setting']}: {r['speed']:.2f}x the simulations per CPU-hour of "
              f"{ref['setting']}; {r['ess_ok']:.1%} of fits with ESS/L >= 0.5 "
              f"({'meets' if good else 'misses'} the {QUALITY:.0%} criterion)")  # fmt: skip
    print("\n(R-hat needs 2+ chains. 'sbc check' has little power with few simulations.)")
    print(f"load average at the end: {load_str()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
