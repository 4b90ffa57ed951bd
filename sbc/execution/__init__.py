"""Running a study: check it (`prepare`), run one task per simulation on a pool of worker
processes (`task`, `pools`), and keep its results folder (`run`: lock, resume identity,
manifest, the store).

Data flows one way: study -> simulate -> backend fit -> ranks -> store. Nothing here
computes a verdict; `--stop-early` asks the analysis side's sequential test.
"""
