"""Signed records: an HMAC over the record's digest, with a key only its owner holds.

``record_sha256`` is tamper *evidence*: anyone who edits a record can recompute it. With
``DEPTH_SIGNING_KEY`` set (any secret string; keep it out of code and configs), every record
written also carries ``signature = HMAC-SHA256(key, record_sha256)``, which nobody without
the key can produce for an edited record. ``depth verify`` checks it whenever the key is
set. The key itself is never written anywhere; ``DEPTH_SIGNING_KEY_ID`` (a label you choose,
e.g. ``team-2026``) may name it in the record, for rotation.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from typing import Any

KEY_ENV = "DEPTH_SIGNING_KEY"
KEY_ID_ENV = "DEPTH_SIGNING_KEY_ID"
ALGORITHM = "HMAC-SHA256"


def signing_key() -> bytes | None:
    """The key from ``DEPTH_SIGNING_KEY``, or ``None`` when unset or empty."""
    key = os.environ.get(KEY_ENV, "")
    return key.encode() if key else None


def key_id() -> str | None:
    """The key's label from ``DEPTH_SIGNING_KEY_ID``, or ``None``."""
    return os.environ.get(KEY_ID_ENV) or None


def signature(digest: str, key: bytes, key_id: str | None = None) -> dict[str, Any]:
    """The signature of a record whose ``record_sha256`` is `digest`."""
    value = hmac.new(key, digest.encode(), hashlib.sha256).hexdigest()
    return {"alg": ALGORITHM, "key_id": key_id, "value": value}


def check(record: Mapping[str, Any], key: bytes | None) -> tuple[bool | None, str]:
    """(True: signed with `key`; False: unsigned or not with `key`; None: no key to check
    with) and why, in a few words."""
    signed = record.get("signature")
    if key is None:
        if isinstance(signed, Mapping):  # anyone can write one: unchecked, it proves nothing
            label = f", naming key {signed.get('key_id')!r}" if signed.get("key_id") else ""
            return None, f"signature not checked ({KEY_ENV} is not set{label})"
        return None, "not signed"
    if not isinstance(signed, Mapping) or "value" not in signed:
        return False, f"the record is not signed, but {KEY_ENV} is set: it cannot be shown to " \
                      "come from a holder of the key"
    expected = signature(str(record.get("record_sha256")), key)["value"]
    if signed.get("alg") != ALGORITHM or not hmac.compare_digest(expected, str(signed["value"])):
        return False, "the signature does not match: the record was forged or re-sealed, or " \
                      "signed with another key"
    return True, "signature valid"
