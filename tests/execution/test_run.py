"""`sbc run` on the exact backend: resumption, workers, failures, kept draws, stop-early."""

from __future__ import annotations

from typing import ClassVar

import pandas as pd
import pytest
from conftest import exact_study

import sbc
from sbc.errors import SBCError


def _ranks(folder) -> pd.DataFrame:
    r = sbc.load(folder).ranks
    return r.sort_values(["sim", "quantity"]).reset_index(drop=True)


def test_run_stores_every_simulation(tmp_path):
    folder = sbc.run(exact_study(tmp_path, sims=40), progress=False)
    res = sbc.load(folder)
    assert len(res.simulations) == 40 and (res.simulations["status"] == "ok").all()
    assert sorted(res.ranks["quantity"].unique()) == ["mu[1]", "mu[2]"]
    assert len(res.ranks) == 80
    assert (res.ranks["L"] == 50).all()  # 2 chains x 50 draws, thinned by 2
    assert res.ranks["rank"].between(0, 50).all()
    assert res.manifest["sims"] == 40 and "finished" in res.manifest


def test_same_ranks_with_one_or_two_workers_and_after_resume(tmp_path):
    one = sbc.run(exact_study(tmp_path, "w1", sims=30), workers=1, progress=False)
    two = sbc.run(exact_study(tmp_path, "w2", sims=30), workers=2, progress=False)
    path = exact_study(tmp_path, "resumed", sims=30)
    sbc.run(path, sims=12, progress=False)  # a partial study, then the rest
    resumed = sbc.run(path, progress=False)
    cols = ["sim", "quantity", "truth", "rank", "mean", "sd"]
    pd.testing.assert_frame_equal(_ranks(one)[cols], _ranks(two)[cols])
    pd.testing.assert_frame_equal(_ranks(one)[cols], _ranks(resumed)[cols])


def test_changed_study_is_refused_unless_new(tmp_path):
    path = exact_study(tmp_path, "changed", sims=5)
    sbc.run(path, progress=False)
    original = path.read_text()
    path.write_text(original.replace("draws = 50", "draws = 60"))  # other fits
    with pytest.raises(SBCError, match=r"settings that change the fits .* changed since"):
        sbc.run(path, progress=False)
    path.write_text(original.replace("thin = 2", "thin = 4"))  # other ranks, no draws kept
    with pytest.raises(SBCError, match=r"thinning changed since .* kept no draws to re-rank"):
        sbc.run(path, progress=False)
    fresh = sbc.run(path, new=True, progress=False)
    assert fresh.folder.name == "changed-2" and len(sbc.load(fresh).simulations) == 5


def test_failing_simulations_are_recorded_and_retried(tmp_path):
    sim_file = tmp_path / "flaky.py"
    sim_file.write_text(
        "from sbc.simulators.normal import simulate as base\n"
        "FAIL = True\n"
        "def simulate(rng, **kw):\n"
        "    truth, data = base(rng, **kw)\n"
        "    if FAIL and truth['mu'][0] > 1.0:\n"
        "        raise ValueError('mu too large for this test')\n"
        "    return truth, data\n"
    )
    path = exact_study(tmp_path, "flaky", sims=40)
    path.write_text(path.read_text().replace("sbc.simulators.normal:simulate", "flaky.py:simulate"))
    folder = sbc.run(path, progress=False)
    sims = sbc.load(folder).simulations
    failed = sims[sims["status"] == "failed"]
    assert 0 < len(failed) < 40
    assert failed["error"].str.contains("simulator: ValueError: mu too large").all()
    assert set(sbc.load(folder).ranks["sim"]) == set(sims.loc[sims.status == "ok", "sim"])


def test_keep_draws_and_derived_quantities(tmp_path):
    mod = tmp_path / "derived.py"
    mod.write_text(
        "import numpy as np\ndef mean_mu(params, data):\n    return params['mu'].mean(axis=-1)\n"
    )
    path = exact_study(tmp_path, "kept", sims=6)
    text = path.read_text().replace('name = "kept"', 'name = "kept"\nkeep_draws = true')
    path.write_text(text + f'[quantities]\nderived = {{ mean_mu = "{mod}:mean_mu" }}\n')
    res = sbc.load(sbc.run(path, progress=False))
    assert set(res.ranks["quantity"]) == {"mu[1]", "mu[2]", "mean_mu"}
    kept = res.draws(0)
    assert kept["mu"].shape == (2, 25, 2) and kept["mean_mu"].shape == (2, 25)
    # the derived quantity's rank is reproducible from the kept draws
    row = res.ranks[(res.ranks.sim == 0) & (res.ranks.quantity == "mean_mu")].iloc[0]
    flat = kept["mean_mu"].reshape(-1)
    assert (flat < row["truth"]).sum() <= row["rank"] <= (flat <= row["truth"]).sum()


def test_quantities_not_in_truth_are_refused(tmp_path):
    path = exact_study(tmp_path, "bad_q", sims=2)
    path.write_text(path.read_text() + '[quantities]\ninclude = ["nu"]\n')
    with pytest.raises(SBCError, match="'nu' is not among the ranked quantities"):
        sbc.run(path, progress=False)
    assert not (tmp_path / "results" / "bad_q").exists()


def test_stop_early_stops_a_broken_study_and_stays_resumable(tmp_path):
    path = exact_study(tmp_path, "narrow", sims=150, backend={"sd_scale": 0.6})
    one = sbc.load(sbc.run(path, stop_early=True, workers=1, progress=False))
    stopped = one.manifest["stopped_early"]
    assert stopped and stopped["quantity"].startswith("mu[")
    assert stopped["n_sims"] < 75 <= 150 - len(one.simulations)  # at most half of the study
    # the decision is deterministic: same stop with two workers, and a rerun adds nothing
    path2 = exact_study(tmp_path, "narrow2", sims=150, backend={"sd_scale": 0.6})
    two = sbc.load(sbc.run(path2, stop_early=True, workers=2, progress=False))
    assert two.manifest["stopped_early"]["quantity"] == stopped["quantity"]
    assert two.manifest["stopped_early"]["n_sims"] == stopped["n_sims"]
    again = sbc.load(sbc.run(path, stop_early=True, progress=False))
    assert len(again.simulations) == len(one.simulations)
    full = sbc.load(sbc.run(path, progress=False))  # without the flag: the whole study
    assert len(full.simulations) == 150


def test_stop_early_runs_a_calibrated_study_to_the_end(tmp_path):
    res = sbc.load(sbc.run(exact_study(tmp_path, "fine", sims=60), stop_early=True,
                           progress=False))  # fmt: skip
    assert len(res.simulations) == 60 and res.manifest["stopped_early"] is None


def test_cheap_simulations_go_in_batches_with_the_same_results(tmp_path, monkeypatch):
    """The exact backend's fits take well under BATCH_SECONDS: `drain` sends many simulations
    per task (far fewer tasks than simulations, each simulation once), and a study gives the
    ranks it gives with one simulation per task."""
    from concurrent.futures import ThreadPoolExecutor

    import sbc.execution.pools as pools
    from sbc.execution.prepare import prepare
    from sbc.execution.run import _task_factory
    from sbc.study import load_study

    batched = sbc.run(exact_study(tmp_path, "batched", sims=300), workers=2, progress=False)
    monkeypatch.setattr(pools, "MAX_BATCH", 1)
    single = sbc.run(exact_study(tmp_path, "single", sims=300), workers=2, progress=False)
    pd.testing.assert_frame_equal(_ranks(batched), _ranks(single))
    monkeypatch.undo()

    class Threads:  # a pool of threads in this process, to see the batches
        workers = 2
        sizes: ClassVar[list[int]] = []

        def executor(self):
            pool = ThreadPoolExecutor(2)
            submit = pool.submit

            def counted(fn, batch):
                self.sizes.append(len(batch.sims))
                return submit(fn, batch)

            pool.submit = counted
            return pool

        def shutdown(self, executor, kill):
            executor.shutdown(wait=True)

    p = prepare(load_study(exact_study(tmp_path, "threads", sims=1000)), progress=False)
    task_of = _task_factory(p, str(tmp_path), keep_every=1)
    groups = list(pools.drain(Threads(), task_of, list(range(1000)), in_flight=4))
    sims = [r.sim for group in groups for r in group]
    assert sorted(sims) == list(range(1000))
    assert Threads.sizes[:4] == [1, 1, 1, 1]  # until a simulation has been timed
    assert len(Threads.sizes) < 200 and max(Threads.sizes) <= pools.MAX_BATCH
