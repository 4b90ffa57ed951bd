"""Sampling budget: cost per fit and near-independence of the kept draws, per sampler setting.

    python benchmarks/budget.py --quick    # 8 sims per setting (a few minutes)
    python benchmarks/budget.py            # 40 sims per setting (--sims 60 for the README)

The same simulations (datasets and seeds) of studies/lmm_sbc.toml, fitted with each setting
(chains x (warm-up + draws), thin); L = chains x draws / thin draws are kept for the ranks:

    2x(250+500)/10   the shipped default
    2x(500+500)/10   the default before: twice the warm-up
    1x(500+1000)/10  one longer chain: less warm-up in total, but no R-hat
    4x(250+250)/10   more, shorter chains
    2x(250+1000)/20  twice the draws, thinned twice as much: near-independent kept draws

Per setting: CmdStan's own seconds per fit (warm-up + sampling, summed over chains: the
core-seconds a fit costs on an idle machine; on a busy one it includes waiting for a CPU),
CPU seconds per fit of the whole `sbc run` process tree (the load-independent cost), wall time
per fit, ESS per kept draw = ess_bulk_min / L (and ess_tail_min / L; at 1 the kept draws are
as good as independent for the worst-mixing quantity), median bulk ESS (worst quantity) per
CPU second, R-hat, divergences, and `sbc check`
of the ranks (the correct model must pass; with few simulations this check has little power,
it guards against gross failures only). Settings run interleaved (A B C C B A with --repeats 2).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from _common import (
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
    "2x500+500/10",
    "1x500+1000/10",
    "4x250+250/10",
    "2x250+1000/20",
)


def parse_setting(text: str) -> dict[str, int]:
    m = re.fullmatch(r"(\d+)x(\d+)\+(\d+)/(\d+)", text.replace(" ", ""))
    if not m:
        raise SystemExit(f"setting {text!r}: expected CHAINSxWARMUP+DRAWS/THIN, e.g. 2x500+500/10")
    chains, warmup, draws, thin = map(int, m.groups())
    return {"chains": chains, "warmup": warmup, "draws": draws, "thin": thin}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="8 simulations per setting")
    ap.add_argument("--sims", type=int, help="simulations per setting")
    ap.add_argument(
        "--settings", nargs="+", default=list(DEFAULT_SETTINGS), help="CHAINSxWARMUP+DRAWS/THIN ..."
    )
    ap.add_argument("--repeats", type=int, default=1, help="rounds of the interleaved cycle")
    ap.add_argument("--workers", type=int, default=cores())
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = ap.parse_args()
    sims = args.sims or (8 if args.quick else 40)
    banner("sampling budget: cost per fit vs ESS per kept draw", "quick" if args.quick else "full")
    work = scratch("sbc-bench-budget-", keep=args.keep)
    studies = {}
    for k, text in enumerate(args.settings):
        studies[text] = write_study(work, f"budget{k}", sims=sims, **parse_setting(text))
    sbc_run(
        studies[args.settings[0]],
        fresh_dir(work, "warm"),
        "warm",
        work,
        workers=1,
        sims=1,
        trace=False,
    )
    print(f"{sims} simulations per setting, {args.workers} workers\n")

    import sbc
    from sbc.checks import check

    per: dict[str, list[dict]] = {t: [] for t in args.settings}
    for i, text in enumerate(abba(args.settings, args.repeats)):
        out = fresh_dir(work, f"out-{i}")
        run = sbc_run(studies[text], out, text, work, workers=args.workers, trace=False)
        res = sbc.load(out)
        sims_df = res.simulations
        L = int(res.ranks["L"].iloc[0]) if len(res.ranks) else 0
        outcome = check(res)
        p_min = float(outcome.verdicts["p_holm"].min()) if "p_holm" in outcome.verdicts else np.nan
        per[text].append(
            {
                "wall": run.wall,
                "cpu": run.cpu,
                "n": len(sims_df),
                "L": L,
                "own": (sims_df["warmup_seconds"] + sims_df["sampling_seconds"]).to_numpy(),
                "warm": sims_df["warmup_seconds"].to_numpy(),
                "ess_b": sims_df["ess_bulk_min"].to_numpy() / L,
                "ess_t": sims_df["ess_tail_min"].to_numpy() / L,
                "rhat": sims_df["rhat_max"].to_numpy(dtype=float),
                "div": (sims_df["divergences"].fillna(0) > 0).to_numpy(),
                "failed": int((sims_df["status"] != "ok").sum()),
                "passed": outcome.passed,
                "p_min": p_min,
                "load": run.load,
            }
        )
        print(
            f"  run {i + 1} {text:14s} wall {run.wall:6.1f} s  load {run.load[0]:.2f}", flush=True
        )
    print()
    rows = []
    ref_own = None
    for text in args.settings:
        runs = per[text]
        own = np.concatenate([r["own"] for r in runs])
        ess_b = np.concatenate([r["ess_b"] for r in runs])
        ess_t = np.concatenate([r["ess_t"] for r in runs])
        rhat = np.concatenate([r["rhat"] for r in runs])
        n = sum(r["n"] for r in runs)
        ref_own = ref_own or float(own.mean())
        s = parse_setting(text)
        rows.append(
            {
                "setting": text,
                "L": runs[0]["L"],
                "iters": s["chains"] * (s["warmup"] + s["draws"]),
                "own": float(own.mean()),
                "rel": float(own.mean()) / ref_own,
                "warm_share": float(np.concatenate([r["warm"] for r in runs]).sum() / own.sum()),
                "cpu": float(np.mean([r["cpu"] / r["n"] for r in runs])),
                "wall": float(np.mean([r["wall"] / r["n"] for r in runs])),
                "ess_med": float(np.nanmedian(ess_b)),
                "ess_p10": float(np.nanpercentile(ess_b, 10)),
                "ess_min": float(np.nanmin(ess_b)),
                "below1": float(np.mean(ess_b < 1)),
                "tail_med": float(np.nanmedian(ess_t)),
                "rhat_max": float(np.nanmax(rhat)) if np.isfinite(rhat).any() else np.nan,
                "rhat_bad": float(np.mean(rhat > 1.01)) if np.isfinite(rhat).any() else np.nan,
                "div": float(np.mean(np.concatenate([r["div"] for r in runs]))),
                "sbc": "/".join("pass" if r["passed"] else "FAIL" for r in runs),
                "p_min": min(r["p_min"] for r in runs),
                "n": n,
                "eff": float(np.nanmedian(ess_b))
                * runs[0]["L"]
                / float(np.mean([r["cpu"] / r["n"] for r in runs])),
            }
        )
    print(
        table(
            rows,
            [
                ("setting", "setting", ""),
                ("iters", "iterations", "{}"),
                ("L", "L", "{}"),
                ("own", "CmdStan s/fit", "{:.2f}"),
                ("rel", "rel.", "{:.2f}"),
                ("warm_share", "warm-up share", "{:.0%}"),
                ("cpu", "CPU s/fit", "{:.2f}"),
                ("wall", "wall s/fit", "{:.2f}"),
            ],
            title="Cost per fit (CmdStan s: its own warm-up + sampling s, summed over chains)",
        )
    )
    print()
    print(
        table(
            rows,
            [
                ("setting", "setting", ""),
                ("ess_med", "ESS/L median", "{:.2f}"),
                ("ess_p10", "10th pct", "{:.2f}"),
                ("ess_min", "min", "{:.2f}"),
                ("below1", "share < 1", "{:.0%}"),
                ("tail_med", "tail ESS/L med.", "{:.2f}"),
                ("eff", "ESS per CPU s", "{:.0f}"),
                ("rhat_max", "max R-hat", "{:.3f}"),
                ("rhat_bad", "R-hat>1.01", "{:.0%}"),
                ("div", "divergent fits", "{:.0%}"),
                ("sbc", "sbc check", ""),
                ("p_min", "min Holm p", "{:.2g}"),
                ("n", "sims", "{}"),
            ],
            title="Quality of the kept draws (ESS/L = ess_bulk_min / L per simulation; worst "
            "quantity of each fit)",
        )
    )
    print(
        "\n(R-hat needs 2+ chains: with one chain it is not computed. 'sbc check' has little "
        "power with few simulations.)"
    )
    print(f"load average at the end: {load_str()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
