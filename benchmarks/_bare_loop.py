"""The baseline: a plain loop over cmdstanpy, no sbc, on datasets prepared beforehand.

    python benchmarks/_bare_loop.py PLAN.json

PLAN.json (written by overhead.py): {"exe": ..., "cmdstan": ..., "settings": {...},
"fits": [{"data": "path/to/data.json", "seed": 123}, ...]}. For each dataset, in order:
model.sample(...) with the study's chains, parallel chains, iterations, adapt_delta and
max_treedepth, then fit.draws() (reading the output), then its output folder is removed.
This is the least a script must do to get the same posterior draws; the datasets and seeds
are the study's own (sbc.seeds.simulation_seeds), so the CmdStan work is identical.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path


def main(plan_file: str) -> int:
    import cmdstanpy
    from cmdstanpy.utils import get_logger

    get_logger().disabled = True  # as the runner does: no per-chain log lines
    plan = json.loads(Path(plan_file).read_text())
    cmdstanpy.set_cmdstan_path(plan["cmdstan"])
    model = cmdstanpy.CmdStanModel(exe_file=plan["exe"])
    s = plan["settings"]
    for job in plan["fits"]:
        out = tempfile.mkdtemp(prefix="bare-", dir=plan.get("tmp_root"))
        fit = model.sample(
            data=job["data"],
            chains=s["chains"],
            parallel_chains=s["parallel_chains"],
            seed=job["seed"],
            iter_warmup=s["warmup"],
            iter_sampling=s["draws"],
            adapt_delta=s["adapt_delta"],
            max_treedepth=s["max_treedepth"],
            output_dir=out,
            show_progress=False,
            show_console=False,
        )
        fit.draws()
        own = [(t.get("warmup", 0.0), t.get("sampling", 0.0)) for t in fit.time]
        print(
            json.dumps(
                {
                    "seed": job["seed"],
                    "warmup_seconds": sum(w for w, _ in own),
                    "sampling_seconds": sum(s for _, s in own),
                }
            ),
            flush=True,
        )
        shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
