"""HOOK INTO TRAINING: `DepthCallback` and the Lightning-specific parts around it.

In: Lightning's hooks (optimizer steps, checkpoints, resume, the end of a fit), the ranks
of a distributed run, the trainer's loggers. Out: observations to the accounting stage,
points to each sink (loggers, MLflow writers, the spool), a sealed record into every
checkpoint, and the crash sidecar beside them.
"""
