"""thin_ranks = "auto" end to end (issue 18): a NUTS study whose fits are too short for their
target, continued in the workers, thinned to exactly L, recorded, reported, resumed and
re-ranked."""

from __future__ import annotations

import pytest
from conftest import ROOT

import sbc
from sbc.errors import SBCError
from sbc.ranks import rank_rows
from sbc.reports import write_report
from sbc.seeds import simulation_seeds
from sbc.store import Store

STUDY = """
name = "auto"
stan = "{stan}"
sims = 8
seed = 3
thin_ranks = "auto"
keep_draws = true

[thin_ranks_auto]
L = 20
min_ess_per_draw = 2.0
max_draws = {max_draws}

[simulator]
function = "sbc.simulators.normal:simulate"
args = {{ K = 2, N = 5 }}

[backend]
chains = 2
iter_warmup = 100
iter_sampling = 10

[quantities]
derived = {{ total = "derived.py:total" }}
"""


def write(tmp_path, max_draws: int = 400):
    (tmp_path / "derived.py").write_text(
        "def total(params, data):\n    return params['mu'].sum(axis=1)\n"
    )
    path = tmp_path / "auto.toml"
    stan = ROOT / "stan" / "normal_known_sigma.stan"
    path.write_text(STUDY.format(stan=stan, max_draws=max_draws))
    return path


@pytest.fixture(scope="module")
def auto(cmdstan, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("auto")
    path = write(tmp)
    results = sbc.run(path, out=tmp / "results", workers=2, progress=False)
    return path, results


@pytest.mark.stan
def test_every_fit_is_continued_to_its_target_and_keeps_exactly_L(auto):
    _, results = auto
    sims = results.simulations
    assert (sims["status"] == "ok").all() and len(sims) == 8
    assert set(results.ranks["L"]) == {20}  # 10 draws from each of the 2 chains, every fit
    # 2 x 10 draws never have an ESS of 2 x 20: every fit was continued, no new warm-up
    assert (sims["extensions"] >= 1).all()
    draws = sims["n_draws"] / 2
    assert (draws > 10).all() and (draws <= 400).all()
    ess = sims["ess_ranked_min"] / 20
    assert (ess[draws < 400] >= 2.0).all()  # at its target unless it reached max_draws
    # the ranked quantities include every parameter (mu) and the derived total
    assert (sims["ess_ranked_min"] <= sims[["ess_bulk_min", "ess_tail_min"]].min(axis=1)).all()
    assert (sims["thin_every"] == (draws // 10)).all()  # the largest stride that keeps 10


@pytest.mark.stan
def test_the_kept_draws_are_the_ranked_ones(auto):
    _, results = auto
    seed = results.manifest["study"]["seed"]
    for sim in range(8):
        kept = results.draws(sim)
        assert kept["mu"].shape == (2, 10, 2) and kept["total"].shape == (2, 10)
        truth = results.ranks[results.ranks["sim"] == sim].set_index("quantity")
        _, _, rank_rng = simulation_seeds(seed, sim)
        t = {"mu": truth.loc[["mu[1]", "mu[2]"], "truth"].to_numpy(),
             "total": truth.at["total", "truth"]}  # fmt: skip
        rows = rank_rows(t, kept, thin_every=1, rng=rank_rng)
        assert {r["quantity"]: r["rank"] for r in rows} == truth["rank"].to_dict()


@pytest.mark.stan
def test_it_resumes_and_refuses_other_auto_settings(auto, tmp_path):
    path, results = auto
    again = sbc.run(path, out=results.folder, workers=1, progress=False)  # nothing to do
    assert len(again.simulations) == 8
    path.write_text(path.read_text().replace("max_draws = 400", "max_draws = 300"))
    try:
        with pytest.raises(SBCError, match="settings that change the fits"):
            sbc.run(path, out=results.folder, workers=1, progress=False)
    finally:
        path.write_text(path.read_text().replace("max_draws = 300", "max_draws = 400"))


@pytest.mark.stan
def test_rerank_keeps_auto_thinning_and_refuses_another_stride(auto):
    _, results = auto
    with pytest.raises(SBCError, match="thinned per fit"):
        results.rerank(thin_ranks=2, progress=False)
    version = results.rerank(derived={"first": lambda p, d: p["mu"][:, 0]}, progress=False)
    new = sbc.load(results.folder, ranks_version=version.ranks_version)
    assert set(new.ranks["L"]) == {20} and "first" in set(new.ranks["quantity"])
    first = new.ranks[new.ranks["quantity"] == "first"].set_index("sim")["rank"]
    mu1 = new.ranks[new.ranks["quantity"] == "mu[1]"].set_index("sim")["rank"]
    assert (first == mu1).all()  # the same draws and truths, so the same ranks


@pytest.mark.stan
def test_the_report_shows_what_auto_thinning_did(auto):
    _, results = auto
    page = write_report(sbc.load(results.folder, ranks_version=1)).read_text()
    assert "<h3>Auto thinning</h3>" in page
    sims = results.simulations
    assert f"{(sims['extensions'] > 0).sum()} of 8 (100" in page  # fits continued
    assert f"{int(sims['extensions'].sum())} in all" in page
    assert "thinned per fit (thin_ranks = &quot;auto&quot;)" in page  # the Ranks line
    assert "ess_ranked_min" in page  # its rule is in the diagnostics table
    with Store.open_for_reading(results.folder) as store:  # columns declared in the manifest
        declared = {d["name"] for d in store.manifest()["diagnostics"]}
    assert {"ess_ranked_min", "thin_every", "extensions", "n_leapfrog"} <= declared
