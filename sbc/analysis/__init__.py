"""Pure statistics on stored ranks: verdicts, pooled tests, coverage, shapes, diagnostics,
the sequential test and the power planner. It never imports `sbc.execution` nor
`sbc.backends` (a `lint-imports` contract): it reads results, not running studies.
"""
