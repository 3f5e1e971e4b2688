"""What a depth record must look like before anything reads a figure from it.

A record's digest proves it was not edited since it was sealed, not that whoever sealed
it wrote a sensible record: a hand-made or foreign record can be sealed with any field of
any type. `check_record` refuses, in one line naming the field, what `Provenance`,
`depth verify`, `depth provenance` and `depth card` could not read: an unknown schema,
a missing field, a field of the wrong type, or a lineage deeper than `MAX_GENERATIONS`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

SCHEMA = "depth.provenance/1"
SCHEMAS = (SCHEMA,)  # the schemas this version of depth reads
# Generations a record may hold (itself included). Records nest their parents, and
# digesting, copying or pickling them recurses once per generation: a lineage deeper than
# this is refused up front rather than left to exhaust Python's recursion limit.
MAX_GENERATIONS = 100


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(
        value)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _text_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _joules_map(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and _number(v)
                                           for k, v in value.items())


Check = tuple[Callable[[Any], bool], str]
NUMBER: Check = (_number, "a finite number")
INTEGER: Check = (_integer, "an integer")
TEXT: Check = (lambda v: isinstance(v, str), "text")
MAP: Check = (lambda v: isinstance(v, dict), "a mapping")
JOULES: Check = (_joules_map, "a mapping of device names to joules")
TEXTS: Check = (_text_list, "a list of text")
SEGMENTS: Check = (lambda v: isinstance(v, list) and all(isinstance(s, dict) for s in v),
                   "a list of segments (mappings)")

REQUIRED: dict[str, Check] = {
    "train_joules": NUMBER, "optimizer_steps": INTEGER, "devices": JOULES, "method": TEXT,
    "segments": SEGMENTS, "wasted_joules": NUMBER, "created": TEXT,
    "train_tokens": (lambda v: v is None or _integer(v), "an integer or null"),
    "weights_sha256": (lambda v: v is None or isinstance(v, str), "text or null"),
}
OPTIONAL: dict[str, Check] = {  # may be absent or null
    "hardware": MAP, "parent": MAP, "sync": TEXT, "attribution": TEXT, "flags": TEXTS,
    "parameters": INTEGER, "config_sha256": TEXT, "known_error": TEXT, "pue": NUMBER,
    "facility_joules": NUMBER, "carbon": MAP, "uncertainty": MAP, "record_sha256": TEXT,
    "signature": MAP, "train_kwh": NUMBER, "depth_joules": NUMBER,
}
SEGMENT: dict[str, Check] = {
    "kind": TEXT, "start_step": INTEGER, "end_step": INTEGER, "joules": NUMBER,
    "wall_s": NUMBER, "started": TEXT, "method": TEXT,
}
NESTED: dict[str, dict[str, Check]] = {  # figures read from the optional mappings
    "uncertainty": {"relative": NUMBER, "joules": NUMBER},
    "carbon": {"kg_co2eq": NUMBER},
}


def _field(where: str, name: str, value: Any, check: Check) -> None:
    test, kind = check
    if not test(value):
        shown = repr(value)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        raise ValueError(f"{where}{name} must be {kind} (got {shown})")


def check_generations(record: Mapping[str, Any], limit: int = MAX_GENERATIONS) -> int:
    """The generations in `record`'s lineage (itself included), counted without recursion.

    Raises:
        ValueError: More than `limit` generations.
    """
    count = 0
    node: Any = record
    while isinstance(node, Mapping):
        count += 1
        if count > limit:
            raise ValueError(f"the record's lineage is more than {limit} generations deep "
                             f"(depth reads at most {MAX_GENERATIONS}, the model included)")
        node = node.get("parent")
    return count


def check_schema(record: Mapping[str, Any], where: str = "") -> None:
    """Raises ValueError unless `record` says it is a depth record of a schema this depth
    reads."""
    schema = record.get("schema")
    if not isinstance(schema, str) or not schema.startswith("depth.provenance/"):
        raise ValueError(f"{where}not a depth provenance record (schema {schema!r}; "
                         f"this depth reads {', '.join(SCHEMAS)})")
    if schema not in SCHEMAS:
        raise ValueError(f"{where}schema {schema!r} is not one this depth reads "
                         f"({', '.join(SCHEMAS)}): upgrade depth to read it")


def check_node(record: Mapping[str, Any], where: str = "") -> None:
    """One record of a lineage, its parent aside: schema, fields and their types."""
    check_schema(record, where)
    for name, check in REQUIRED.items():
        if name not in record:
            raise ValueError(f"{where}{name} is missing from the record ({record['schema']} "
                             "requires it)")
        _field(where, name, record[name], check)
    for name, check in OPTIONAL.items():
        if record.get(name) is not None:
            _field(where, name, record[name], check)
    for i, segment in enumerate(record["segments"]):
        for name, check in SEGMENT.items():
            if name not in segment:
                raise ValueError(f"{where}segments[{i}].{name} is missing from the record")
            _field(where, f"segments[{i}].{name}", segment[name], check)
    for outer, fields in NESTED.items():
        inner = record.get(outer) or {}
        for name, check in fields.items():
            if inner.get(name) is not None:
                _field(where, f"{outer}.{name}", inner[name], check)


def check_record(record: Any) -> None:
    """Raises ValueError (one line naming the field) unless `record` and every ancestor
    in its lineage can be read: a known schema, every required field, the right types,
    at most `MAX_GENERATIONS` generations."""
    if not isinstance(record, Mapping):
        raise ValueError(f"not a depth provenance record (a {type(record).__name__}, "
                         "not a mapping)")
    check_generations(record)
    node: Any = record
    generation = 0
    while node is not None:
        where = "" if generation == 0 else f"the ancestor {generation} generation(s) up: "
        if not isinstance(node, Mapping):
            raise ValueError(f"{where}not a depth provenance record")
        check_node(node, where)
        node, generation = node.get("parent"), generation + 1


__all__ = ["MAX_GENERATIONS", "SCHEMA", "SCHEMAS", "check_generations", "check_record",
           "check_schema"]
