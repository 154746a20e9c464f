"""Model development: simulated training data, datasets, training, evaluation, job-context fitting.

Nothing here is needed to run the External job; :mod:`ranker.runtime` never imports this package
(a test checks it). Commands: ``python -m ranker.develop`` lists them; each lives in
:mod:`ranker.develop.commands` as one module with its arguments and a usage docstring.

Modules: ``simulate/`` (labelled RELION projects from simulated particles), ``truth`` (the per-class
truth table ``class_truth.csv`` and the particle kinds), ``dataset`` (labelled classes for training:
truth jobs, users' selections, RELION's training STAR), ``metrics`` (ROC-AUC, agreement with the
class-level oracle, regret), ``job_context`` (fitting the runtime's job-context stage).
"""
