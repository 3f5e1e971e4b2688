"""Does a checkpoint still match its energy record? Tamper evidence, and with a key, proof.

Two digests are checked: ``weights_sha256`` (the saved state_dict, recomputed here) and
``record_sha256`` (the record itself); and every joule figure must be a finite number
>= 0 (a record sealed with NaN joules is consistent, but no measurement). Checkpoints are
loaded with ``torch.load(weights_only=True)``: a checkpoint being verified is not yet
trusted, so no code in it runs unless the caller says so (`trust`). With
``DEPTH_SIGNING_KEY`` set, the record's signature is checked too (`depth.record.signing`),
and the callback state a resume would continue must equal the record
(`depth.record.binding`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from depth.record.checkpoint_io import load_checkpoint
from depth.record.digest import CHECKPOINT_KEY, record_sha256, weights_sha256
from depth.record.schema import check_generations, check_record

OK, MISMATCH, UNREADABLE = 0, 1, 2
# flags that say part of a history is not covered: verify's verdict repeats them
COVERAGE_NOTES = ("not covered by a signature", "no energy history")


@dataclass(frozen=True)
class Verdict:
    """The exit status (0 match, 1 mismatch, 2 unreadable: no file, or a record this
    depth cannot read) and a one-line reason."""

    status: int
    reason: str


def _joule_fields(record: Mapping[str, Any], at: str = "") -> Iterator[tuple[str, Any]]:
    """(field path, value) of every joule figure of a record, its parents' included."""
    for key in ("train_joules", "wasted_joules", "facility_joules", "depth_joules"):
        if record.get(key) is not None:
            yield at + key, record[key]
    for device, joules in (record.get("devices") or {}).items():
        yield f"{at}devices.{device}", joules
    for i, segment in enumerate(record.get("segments") or []):
        if isinstance(segment, Mapping):
            yield f"{at}segments[{i}].joules", segment.get("joules")
            for device, joules in (segment.get("devices") or {}).items():
                yield f"{at}segments[{i}].devices.{device}", joules
    if isinstance(record.get("parent"), Mapping):
        yield from _joule_fields(record["parent"], at + "parent.")


def bad_joules(record: Mapping[str, Any], numbers_only: bool = False) -> str | None:
    """The first joule figure of a record that is not a finite number >= 0, as
    ``field = value``; ``None`` when every one is. With `numbers_only`, only numbers that
    are not energy (NaN, inf, negative) count, and a record too malformed to walk has none."""
    try:
        for field, value in _joule_fields(record):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not (ok and math.isfinite(value) and value >= 0) and (ok or not numbers_only):
                return f"{field} = {value!r}"
    except (AttributeError, TypeError):  # not a mapping where one belongs
        if not numbers_only:
            raise
    return None


def verify_checkpoint(path: str | Path, trust: bool = False) -> Verdict:
    """Checks the weights and the record of a checkpoint against their digests."""
    path = Path(path)
    try:
        checkpoint = load_checkpoint(path, trust)
    except (OSError, ValueError) as err:
        return Verdict(UNREADABLE, str(err))
    record = checkpoint.get(CHECKPOINT_KEY)
    if not isinstance(record, dict):
        return Verdict(MISMATCH, f"{path} carries no depth record (checkpoint['{CHECKPOINT_KEY}'])")
    try:
        check_generations(record)  # before digesting it, which recurses per generation
    except ValueError as err:
        return Verdict(UNREADABLE, f"{path}: {err}")
    expected_record = record.get("record_sha256")
    if not expected_record:
        return Verdict(MISMATCH, f"{path}: the record has no record_sha256 to check it against")
    try:
        actual_record = record_sha256(record)
    except (TypeError, ValueError) as err:
        return Verdict(UNREADABLE, f"{path}: the record holds values that are not JSON "
                                   f"({' '.join(str(err).split())[:200]})")
    if actual_record != expected_record:
        return Verdict(MISMATCH, f"{path}: the record was edited after it was written "
                                 "(record_sha256 does not match its content)")
    try:  # sealed, but is it a record this depth can read?
        check_record(record)
    except ValueError as err:
        bad = bad_joules(record, numbers_only=True)
        if bad is None:  # its shape is wrong: unreadable (a NaN or a negative is a mismatch)
            return Verdict(UNREADABLE, f"{path}: {err}")
    bad = bad_joules(record)
    if bad is not None:
        return Verdict(MISMATCH, f"{path}: the record's {bad} is not energy (joules must be "
                                 "finite and >= 0): a meter fault was recorded as a measurement")
    state_dict = checkpoint.get("state_dict")
    if not isinstance(state_dict, dict):
        return Verdict(MISMATCH, f"{path} has no state_dict to check the weights against")
    actual = weights_sha256(state_dict)
    if actual != record.get("weights_sha256"):
        recorded = str(record.get("weights_sha256"))
        return Verdict(MISMATCH, f"{path}: the weights changed since the record was written "
                                 f"(sha256 {actual[:12]}... != {recorded[:12]}...)")
    from depth.record.signing import check, signing_key

    signed, why = check(record, signing_key())
    if signed is False:
        return Verdict(MISMATCH, f"{path}: {why}")
    from depth.record.binding import binding_problem, state_of

    state = state_of(checkpoint)
    problem = binding_problem(state, record, None)[0] if state is not None else None
    if problem:  # what a resume would continue is not what the record says
        return Verdict(MISMATCH, f"{path}: a resume would be refused: {problem}")
    energy = ("no energy figure (unmeasured)" if record.get("method") == "unmeasured" else
              f"{record.get('train_joules', 0):.6g} J")
    flags = [*(record.get("flags") or []),
             *(f for s in record.get("segments") or [] for f in s.get("flags") or [])]
    gaps = [str(f) for f in dict.fromkeys(flags) if any(n in str(f) for n in COVERAGE_NOTES)]
    return Verdict(OK, f"{path}: weights and record match ({energy} over "
                       f"{record.get('optimizer_steps')} optimizer steps, method "
                       f"{record.get('method')}); {why}" + "".join(f"; but {g}" for g in gaps))
