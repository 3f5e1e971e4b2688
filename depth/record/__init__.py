"""SEAL: the energy provenance record a checkpoint carries, from files only.

In: a ledger state and the facts of a run. Out: `Provenance` (schema, digest, signature,
lineage, carbon, uncertainty), its checks (`verify`), the model card, and safe checkpoint
loading. Reading a record from MLflow is the tracking stage's job; nothing here imports
Lightning or MLflow.
"""
