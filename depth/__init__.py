"""depth: the thermodynamic depth of trained models.

The joules irreversibly spent to produce a model's weights, measured while it trains, set
against what the model costs to serve. Heavy modules load on first use, so
``import depth`` stays cheap on machines that only meter.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
