"""The experiment pipeline: config -> units -> checkpoints -> Field -> sampler -> metrics -> MLflow.

``assemble`` builds a method's (guided) Field, from trained checkpoints or on the meta device;
``training`` trains or reuses units under a per-unit lock; ``cost`` counts GFLOPs of the assembled
sampler; ``experiment`` runs the whole DAG of one config; ``describe``, ``split`` and ``smoke`` are
the pipelines behind ``harness describe``, ``harness split`` and ``harness smoke``.  The pipeline
finds methods and guidances through the registry and never names one.
"""
