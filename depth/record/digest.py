"""Digests that bind a record to its weights and to itself.

`weights_sha256` digests a model's state_dict (names, dtypes, shapes and bytes, in name
order); `record_sha256` digests a record's canonical JSON. Both are checked by
`depth.record.verify`, and a lineage's records by `depth.record.lineage`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

CHECKPOINT_KEY = "depth"  # where a Lightning checkpoint carries its record


def weights_sha256(state_dict: Mapping[str, Any]) -> str:
    """A deterministic digest of a state_dict: names, dtypes, shapes and raw bytes.

    Tensors are hashed in name order, one at a time (streaming: no concatenated copy).
    Non-tensor entries (rare: extra state) are hashed through their ``repr``.
    """
    import torch

    digest = hashlib.sha256()
    for name in sorted(state_dict):
        value = state_dict[name]
        digest.update(name.encode())
        if isinstance(value, torch.Tensor):
            tensor = value.detach()
            digest.update(f"|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
            flat = tensor.reshape(-1).contiguous().cpu()
            if flat.numel():
                digest.update(flat.view(torch.uint8).numpy().data)
        else:
            digest.update(f"|{type(value).__name__}|{value!r}|".encode())
    return digest.hexdigest()


def record_sha256(record: Mapping[str, Any]) -> str:
    """Digest of a record's canonical JSON (sorted keys), its own digest and its signature
    (which signs this digest) left out."""
    body = {k: v for k, v in record.items() if k not in ("record_sha256", "signature")}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
