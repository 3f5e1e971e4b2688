"""`depth export --format hf`: a depth GPT checkpoint as a transformers GPT-2 directory.

depth's GPT is GPT-2's architecture (learned positions, pre-LayerNorm blocks, tied
embeddings) with two differences that the export maps exactly: its linear layers store
weights as out x in where GPT-2's ``Conv1D`` stores in x out (transposed here), and its MLP
uses the exact (erf) GELU (``activation_function: gelu``, not GPT-2's tanh ``gelu_new``).
A recipe without biases gets zero biases. The directory holds ``config.json``,
``model.safetensors``, the tokenizer's files, ``README.md`` (the model card: Hub metadata
with ``co2_eq_emissions`` and depth's energy block) and ``depth.json`` (the record, which
``depth provenance``, ``depth eval`` and ``depth amortize`` read from the directory).

The directory is written beside `out` under a temporary name and renamed into place when
complete: a failed export leaves nothing half-written, and an existing `out` is replaced
only when asked (and only once the new one is whole).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from depth.gpt.model import GPTConfig

FORMATS = ("hf",)
TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight",
              "mlp.c_proj.weight")  # nn.Linear (out x in) -> Conv1D (in x out)
GPT2_VOCAB = 50257


@dataclass
class Exported:
    """What `export_hf` wrote.

    Attributes:
        out: The model directory.
        files: Its files, sorted.
        tokenizer: The tokenizer written (``bytes``, ``gpt2``), or ``None`` when unknown.
        model_id: The LoggedModel of the source, when it was an MLflow source.
    """

    out: Path
    files: list[str]
    tokenizer: str | None
    model_id: str | None


def gpt2_config(cfg: GPTConfig, tokenizer: str | None) -> Any:
    """The ``GPT2Config`` of a depth `GPTConfig`."""
    from transformers import GPT2Config

    eos = GPT2_VOCAB - 1 if tokenizer == "gpt2" else None  # the byte tokenizer has no EOS
    return GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd,
        n_layer=cfg.n_layer, n_head=cfg.n_head, n_inner=4 * cfg.n_embd,
        activation_function="gelu", resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout, layer_norm_epsilon=1e-5, tie_word_embeddings=True,
        bos_token_id=eos, eos_token_id=eos, architectures=["GPT2LMHeadModel"])


def gpt2_state_dict(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
                    ) -> dict[str, torch.Tensor]:
    """depth's GPT weights (``GPT.state_dict()`` keys) in GPT-2's layout, for every key of
    `target` (a ``GPT2LMHeadModel``'s state dict: its keys, shapes and dtypes)."""
    out = {}
    for key, like in target.items():
        if key in state:
            value = state[key]
            if key.endswith(TRANSPOSED):
                value = value.t()
        elif key.endswith(".bias"):  # a recipe with bias=False: zeros are no bias
            value = torch.zeros_like(like)
        else:
            raise ValueError(f"the checkpoint has no weight for {key}")
        if value.shape != like.shape:
            raise ValueError(f"{key}: shape {tuple(value.shape)} where GPT-2 has "
                             f"{tuple(like.shape)}")
        out[key] = value.to(like.dtype).contiguous()
    return out


def tokenizer_of(checkpoint: dict[str, Any], cfg: GPTConfig) -> str | None:
    """The recipe's tokenizer, or the one its vocabulary implies (256: bytes; 50257: GPT-2)."""
    recipe = (checkpoint.get("hyper_parameters") or {}).get("recipe") or {}
    name = (recipe.get("data") or {}).get("tokenizer")
    if name:
        return name
    return {256: "bytes", GPT2_VOCAB: "gpt2"}.get(cfg.vocab_size)


def model_card(record: dict[str, Any], name: str, tokenizer: str | None) -> str:
    """README.md: Hub metadata (``co2_eq_emissions``, depth's energy block) and a few lines."""
    import yaml

    from depth.record.card import card_metadata
    from depth.record.provenance import Provenance

    prov = Provenance.from_dict(record)
    meta = {"library_name": "transformers", "pipeline_tag": "text-generation",
            "tags": ["depth", "gpt2"], **card_metadata(prov)}
    from depth.record.uncertainty import measurement_label

    energy = ("unmeasured (no valid reading)" if prov.unmeasured else
              f"{prov.train_joules:,.1f} J ({prov.train_kwh:.6g} kWh), "
              f"{prov.depth_joules:,.1f} J with its parents")
    lines = [f"# {name}", "",
             "A GPT-2-architecture model trained with depth, exported by `depth export "
             "--format hf`.", "",
             f"- training energy: {energy}; method {prov.method} "
             f"({measurement_label(prov.method)})",
             f"- optimizer steps: {prov.optimizer_steps:,}; parameters: "
             f"{prov.parameters if prov.parameters is not None else 'unknown'}",
             f"- tokenizer: {tokenizer or 'none written (unknown vocabulary)'}",
             "- the full energy record is `depth.json` (`depth provenance DIR` shows it; "
             "`depth eval DIR` measures tokens/Wh and attaches them to this record's model)",
             ""]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n\n" + "\n".join(lines)


def export_hf(source: str, out: str | Path, tracking_uri: str | None = None,
              trust: bool = False, replace: bool = False) -> Exported:
    """Writes the depth GPT at `source` (a checkpoint file or an MLflow source whose
    LoggedModel holds the checkpoint file) as a transformers GPT-2 directory `out`.

    Raises:
        ValueError: One line: not a depth GPT recipe checkpoint, no record, transformers
            missing, or `out` exists and `replace` is not set.
        OSError: `out`'s parent cannot be written.
    """
    try:
        from transformers import GPT2LMHeadModel
        from transformers.utils import logging
    except ImportError:
        raise ValueError("--format hf needs transformers: pip install 'depth[hf]'") from None
    logging.disable_progress_bar()  # stderr keeps depth's own lines
    from depth.tracking.sources import checkpoint_of

    out = Path(out)
    if out.exists() and not replace:
        raise ValueError(f"{out} exists; give another folder, or --force to replace it")
    found = checkpoint_of(source, tracking_uri, trust=trust, find_in_mlflow=False)
    hparams = found.checkpoint.get("hyper_parameters") or {}
    if "model" not in hparams or "optim" not in hparams:
        raise ValueError(f"{source} is not a depth GPT recipe checkpoint (no model and optim "
                         "hyperparameters): only depth's GPT is exported to GPT-2")
    cfg = GPTConfig(**hparams["model"])
    tokenizer = tokenizer_of(found.checkpoint, cfg)
    state = {k.removeprefix("gpt."): v for k, v in found.checkpoint["state_dict"].items()}
    model = GPT2LMHeadModel(gpt2_config(cfg, tokenizer))
    model.load_state_dict(gpt2_state_dict(state, model.state_dict()), strict=True)
    model.tie_weights()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would make the export private
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        if tokenizer is not None:
            from depth.gpt.hf_tokenizer import save_tokenizer

            save_tokenizer(tokenizer, tmp, cfg.block_size)
        (tmp / "depth.json").write_text(json.dumps(found.record, indent=2), encoding="utf-8")
        (tmp / "README.md").write_text(model_card(found.record, out.name, tokenizer),
                                       encoding="utf-8")
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Exported(out=out, files=sorted(p.name for p in out.iterdir()),
                    tokenizer=tokenizer, model_id=found.model_id)


def _move_into_place(new: Path, out: Path) -> None:
    """Renames the finished `new` to `out`; an old `out` is removed only after that."""
    if not out.exists():
        new.rename(out)
        return
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    out.rename(old)
    try:
        new.rename(out)
    except OSError:
        old.rename(out)  # put the previous export back
        raise
    shutil.rmtree(old, ignore_errors=True)
