"""Lineage: a model fine-tuned or distilled from a parent inherits the parent's depth.

The child's record carries the parent's whole sealed record under ``parent`` (and so the
grandparent's, and so on). The child's own ``record_sha256`` covers it, so no ancestor
can be edited without breaking the child's digest. The model's *depth* is its own
training joules plus every ancestor's.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from depth.record.digest import CHECKPOINT_KEY, record_sha256
from depth.record.schema import MAX_GENERATIONS, check_generations, check_record

ATTRIBUTE = "depth_parent"  # set on a module by `load_parent_weights`


def chain(record: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """The record, then its parent, grandparent, ... (oldest last)."""
    node: Mapping[str, Any] | None = record
    while node:
        yield node
        node = node.get("parent")


def depth_joules(record: Mapping[str, Any]) -> float:
    """Own training joules plus every ancestor's."""
    return math.fsum(float(r.get("train_joules", 0.0)) for r in chain(record))


def check_parent(record: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Validates a parent record before it is embedded.

    Raises:
        ValueError: The record (or one of its ancestors) fails its own digest, or could
            not be read (`depth.record.schema`), or its child would be too deep to.
    """
    try:
        check_generations(record, MAX_GENERATIONS - 1)  # its child adds one more
        check_record(record)
    except ValueError as err:
        raise ValueError(f"parent {source}: {err}") from None
    for node in chain(record):
        expected = node.get("record_sha256")
        if not expected:
            raise ValueError(f"parent {source}: a record in its lineage has no record_sha256")
        try:
            actual = record_sha256(node)
        except (TypeError, ValueError) as err:
            raise ValueError(f"parent {source}: a record in its lineage holds values that "
                             f"are not JSON ({err})") from None
        if actual != expected:
            raise ValueError(f"parent {source}: a record in its lineage was edited after it "
                             "was written")
    return dict(record)


def load_parent_weights(module: Any, path: str | Path, strict: bool = True) -> dict[str, Any]:
    """Loads a parent checkpoint's weights into `module` and remembers its record.

    A `DepthCallback` training `module` then records the parent (``depth_parent`` on the
    module) without being told. Loads with ``weights_only=True``.

    Returns:
        The parent's record.

    Raises:
        ValueError: No depth record in the checkpoint, or one that fails its digest.
    """
    from depth.record.checkpoint_io import load_checkpoint

    checkpoint = load_checkpoint(Path(path))
    record = checkpoint.get(CHECKPOINT_KEY)
    if not isinstance(record, dict):
        raise ValueError(f"{path} carries no depth record to inherit")
    try:
        module.load_state_dict(checkpoint["state_dict"], strict=strict)
    except (KeyError, RuntimeError) as err:  # torch lists every mismatch, many lines
        text = " ".join(str(err).split())
        raise ValueError(f"{path}: its weights do not fit this model ({text[:200]})") from None
    setattr(module, ATTRIBUTE, check_parent(record, str(path)))
    return record
