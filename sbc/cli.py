"""The `sbc` command: a thin layer over the Python API.

Exit codes: 0 success (and "calibrated" for check), 1 a check or comparison
failed (for run: every simulation failed, or --stop-early stopped the study), 2 bad input
(one line on stderr, never a traceback; for run also a study whose first simulations all
failed the same way), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from sbc.errors import SBCError


class _Parser(argparse.ArgumentParser):
    """argparse, but misuse is one line and exit code 2 (not usage text plus a line)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise SBCError(f"{message} (see '{self.prog} --help')")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a seed >= 0, got {value}")
    return value


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sbc", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("setup", help="find or provision CmdStan (idempotent)")
    p.add_argument("--quiet", action="store_true", help="print only the CmdStan path")

    p = sub.add_parser("recover", help="fit one dataset at a known truth; table + trace plot")
    p.add_argument("study", type=Path, help="study file (TOML)")
    p.add_argument("--seed", type=_seed, help="override the study's seed")
    p.add_argument("--stan", type=Path, help="override the study's Stan program")
    p.add_argument("--out", type=Path, help="results folder (default results/<name>)")
    _add_backend_argument(p)
    p.add_argument("--quiet", action="store_true", help="no progress messages")

    p = sub.add_parser("run", help="run or resume an SBC study")
    p.add_argument("study", type=Path, help="study file (TOML)")
    p.add_argument("--sims", type=_positive_int, help="number of simulations")
    p.add_argument("--workers", type=_positive_int, help="parallel worker processes")
    p.add_argument("--seed", type=_seed, help="master seed")
    p.add_argument("--out", type=Path, help="results folder (default results/<name>)")
    p.add_argument(
        "--scheduler",
        help="'local' (default), 'local:N', tcp://host:port or tls://host:port (dask)",
    )
    p.add_argument("--tls-ca-file", metavar="PEM", help="CA certificate(s) for a tls:// scheduler")
    p.add_argument("--tls-cert", metavar="PEM", help="this client's certificate (tls://)")
    p.add_argument("--tls-key", metavar="PEM",
                   help="this client's private key (tls://), if not in --tls-cert")  # fmt: skip
    _add_backend_argument(p)
    p.add_argument("--retry-failed", action="store_true", help="rerun failed simulations")
    p.add_argument("--new", action="store_true", help="start over in a new results folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar (for CI logs)")
    p.add_argument("--stop-early", action="store_true",
                   help="stop when a sequential test rejects a quantity")  # fmt: skip
    p.add_argument("--alpha", type=_probability, default=0.01,
                   help="family-wise false-alarm rate of --stop-early (default 0.01)")  # fmt: skip
    p.add_argument("--look-every", type=_positive_int, default=1, metavar="K",
                   help="--stop-early tests after every K sims (default 1)")  # fmt: skip

    p = sub.add_parser("precheck", help="no MCMC: do simulator and program agree? exit 0 yes, 1 no")
    p.add_argument("study", type=Path, help="study file (TOML)")
    p.add_argument("--sims", type=_positive_int, default=1000,
                   help="simulated truths (default 1000)")  # fmt: skip
    p.add_argument("--seed", type=_seed, help="override the study's seed")
    p.add_argument("--alpha", type=_probability, default=0.01, help="test level (default 0.01)")
    p.add_argument("--workers", type=_positive_int, help="CmdStan processes at a time")
    p.add_argument("--quiet", action="store_true", help="no progress messages")

    p = sub.add_parser("plan", help="simulations an SBC question needs: fixed-size vs sequential")
    _add_plan_arguments(p)

    p = sub.add_parser("rerank", help="rank a kept-draws study again, without refitting")
    p.add_argument("results", type=Path, help="results folder (of a study with keep_draws)")
    p.add_argument("--derived", type=_derived, action="append", default=[],
                   metavar="NAME=MODULE:FUNCTION",
                   help="a derived quantity f(params, data) to add or redefine; repeatable "
                        "('module:function' or 'file.py:function')")  # fmt: skip
    p.add_argument("--thin-ranks", type=_positive_int, metavar="K",
                   help="rank every K-th draw (a multiple of the kept draws' stride)")  # fmt: skip
    p.add_argument("--from-version", type=_positive_int, metavar="N",
                   help="the version of the ranks to start from (default: the newest)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("report", help="write a self-contained HTML report of a study's results")
    p.add_argument("results", type=Path, help="results folder")
    p.add_argument("--out", type=Path, help="HTML file (default RESULTS/report.html)")
    p.add_argument("--alpha", type=_probability, default=0.01, help="test level (default 0.01)")
    _add_pool_argument(p)
    _add_version_argument(p)

    p = sub.add_parser("check", help="verdict table; exit 0 calibrated, 1 not, 2 bad input")
    p.add_argument("results", type=Path, help="results folder")
    p.add_argument("--alpha", type=_probability, default=0.01, help="test level (default 0.01)")
    p.add_argument("--max-divergent-share", type=_probability, metavar="X",
                   help="fail if more than this share of fits diverged")  # fmt: skip
    p.add_argument("--max-failed-share", type=_probability, metavar="X",
                   help="fail if more than this share of simulations failed")  # fmt: skip
    _add_pool_argument(p)
    _add_version_argument(p)

    p = sub.add_parser("compare", help="paired comparison of two models on the same datasets")
    p.add_argument("baseline", type=Path, help="results folder or study file (runs it first)")
    p.add_argument("candidate", type=Path, help="results folder or study file (runs it first)")
    p.add_argument("--alpha", type=_probability, default=0.01, help="test level (default 0.01)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_pool_argument(p)
    _add_version_argument(p)
    return parser


def _add_version_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ranks-version", type=_positive_int, metavar="N",
                   help="which version of the ranks (`sbc rerank` adds versions; "
                        "default: the newest)")  # fmt: skip


def _derived(text: str) -> tuple[str, str]:
    name, sep, spec = text.partition("=")
    target, colon, func = spec.rpartition(":")
    if not sep or not name.isidentifier() or not colon or not target or not func.isidentifier():
        raise argparse.ArgumentTypeError(f"expected NAME=MODULE:FUNCTION, got {text!r}")
    if target.endswith(".py"):  # a file is named relative to where the command runs
        spec = f"{Path(target).resolve()}:{func}"
    return name, spec


def _pool(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if not n.isidentifier()]
    if bad:
        raise argparse.ArgumentTypeError(f"expected variable names, got {bad[0]!r}")
    return names


def _add_pool_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pool", type=_pool, metavar="VARS",
                   help="variables whose components are pooled as group effects, e.g. 'b' "
                        "(default: as the study declares; '' for none)")  # fmt: skip


def _add_backend_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", metavar="NAME",
                   help="run another inference method (e.g. cmdstan-variational) on the same "
                        "datasets, with the study's [backend.NAME] settings; results go to "
                        "results/<name>-NAME")  # fmt: skip


def _version() -> str:
    from sbc import __version__

    return f"sbc {__version__}"


def _add_plan_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of `sbc plan` (for the CLI's subparser)."""
    p.add_argument(
        "--effect",
        required=True,
        help="narrow:F, wide:F, bias:B, coverage:C[@LEVEL], or several joined by commas",
    )
    p.add_argument("--power", type=float, default=0.9, help="target power (default 0.9)")
    p.add_argument("--alpha", type=float, default=0.01, help="family-wise level (default 0.01)")
    p.add_argument(
        "--quantities",
        type=int,
        default=1,
        help="quantities tested together, one of them affected (default 1)",
    )
    p.add_argument(
        "--L",
        dest="L",
        type=int,
        default=100,
        help="rank resolution: thinned draws per fit (default 100)",
    )
    p.add_argument(
        "--look-every", type=int, default=1, help="sequential looks every k simulations (default 1)"
    )
    p.add_argument(
        "--studies", type=int, default=1000, help="simulated studies per estimate (default 1000)"
    )
    p.add_argument(
        "--max-sims", type=int, default=10_000, help="longest study simulated (default 10000)"
    )
    p.add_argument("--seed", type=int, default=20261125, help="random seed")
    p.add_argument(
        "--plot",
        type=Path,
        default=Path("sbc_plan.png"),
        help="power-curve PNG (default sbc_plan.png)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return _COMMANDS[args.command](args)
    except SBCError as exc:
        print(f"sbc: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("sbc: interrupted; finished simulations are stored (run again to resume)",
              file=sys.stderr)  # fmt: skip
        return 130


def _setup(args: argparse.Namespace) -> int:
    from sbc.backends.cmdstan.install import cmdstan_version, ensure_cmdstan

    path = ensure_cmdstan(progress=not args.quiet)
    if args.quiet:
        print(path)
    else:
        print(f"CmdStan {cmdstan_version(path)} at {path}")
    return 0


def _recover(args: argparse.Namespace) -> int:
    from sbc.recover import recover
    from sbc.study import load_study

    study = load_study(args.study).with_overrides(
        seed=args.seed, out=args.out, stan=args.stan, backend=args.backend
    )
    result = recover(study, progress=not args.quiet)
    _print_recovery(result)
    return 0


def _print_recovery(result) -> None:
    import pandas as pd

    table = result.table.copy()
    table["covered90"] = table["covered90"].map({True: "yes", False: "NO"})
    with pd.option_context("display.max_rows", 500, "display.width", 120):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    d = result.diagnostics
    print()
    keys = [rule.name for rule in result.rules]  # what the backend declares, in its order
    shown = [f"{k}={d[k]:.3g}" if isinstance(d[k], float) else f"{k}={d[k]}"
             for k in keys if k in d]  # fmt: skip
    print("diagnostics: " + ", ".join(shown))
    covered = int((result.table["covered90"]).sum())
    print(f"90% intervals cover the truth for {covered} of {len(result.table)} quantities")
    print(f"trace plot: {result.trace_png}")


def _run(args: argparse.Namespace) -> int:
    from sbc.execution.run import run

    folder = run(
        args.study,
        sims=args.sims,
        seed=args.seed,
        workers=args.workers,
        scheduler=args.scheduler,
        out=args.out,
        backend=args.backend,
        retry_failed=args.retry_failed,
        new=args.new,
        progress=not args.quiet,
        stop_early=args.stop_early,
        alpha=args.alpha,
        look_every=args.look_every,
        tls={"tls_ca_file": args.tls_ca_file, "tls_cert": args.tls_cert, "tls_key": args.tls_key},
    )
    from sbc.results import load

    res = load(folder)
    sims = res.simulations
    failed = int((sims["status"] == "failed").sum())
    print(f"{len(sims)} simulations stored in {folder} ({failed} failed)")
    if len(sims) and failed == len(sims):  # nothing to analyse: say so in the exit code
        from sbc.execution.failfast import most_common_reason

        print(f"every simulation failed (most often: {most_common_reason(sims['error'])})")
        return 1
    stopped = res.manifest.get("stopped_early")
    if args.stop_early and stopped:
        from sbc.analysis.sequential import Rejection

        print(Rejection.from_dict(stopped).message())
        print("the store is resumable: run again without --stop-early for the full study")
        return 1
    return 0


def _precheck(args: argparse.Namespace) -> int:
    from sbc.precheck import precheck

    result = precheck(args.study, sims=args.sims, seed=args.seed, alpha=args.alpha,
                      workers=args.workers, progress=not args.quiet)  # fmt: skip
    table = result.table.copy()
    table["consistent"] = table["consistent"].map({True: "", False: "FAILS"})
    print(_table(table.rename(columns={"consistent": ""})))
    print()
    print(f"{result.headline()} [{result.seconds:.1f} s]")
    return 0 if result.consistent else 1


def _plan(args: argparse.Namespace) -> int:
    """`sbc plan`: print the table, write the plot."""
    from sbc.analysis.power import format_plan, plan

    result = plan(
        args.effect,
        power=args.power,
        alpha=args.alpha,
        quantities=args.quantities,
        L=args.L,
        studies=args.studies,
        look_every=args.look_every,
        seed=args.seed,
        max_sims=args.max_sims,
    )
    print(format_plan(result))
    print()
    print(f"power curve: {result.plot(args.plot)}")
    return 0


def _rerank(args: argparse.Namespace) -> int:
    from sbc.execution.rerank import rerank
    from sbc.results import load

    names = [name for name, _ in args.derived]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise SBCError(f"--derived: {twice[0]} is given twice")
    before = load(args.results).rank_versions
    version = rerank(
        args.results,
        derived=dict(args.derived),
        thin_ranks=args.thin_ranks,
        from_version=args.from_version,
        progress=not args.quiet,
    )
    res = load(args.results, version)
    info = res.version_info()
    thin = info.get("thin")
    print(
        f"ranks version {version} of {len(res.rank_versions)} in {res.folder}: "
        f"{len(info.get('quantities') or [])} quantities, {res.ranks['sim'].nunique()} "
        f"simulations, thinned {'per fit (auto)' if thin == 'auto' else f'by {thin}'}"
        + (" (already stored: nothing to compute)" if version in before else "")
    )
    return 0


def _report(args: argparse.Namespace) -> int:
    from sbc.reports import write_report

    path = write_report(args.results, out=args.out, alpha=args.alpha, pool=args.pool,
                        ranks_version=args.ranks_version)  # fmt: skip
    print(f"report: {path}")
    return 0


def _table(df) -> str:
    import pandas as pd

    with pd.option_context("display.max_rows", 1000, "display.width", 160):
        return df.to_string(index=False, float_format=lambda v: f"{v:.3g}")


def _check(args: argparse.Namespace) -> int:
    from sbc.checks import check

    outcome = check(
        args.results,
        alpha=args.alpha,
        max_divergent_share=args.max_divergent_share,
        max_failed_share=args.max_failed_share,
        pool=args.pool,
        ranks_version=args.ranks_version,
    )
    cols = ["quantity", "n", "log_gamma_ratio", "p_value", "p_holm", "coverage90", "shape"]
    if outcome.verdicts["label"].astype(bool).any():  # a formula model's names for them
        cols.insert(1, "label")
    print(f"draws from {outcome.method}")
    print(_table(outcome.verdicts[cols]))
    print()
    if outcome.diagnostics is not None and len(outcome.diagnostics):
        d = outcome.diagnostics
        print("fits flagged by the backend's diagnostics (kept in the verdicts; rules: "
              "docs/statistics.md, docs/backends.md):")  # fmt: skip
        print(_table(d[d["known"] > 0][["diagnostic", "rule", "flagged", "known", "share"]]))
        print()
    print(outcome.headline)
    if outcome.passed:
        return 0
    extra = outcome.reasons[len(outcome.calibration.failing()) :]
    for reason in extra:  # limits on diagnostics, beyond the failing quantities
        print(f"NOT calibrated: {reason}")
    return 1


def _compare(args: argparse.Namespace) -> int:
    from sbc.checks import compare

    result = compare(args.baseline, args.candidate, alpha=args.alpha, pool=args.pool,
                     progress=not args.quiet, ranks_version=args.ranks_version)  # fmt: skip
    print(
        f"paired on {result.n_paired} simulated datasets: baseline {result.baseline}, "
        f"candidate {result.candidate}"
    )
    table = result.table
    if "label" in table and not table["label"].astype(bool).any():  # formula models' names
        table = table.drop(columns="label")
    print(_table(table))
    print()
    if result.worse:
        print(f"candidate is worse calibrated on: {', '.join(result.worse)}")
        return 1
    print("candidate is calibrated at least as well as the baseline on every quantity")
    return 0


_COMMANDS = {
    "setup": _setup,
    "recover": _recover,
    "run": _run,
    "precheck": _precheck,
    "plan": _plan,
    "rerank": _rerank,
    "report": _report,
    "check": _check,
    "compare": _compare,
}

if __name__ == "__main__":
    sys.exit(main())
