"""The GPT-style recipe: model (`model.py`), its LightningModule (`module.py`), data through
`datasets` (`data.py`) and tokenizers (`tokenizer.py`)."""

from depth.gpt.model import GPT, GPTConfig

__all__ = ["GPT", "GPTConfig"]
