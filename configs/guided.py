"""Ablation: GISTEmbed's guided in-batch masking (Solatorio 2024, "GISTEmbed: Guided In-sample
Selection of Training Negatives"; sentence-transformers' GISTEmbedLoss): a frozen guide model
masks every in-batch candidate and hard negative it scores above the anchor's own positive, the
probable false negatives, and adds the anchor-anchor and positive-positive candidates.

The guide must share the model's tokenizer. Starting from the untrained MiniLM-L6-H384-uncased
(the full recipe), the frozen start ('init') knows nothing yet, so the guide here is a trained
embedder with the same (bert-base-uncased) vocabulary: all-MiniLM-L6-v2 from the pip package,
as GISTEmbed guided with existing embedders. Fine-tuning a trained model (SciFact), 'init' is
the natural guide: `--config.loss.guide=init`. docs/hard-negatives.md has the details.
"""

from configs import base


def get_config(arg=None):
    c = base.get_config(arg)
    c.loss.guide = base._reference_model_dir()  # frozen all-MiniLM-L6-v2 picks what to mask
    c.loss.guide_margin = 0.0  # GISTEmbedLoss's default: mask what scores above the positive
    return c
