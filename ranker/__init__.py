"""relion_external_rank: ranking and selection of RELION 2D class averages, as a RELION External job.

Two houses:

* :mod:`ranker.runtime` -- the External job a user runs (options, protocol, reading the Class2D job,
  particles, features, scoring, selection, outputs, report). Entry: the ``relion_external_rank``
  command (:func:`ranker.runtime.job.main`).
* :mod:`ranker.develop` -- model development (simulation, datasets, training, evaluation, job-context
  fitting, metrics). Entry: ``python -m ranker.develop``. The runtime never imports it.
"""

__version__ = "0.4.0"
