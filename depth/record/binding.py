"""The state a resume trusts, bound to the record sealed beside it.

A checkpoint carries two copies of the energy history: the callback's resumable state
(``checkpoint["callbacks"]["DepthCallback"]``), which a resume continues, and the sealed
record (``checkpoint["depth"]``), which the digest and the signature cover. A resume that
trusted the state alone would launder an edited history into a new, validly signed record.
So the state must equal the record in every field the record was made from, and the record
must still match its digest (and, with a key, its signature); anything else is refused.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from depth.record.digest import record_sha256
from depth.record.signing import KEY_ENV, check, signing_key

ALLOW_UNSIGNED_ENV = "DEPTH_ALLOW_UNSIGNED_RESUME"
UNSIGNED_FLAG = "not covered by a signature"  # how verify finds such a history's flag
STATE_KEY = "DepthCallback"  # the callback's state key in checkpoint["callbacks"]

# (field of the callback state, field of the record made from it)
BOUND_FIELDS = (("segments", "segments"), ("devices", "devices"),
                ("optimizer_steps", "optimizer_steps"), ("tokens", "train_tokens"),
                ("train_joules", "train_joules"), ("wasted_joules", "wasted_joules"),
                ("saved_at", "created"), ("parent", "parent"))
# and every flag of the state is in the record (which may add its own, e.g. "unmeasured")


class ResumeRefused(ValueError):
    """A checkpoint's resumable state does not match its sealed record (one line)."""


def state_of(checkpoint: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The callback's resumable state in a Lightning checkpoint, if it has one."""
    callbacks = checkpoint.get("callbacks")
    state = callbacks.get(STATE_KEY) if isinstance(callbacks, Mapping) else None
    return state if isinstance(state, Mapping) else None


def binding_problem(state: Mapping[str, Any], record: Any, key: bytes | None
                    ) -> tuple[str | None, list[str]]:
    """Why `state` cannot be resumed from given the checkpoint's `record` (``None`` when it
    can), and the flags a resumed history carries.

    Args:
        state: The callback state in the checkpoint.
        record: The checkpoint's sealed record (``None`` when it has none).
        key: The signing key, when one is set.
    """
    if record is None and not state.get("segments"):
        return None, []  # nothing was measured: nothing to trust
    if not isinstance(record, Mapping):
        return "it carries depth's state but no sealed record to check it against", []
    if record.get("record_sha256") != record_sha256(record):
        return "its record was edited after it was sealed (record_sha256 does not match)", []
    signed, why = check(record, key)
    unsigned = not isinstance(record.get("signature"), Mapping)
    if signed is False and not unsigned:
        return f"its record's signature does not hold ({why})", []
    changed = [name for name, field in BOUND_FIELDS if state.get(name) != record.get(field)]
    flags = record.get("flags") if isinstance(record.get("flags"), list) else []
    if not set(map(str, state.get("flags") or [])) <= set(map(str, flags)):
        changed.append("flags")
    if changed:
        return (f"its resumable state differs from its sealed record in {', '.join(changed)}"
                " (the state was edited)"), []
    if key is not None and unsigned:
        if os.environ.get(ALLOW_UNSIGNED_ENV) != "1":  # a stripped signature looks the same
            return (f"its record carries no signature while {KEY_ENV} is set (it was saved "
                    f"without the key, or its signature was stripped); to continue it anyway "
                    f"set {ALLOW_UNSIGNED_ENV}=1, and the new record will say which steps "
                    "no signature covers"), []
        return None, [f"{UNSIGNED_FLAG} up to step {record.get('optimizer_steps')}: "
                      "resumed from a record that carries no signature"]
    return None, []


def check_resume(state: Mapping[str, Any], record: Any) -> list[str]:
    """`binding_problem` with the key from the environment: the flags a resume from this
    state carries on (the checked record's, and the resume's own), or `ResumeRefused`
    (one line) when it must not resume."""
    problem, flags = binding_problem(state, record, signing_key())
    if problem:
        raise ResumeRefused(f"depth: refusing to resume from this checkpoint: {problem}")
    earlier = record.get("flags") if isinstance(record, Mapping) else None
    return [*(str(f) for f in earlier or []), *flags]
