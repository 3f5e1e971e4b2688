"""Loading checkpoints safely: on the CPU, and without running code from the file.

``torch.load(weights_only=True)`` refuses pickled Python objects other than tensors and
plain containers, so a checkpoint from elsewhere cannot execute code while it is being
inspected or verified; `trust` lifts that for files the user vouches for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:200] + ("..." if len(text) > 200 else "")


def load_checkpoint(path: Path, trust: bool = False) -> dict[str, Any]:
    """Loads a checkpoint on the CPU, without running its code unless `trust`.

    Raises:
        OSError: Missing or unreadable file.
        ValueError: Truncated, not a checkpoint, or needs `trust` (the message says why).
    """
    import pickle

    import torch

    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.ckpt"))[:3]
        raise OSError(f"{path} is a directory; expected a checkpoint file"
                      + (f" (it holds {', '.join(inside)})" if inside else " (.ckpt)"))
    if not path.is_file():
        raise OSError(f"{path}: no such file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as err:
        if "Unsupported global" in str(err) or "weights_only" in str(err):
            raise ValueError(f"{path} holds Python objects that loading would execute; if you "
                             "trust the file, pass --trust") from None
        raise ValueError(f"{path} is not a readable checkpoint ({_one_line(err)})") from None
    except OSError:
        raise
    except Exception as err:  # a damaged file can fail anywhere in torch's unpickler
        raise ValueError(f"{path} is truncated, damaged or not a checkpoint "
                         f"({type(err).__name__}: {_one_line(err)})") from None
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} is not a Lightning checkpoint (a {type(checkpoint).__name__})")
    return checkpoint
