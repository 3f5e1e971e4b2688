"""Hugging Face model-card metadata from a depth record.

The Hub's model-card schema has ``co2_eq_emissions`` (grams, source, training type,
location, hardware) and no energy field; depth's energy figures ride beside it under
``depth``. The output is the YAML block that opens a model card's README.md.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from depth.record.provenance import Provenance
from depth.record.search import card_fields
from depth.record.uncertainty import is_measured, measurement_label


def hardware_used(record: Provenance) -> str:
    """E.g. ``"2 x NVIDIA H100 80GB HBM3 (nvml-counter), AMD EPYC 7763 (estimate)"``."""
    gpus = Counter(g.get("name", "GPU") for rank in record.hardware.get("ranks", [])
                   for g in rank.get("gpus", []))
    parts = [f"{n} x {name}" for name, n in gpus.items()]
    cpu = record.hardware.get("cpu_model")
    if cpu:
        parts.append(f"{record.hardware.get('num_nodes', 1)} x {cpu}")
    return ", ".join(parts) + f" (energy: {record.method})" if parts else record.method


def card_metadata(record: Provenance, search: Mapping[str, Any] | None = None
                  ) -> dict[str, Any]:
    """The model-card metadata: ``co2_eq_emissions`` and ``depth`` (with the search's
    ``search_joules`` etc. when `search`, from `depth attribute`, is given).

    A record with nothing measured gets no energy figures and no emissions (rather than a
    0 kWh and 0 g claim): ``measured: false`` and ``measurement`` say why.
    """
    carbon = {} if record.unmeasured else record.carbon or {}
    none = record.unmeasured
    location = "/".join(x for x in (carbon.get("country_iso_code"), carbon.get("region")) if x)
    energy = {
        "train_joules": None if none else record.train_joules,
        "train_kwh": None if none else record.train_kwh,
        "depth_joules": None if none else record.depth_joules,
        "depth_kwh": None if none else record.depth_joules / 3.6e6,
        "facility_joules": record.facility_joules, "pue": record.pue,
        "optimizer_steps": record.optimizer_steps, "train_tokens": record.train_tokens,
        "parameters": record.parameters, "method": record.method,
        "measured": is_measured(record.method) and record.measured is not False,
        "measurement": measurement_label(record.method, record.measured),
        "wasted_joules": record.wasted_joules, "weights_sha256": record.weights_sha256,
        "record_sha256": record.record_sha256, "known_error": record.known_error,
        "uncertainty": record.uncertainty and {
            "relative": record.uncertainty["relative"], "joules": record.uncertainty["joules"],
            "methods": sorted(record.uncertainty.get("per_method", {}))},
        **card_fields(search),  # the search that found it: apart from train/depth joules
    }
    meta: dict[str, Any] = {}
    if carbon.get("kg_co2eq") is not None:
        meta["co2_eq_emissions"] = {
            "emissions": round(carbon["kg_co2eq"] * 1000.0, 6),  # grams, as the Hub wants
            "source": f"depth {record.schema}: {record.method} energy x {carbon['basis']} "
                      f"({carbon.get('label', 'estimate')})",
            "training_type": "fine-tuning" if record.parent else "pre-training",
            "geographical_location": location or "unknown (world-average grid intensity)",
            "hardware_used": hardware_used(record),
        }
    meta["depth"] = energy  # the Hub's schema has no energy field: ours rides beside it
    return meta


def card_yaml(record: Provenance, search: Mapping[str, Any] | None = None) -> str:
    """The ``---``-fenced YAML block that opens a model card."""
    import yaml

    return "---\n" + yaml.safe_dump(card_metadata(record, search), sort_keys=False) + "---\n"
