"""T5 tokenizers and text encoders built offline from a vocabulary and sizes, with no hub download.

The tiny test pipelines and the embedded model both read prompts with T5, as PixArt and FLUX do; only
their vocabularies and widths differ.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import T5Config, T5EncoderModel, T5Tokenizer

# T5's layout of the special tokens; the Unigram model hardcodes unk_id=2.
PAD_ID, EOS_ID = 0, 1
_SPECIAL_PIECES = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]


def character_pieces(characters: str, word_initial: float, inner: float) -> list[tuple[str, float]]:
    """Each character as a word-initial "▁c" piece and an inner one, so any text spelled from them
    tokenizes; scoring word-initial pieces above "▁" + the character starts every word with one piece."""
    return [(f"▁{c}", word_initial) for c in characters] + [(c, inner) for c in characters]


def t5_tokenizer(pieces: Sequence[tuple[str, float]]) -> T5Tokenizer:
    """A T5 (Unigram) tokenizer over `pieces` (piece, log-probability), after T5's special tokens."""
    return T5Tokenizer(vocab=[*_SPECIAL_PIECES, *pieces], extra_ids=0)


def t5_encoder(
    vocab_size: int, width: int, head_width: int, ff_width: int, position_buckets: int
) -> T5EncoderModel:
    """A two-layer, four-head T5 encoder (gated GELU, no dropout) reading `t5_tokenizer`'s ids."""
    config = T5Config(
        vocab_size=vocab_size,
        d_model=width,
        d_kv=head_width,
        d_ff=ff_width,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=position_buckets,
        relative_attention_max_distance=32,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        decoder_start_token_id=PAD_ID,
    )
    return T5EncoderModel(config)
