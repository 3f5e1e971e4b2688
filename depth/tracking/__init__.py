"""PUBLISH to MLflow: metric points, records as LoggedModels, and what a server missed.

In: points and sealed records from the Lightning stage. Out: rows in an MLflow store
(written off the training thread, or by a separate writer process), LoggedModels and
registry versions, a spool for `depth sync` when the server is down; and reads of records
from MLflow sources (``runs:/``, ``models:/``, ``m-``). Never imports Lightning.
"""
