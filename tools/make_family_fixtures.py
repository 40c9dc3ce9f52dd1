"""Tiny random BERT, RoBERTa, DistilBERT and MPNet folders, with their outputs from transformers.

Run once, in a separate virtualenv that has torch (never a dependency of this project):

    python3 -m venv /tmp/ref && /tmp/ref/bin/pip install torch==2.13.0 transformers==5.24.0 \
        sentence-transformers==6.2.0
    /tmp/ref/bin/python tools/make_family_fixtures.py

For each family it makes a small tokenizer from the sentences below (a WordPiece vocabulary, or a
byte-level BPE trained by tokenizers for RoBERTa), wraps it in the family's transformers tokenizer
class, builds a 2-layer, hidden-32 model of the family with transformers, gives every parameter
random non-trivial values (LayerNorm scales and all biases included), and saves it with
transformers' save_pretrained plus the sentence-transformers files of the published models (mean
pooling, no Normalize, max_seq_length 64) as tests/fixtures/tiny_<family>/. Next to the model it
writes reference.npz:

    texts              the input texts (one empty, one truncated at max_seq_length)
    input_ids, attention_mask   the padded batch transformers' own tokenizer made of them
    last_hidden_state  float32 [B, L, D], the transformers model on that batch
    embeddings         float32 [B, D], SentenceTransformer.encode (mean pooling, no normalising)
    relative_positions, buckets   (MPNet only) transformers' MPNetEncoder.relative_position_bucket

tests/families_test.py compares our encoder, tokenizer path and import/export against these.
"""

import collections
import json
import os
import shutil

import numpy as np
import sentence_transformers
import tokenizers
import torch
import transformers
from sentence_transformers import SentenceTransformer
from tokenizers import normalizers, pre_tokenizers, trainers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
MAX_SEQ_LENGTH = 64  # tokens per text; the long text below is truncated to it

CORPUS = [
    "A man is playing a guitar.",
    "A woman is slicing an onion.",
    "Two dogs are running through a field of grass.",
    "The cat sat on the mat and looked out of the window.",
    "A child is riding a bicycle down the street.",
    "Stock markets fell sharply on Monday morning.",
    "The government announced new rules for electric cars.",
    "Scientists discovered a new species of frog in the rainforest.",
    "How many people live in Berlin?",
    "Around 3.5 million people live in Berlin.",
    "The capital of France is Paris.",
    "What is the best way to learn a new language?",
    "Reading every day is the best way to improve your vocabulary.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby in her arms.",
    "Someone in a gorilla costume is playing a set of drums.",
    "Sentence embeddings map similar sentences to nearby vectors.",
    "Contrastive learning pulls positive pairs together and pushes negatives apart.",
    "The quick brown fox jumps over the lazy dog.",
    "Zürich is a city in Switzerland, near the lake.",
    "She ordered a coffee and a croissant at the café.",
    "Please send me the report before Friday afternoon.",
    "The train to London leaves at 10:45 from platform 3.",
    "Water boils at 100 degrees Celsius at sea level.",
    "He forgot his umbrella, so he got wet in the rain.",
    "Birds migrate south for the winter every year.",
    "The museum opens at nine and closes at five.",
    "My favourite colour is blue, but I also like green.",
    "They are building a new bridge across the river.",
    "Music can change the way people feel about a place.",
]

TEXTS = [
    "A man is playing a guitar.",
    "",  # only the special tokens
    "Hello WORLD!  Zürich, naïve déjà-vu Ω 42",  # case, accents, an unseen character
    "Two dogs run. " * 30,  # longer than MAX_SEQ_LENGTH: truncated
    "Contrastive learning of sentence embeddings with in-batch negatives and hard negatives.",
    "Birds",
]

WORDPIECE_SPECIAL = {
    "bert": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
    "distilbert": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
    # As microsoft/mpnet-base: <pad> is id 1, the padding_idx transformers' MPNet assumes.
    "mpnet": ["<s>", "<pad>", "</s>", "[UNK]", "<mask>"],
}

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)


def wordpiece_vocab(special: list[str]) -> dict[str, int]:
    # Built by hand rather than with tokenizers' WordPieceTrainer, which breaks frequency ties in
    # hash order: every character of the corpus (word-initial and "##" continuation) and then its
    # most frequent words, so that the script reproduces the committed fixtures exactly.
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts = collections.Counter(
        word
        for text in CORPUS
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))
    )
    chars = sorted({c for word in counts for c in word})
    pieces = chars + ["##" + c for c in chars]
    words = [w for w in sorted(counts, key=lambda w: (-counts[w], w)) if w not in pieces]
    tokens = special + pieces + words[: 200 - len(special) - len(pieces)]
    return {token: i for i, token in enumerate(tokens)}


def bpe_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    merges = json.loads(tok.to_str())["model"]["merges"]
    return tok.get_vocab(), [tuple(m) for m in merges]


def build(family: str):
    """(transformers tokenizer, transformers model) of the family, with random weights."""
    if family == "roberta":
        vocab, merges = bpe_vocab()
        tok = transformers.RobertaTokenizer(vocab=vocab, merges=merges)
        config = transformers.RobertaConfig(
            vocab_size=len(vocab),
            max_position_embeddings=MAX_SEQ_LENGTH + 2,
            type_vocab_size=1,
            pad_token_id=tok.pad_token_id,
            layer_norm_eps=1e-5,
            **TINY,
        )
        model = transformers.RobertaModel(config)
    elif family == "mpnet":
        vocab = wordpiece_vocab(WORDPIECE_SPECIAL[family])
        tok = transformers.MPNetTokenizer(vocab=vocab)
        config = transformers.MPNetConfig(
            vocab_size=len(vocab),
            max_position_embeddings=MAX_SEQ_LENGTH + 2,
            pad_token_id=tok.pad_token_id,
            layer_norm_eps=1e-5,
            relative_attention_num_buckets=32,
            **TINY,
        )
        model = transformers.MPNetModel(config)
    elif family == "distilbert":
        vocab = wordpiece_vocab(WORDPIECE_SPECIAL[family])
        tok = transformers.DistilBertTokenizer(vocab=vocab)
        config = transformers.DistilBertConfig(
            vocab_size=len(vocab),
            max_position_embeddings=MAX_SEQ_LENGTH,
            dim=TINY["hidden_size"],
            n_layers=TINY["num_hidden_layers"],
            n_heads=TINY["num_attention_heads"],
            hidden_dim=TINY["intermediate_size"],
            pad_token_id=tok.pad_token_id,
        )
        model = transformers.DistilBertModel(config)
    else:
        vocab = wordpiece_vocab(WORDPIECE_SPECIAL[family])
        tok = transformers.BertTokenizer(vocab=vocab)
        config = transformers.BertConfig(
            vocab_size=len(vocab),
            max_position_embeddings=MAX_SEQ_LENGTH,
            type_vocab_size=2,
            pad_token_id=tok.pad_token_id,
            **TINY,
        )
        model = transformers.BertModel(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "relative_attention_bias" in name:
                p.copy_(torch.randn_like(p))  # large enough that a wrong bucket shows
            elif "LayerNorm.weight" in name or "layer_norm.weight" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    return tok, model.eval()


def write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def make(family: str, seed: int) -> None:
    torch.manual_seed(seed)
    out = os.path.join(FIXTURES, f"tiny_{family}")
    tok, model = build(family)
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    # The sentence-transformers files as the published models (all-mpnet-base-v2, ...) have them;
    # sentence-transformers 6 writes a newer layout when it saves, and reads both.
    write_json(
        os.path.join(out, "modules.json"),
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {
                "idx": 1,
                "name": "1",
                "path": "1_Pooling",
                "type": "sentence_transformers.models.Pooling",
            },
        ],
    )
    write_json(
        os.path.join(out, "sentence_bert_config.json"),
        {"max_seq_length": MAX_SEQ_LENGTH, "do_lower_case": False},
    )
    write_json(
        os.path.join(out, "1_Pooling", "config.json"),
        {
            "word_embedding_dimension": TINY["hidden_size"],
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        },
    )

    # Everything below comes from the saved folder, loaded back as any user would load it.
    st = SentenceTransformer(out, device="cpu")
    assert st.max_seq_length == MAX_SEQ_LENGTH, st.max_seq_length
    auto_model = st[0].auto_model.eval()
    batch = st.tokenizer(
        TEXTS, padding=True, truncation=True, max_length=MAX_SEQ_LENGTH, return_tensors="pt"
    )
    with torch.no_grad():
        hidden = auto_model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
    emb = st.encode(TEXTS, batch_size=4, convert_to_numpy=True, normalize_embeddings=False)
    # The encode path (its own batching and padding) agrees with the batch above.
    mask = batch["attention_mask"][..., None].float()
    mean = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
    assert np.abs(mean - emb).max() < 1e-5, np.abs(mean - emb).max()
    assert batch["input_ids"].shape[1] == MAX_SEQ_LENGTH  # the long text was truncated
    arrays = dict(
        texts=np.array(TEXTS),
        input_ids=batch["input_ids"].numpy().astype(np.int32),
        attention_mask=batch["attention_mask"].numpy().astype(np.int32),
        last_hidden_state=hidden.numpy().astype(np.float32),
        embeddings=emb.astype(np.float32),
    )
    if family == "mpnet":
        # transformers' MPNet takes its padding index (so its first position id) as 1 whatever
        # config.pad_token_id says; families_test relies on that when it edits config.json.
        other = transformers.MPNetModel(
            transformers.MPNetConfig(**{**auto_model.config.to_dict(), "pad_token_id": 0})
        ).eval()
        other.load_state_dict(auto_model.state_dict())
        with torch.no_grad():
            again = other(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).last_hidden_state
        assert torch.equal(again, hidden)
        relative = torch.arange(-300, 301)
        arrays["relative_positions"] = relative.numpy().astype(np.int32)
        arrays["buckets"] = (
            transformers.models.mpnet.modeling_mpnet.MPNetEncoder.relative_position_bucket(relative)
            .numpy()
            .astype(np.int32)
        )
    np.savez_compressed(os.path.join(out, "reference.npz"), **arrays)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
    print(f"{family}: {out} {size / 1024:.0f} KB, ids {arrays['input_ids'].shape}")


def main() -> None:
    print(
        "torch",
        torch.__version__,
        "transformers",
        transformers.__version__,
        "sentence-transformers",
        sentence_transformers.__version__,
    )
    for seed, family in enumerate(("bert", "roberta", "distilbert", "mpnet")):
        make(family, seed)


if __name__ == "__main__":
    main()
