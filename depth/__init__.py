"""depth: the thermodynamic depth of trained models.

The joules irreversibly spent to produce a model's weights, measured while it trains, set
against what the model costs to serve. Heavy modules load on first use, so
``import depth`` stays cheap on machines that only meter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["DepthCallback", "Provenance", "read_provenance", "__version__"]

if TYPE_CHECKING:
    from depth.lightning.callback import DepthCallback
    from depth.record.provenance import Provenance
    from depth.tracking.sources import read_provenance


def __getattr__(name: str) -> Any:
    if name == "DepthCallback":
        from depth.lightning.callback import DepthCallback

        return DepthCallback
    if name == "Provenance":
        from depth.record.provenance import Provenance

        return Provenance
    if name == "read_provenance":  # checkpoint files and MLflow sources alike
        from depth.tracking.sources import read_provenance

        return read_provenance
    raise AttributeError(f"module 'depth' has no attribute {name!r}")
