"""Named studies that reproduce a claim: ``python -m propbench +experiment=NAME``.

This package is on Hydra's search path (``pkg://propbench.experiments``); each
``experiment/NAME.yaml`` sets up a sweep (``hydra.mode: MULTIRUN`` and
``hydra.sweeper.params``), states the claim, its source and the expected outcome, and lists
``experiment.expect``: the verdicts the sweep's summary checks.
"""
