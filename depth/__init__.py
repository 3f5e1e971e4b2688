"""depth: the thermodynamic depth of trained models.

The joules irreversibly spent to produce a model's weights, measured while it trains, set
against what the model costs to serve. Heavy modules load on first use, so
``import depth`` stays cheap on machines that only meter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["DepthCallback", "Provenance", "inference_table", "log_inference",
           "measure_inference", "read_provenance", "__version__"]

if TYPE_CHECKING:
    from depth.lightning.callback import DepthCallback
    from depth.record.provenance import Provenance
    from depth.serving.api import measure_inference
    from depth.serving.attach import log_inference
    from depth.serving.table import format_eval as inference_table
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
    if name == "measure_inference":  # tokens/Wh of any model or generate callable
        from depth.serving.api import measure_inference

        return measure_inference
    if name == "log_inference":  # a result attached to the trained model it belongs to
        from depth.serving.attach import log_inference

        return log_inference
    if name == "inference_table":  # the `depth eval` table of a result
        from depth.serving.table import format_eval

        return format_eval
    raise AttributeError(f"module 'depth' has no attribute {name!r}")
