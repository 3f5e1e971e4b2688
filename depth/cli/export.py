"""`depth export`: a depth GPT checkpoint in another library's format (``--format hf``:
a transformers GPT-2 directory that vLLM or TGI can serve)."""

from __future__ import annotations

import sys

from jsonargparse import ArgumentParser, Namespace

from depth.cli import checks
from depth.cli.common import UsageError, one_line


def declare_export(p: ArgumentParser) -> None:
    p.add_argument("source", type=str, help="A depth GPT checkpoint file, or runs:/, "
                   "models:/, m- when its checkpoint file was logged.")
    p.add_argument("out", type=str, help="The folder to write (it must not exist, unless "
                   "--force).")
    p.add_argument("--format", type=str, default="hf",
                   help="hf: a transformers GPT-2 directory (config.json, model.safetensors, "
                   "tokenizer, README.md model card, depth.json record).")
    p.add_argument("--force", action="store_true",
                   help="Replace OUT when it exists (once the new export is complete).")
    p.add_argument("--trust", action="store_true",
                   help="Load Python objects stored in the checkpoint (runs code from it).")
    p.add_argument("--tracking-uri", type=str, default=None,
                   help="MLflow store for runs:/ and models:/ sources.")


def run_export(args: Namespace) -> int:
    """`depth export`: writes the model in `--format` to OUT."""
    from depth.gpt.export_hf import FORMATS

    if args.format not in FORMATS:
        raise UsageError(f"--format takes {', '.join(FORMATS)} (got {args.format!r})")
    out = checks.writable_dir("out", args.out)
    if out.exists() and not args.force:
        raise UsageError(f"{out} exists; give a new folder, or --force to replace it")
    checks.tracking_uri("tracking-uri", args.tracking_uri)
    from depth.gpt.export_hf import export_hf

    try:
        done = export_hf(args.source, out, tracking_uri=args.tracking_uri, trust=args.trust,
                         replace=args.force)
    except (OSError, ValueError) as err:
        print(f"depth export: {one_line(err)}", file=sys.stderr)
        return 2
    print(f"depth export: {args.source} -> {done.out} (transformers GPT-2)")
    print(f"  files: {', '.join(done.files)}")
    print(f"  tokenizer: {done.tokenizer or 'none (vocabulary is neither bytes nor GPT-2)'}")
    print(f"  load it: AutoModelForCausalLM.from_pretrained({str(done.out)!r}); measure it: "
          f"depth eval {done.out}")
    return 0
