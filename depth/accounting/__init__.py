"""ACCOUNT: joules to optimizer steps, framework-free.

In: readings from any `depth.meters.EnergyMeter` (monotonic time, cumulative joules per
device). Out: points (one per logged optimizer step) whose joules add up exactly to the
total (closure), and a ledger state of segments and waste that a record is sealed from.
Imports nothing from Lightning, MLflow or the record stage.
"""
