"""BERT, RoBERTa, DistilBERT and MPNet against transformers itself, on tiny random models.

tests/fixtures/tiny_<family>/ are sentence-transformers folders made by
tests/make_family_fixtures.py with transformers and torch; their reference.npz holds the token ids
transformers' tokenizer gave, the model's last hidden state and SentenceTransformer.encode's
mean-pooled embeddings. Here our tokenizer path, encoder, pooling and import/export must agree.
"""

import functools
import json
import os
import shutil

import chex
import haiku as hk
import jax
import numpy as np
import pytest
import safetensors.numpy

import convert
import evaluate
import model

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
FAMILIES = ("bert", "roberta", "distilbert", "mpnet")
TOL = 1e-5


def _folder(family: str) -> str:
    return os.path.join(FIXTURES, f"tiny_{family}")


@functools.cache
def _loaded(family: str) -> convert.LoadedModel:
    return convert.load_model(_folder(family))


@functools.cache
def _reference(family: str) -> dict[str, np.ndarray]:
    with np.load(os.path.join(_folder(family), "reference.npz")) as f:
        return {k: f[k] for k in f.files}


@functools.cache
def _encoder(config: model.EncoderConfig):
    # The token states before pooling: the same module (and param names) make_embed_fn uses.
    fn = hk.without_apply_rng(hk.transform(lambda ids, seg: model.Encoder(config)(ids, seg)))
    return jax.jit(fn.apply)


def _hidden(m: convert.LoadedModel, ids_BxL: np.ndarray, segments_BxL: np.ndarray) -> np.ndarray:
    return np.asarray(_encoder(m.config)(m.params, ids_BxL, segments_BxL))


def _hidden_max_diff(m: convert.LoadedModel, ref: dict[str, np.ndarray]) -> float:
    mask = ref["attention_mask"].astype(bool)
    hidden = _hidden(m, ref["input_ids"], ref["attention_mask"])
    # Padding rows differ by design: our padded queries attend nothing of the text.
    return float(np.abs(hidden - ref["last_hidden_state"])[mask].max())


def _copy(family: str, tmp_path) -> str:
    dst = str(tmp_path / family)
    shutil.copytree(_folder(family), dst)
    return dst


def _edit_json(path: str, **changes) -> None:
    with open(path) as f:
        obj = json.load(f)
    obj.update(changes)
    with open(path, "w") as f:
        json.dump(obj, f)


@pytest.mark.parametrize("family", FAMILIES)
def test_config_is_read_per_family(family):
    cfg = _loaded(family).config
    assert cfg.model_type == family
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.intermediate_size) == (32, 2, 4, 48)
    want = {
        # (position offset, token-type rows, relative buckets, LayerNorm eps)
        "bert": (0, 2, 0, 1e-12),
        "roberta": (2, 1, 0, 1e-5),
        "distilbert": (0, 0, 0, 1e-12),
        "mpnet": (2, 0, 32, 1e-5),
    }[family]
    got = (
        cfg.position_offset,
        cfg.type_vocab_size,
        cfg.relative_attention_num_buckets,
        cfg.layer_norm_eps,
    )
    assert got == want
    m = _loaded(family)
    assert (m.pooling, m.normalize, m.max_seq_length) == ("mean", False, 64)


@pytest.mark.parametrize("family", FAMILIES)
def test_token_ids_match_transformers_tokenizer(family):
    m, ref = _loaded(family), _reference(family)
    mask = ref["attention_mask"].astype(bool)
    for i, text in enumerate(ref["texts"]):
        want = ref["input_ids"][i][mask[i]].tolist()
        assert m.tokenizer.encode(str(text)).ids == want, (family, str(text))
    # Padding ids as transformers pads (they never reach our outputs, but export keeps the token).
    assert m.pad_id == ref["input_ids"][1, -1]


@pytest.mark.parametrize("family", FAMILIES)
def test_last_hidden_state_matches_transformers(family):
    assert _hidden_max_diff(_loaded(family), _reference(family)) <= TOL


@pytest.mark.parametrize("family", FAMILIES)
def test_mean_pooled_embeddings_match_sentence_transformers(family):
    m, ref = _loaded(family), _reference(family)
    hidden = _hidden(m, ref["input_ids"], ref["attention_mask"])
    emb = model.pool(hidden, ref["attention_mask"], 1, m.pooling)
    chex.assert_shape(emb, (len(ref["texts"]), 1, 32))
    assert np.abs(np.asarray(emb[:, 0]) - ref["embeddings"]).max() <= TOL
    # The evaluation path: our own tokenization, length-sorted rows, the model's pooling.
    texts = [str(t) for t in ref["texts"]]
    ours = evaluate.encode(m, texts, batch_size=8, progress=False)
    assert np.abs(ours - ref["embeddings"]).max() <= TOL


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_texts_match_separate_texts_of_transformers(family):
    # Three texts in row 0: positions restart and MPNet's relative bias stays within a text.
    m, ref = _loaded(family), _reference(family)
    picks = [0, 1, 5]
    lengths = ref["attention_mask"].sum(1)
    packed = np.concatenate([ref["input_ids"][i, : lengths[i]] for i in picks])
    seg = np.concatenate([np.full(lengths[i], s + 1) for s, i in enumerate(picks)])
    # The fixture's batch shape, so that the compiled encoder is reused.
    ids_BxL, seg_BxL = ref["input_ids"].copy(), np.zeros_like(ref["attention_mask"])
    ids_BxL[0, : len(packed)], seg_BxL[0, : len(seg)] = packed, seg
    emb = model.pool(_hidden(m, ids_BxL, seg_BxL), seg_BxL, len(picks), "mean")
    assert np.abs(np.asarray(emb[0]) - ref["embeddings"][picks]).max() <= TOL


@pytest.mark.parametrize("family", FAMILIES)
def test_import_export_import_round_trips_exactly(family, tmp_path):
    m = _loaded(family)
    out = convert.export_model(m, str(tmp_path / "export"))
    again = convert.load_model(out)
    chex.assert_trees_all_equal(again.params, m.params)
    assert again.config == m.config
    assert (again.pooling, again.normalize, again.max_seq_length) == ("mean", False, 64)
    # Every tensor of the transformers file comes back under its name, bit for bit (the pooler
    # we do not use included).
    original = safetensors.numpy.load_file(os.path.join(_folder(family), "model.safetensors"))
    exported = safetensors.numpy.load_file(os.path.join(out, "model.safetensors"))
    assert sorted(exported) == sorted(original)
    for name, value in original.items():
        np.testing.assert_array_equal(exported[name], value, err_msg=name)
    # The config fields transformers reads for the architecture are unchanged.
    with open(os.path.join(_folder(family), "config.json")) as f:
        want = json.load(f)
    with open(os.path.join(out, "config.json")) as f:
        got = json.load(f)
    keys = [k for k in want if k not in ("architectures", "transformers_version", "dtype")]
    assert {k: got[k] for k in keys} == {k: want[k] for k in keys}
    out2 = convert.export_model(again, str(tmp_path / "export2"))
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        with open(os.path.join(out, name), "rb") as a, open(os.path.join(out2, name), "rb") as b:
            assert a.read() == b.read(), name


def test_mpnet_relative_position_buckets_match_transformers():
    ref = _reference("mpnet")
    ours = model.relative_position_buckets(ref["relative_positions"], 32)
    np.testing.assert_array_equal(np.asarray(ours), ref["buckets"])


def test_mpnet_positions_ignore_config_pad_token_id(tmp_path):
    # transformers' MPNetEmbeddings fixes padding_idx = 1 (the fixture script checks that its
    # output does not change with pad_token_id 0), so position ids start at 2 regardless.
    d = _copy("mpnet", tmp_path)
    _edit_json(os.path.join(d, "config.json"), pad_token_id=0)
    m = convert.load_model(d)
    assert m.config.position_offset == 2
    assert _hidden_max_diff(m, _reference("mpnet")) <= TOL


def test_mpnet_other_bucket_counts_are_refused(tmp_path):
    d = _copy("mpnet", tmp_path)
    _edit_json(os.path.join(d, "config.json"), relative_attention_num_buckets=64)
    with pytest.raises(convert.ModelFolderError, match="'relative_attention_num_buckets' is 64"):
        convert.load_model(d)


@pytest.mark.parametrize("family", FAMILIES)
def test_plain_transformers_folder_defaults(family, tmp_path):
    # Without the sentence-transformers files: mean pooling, and the longest text the position
    # table holds after the family's offset (64 rows here, 66 with RoBERTa/MPNet's offset 2).
    d = _copy(family, tmp_path)
    for name in ("modules.json", "sentence_bert_config.json"):
        os.remove(os.path.join(d, name))
    shutil.rmtree(os.path.join(d, "1_Pooling"))
    m = convert.load_model(d)
    assert (m.pooling, m.normalize, m.max_seq_length) == ("mean", False, 64)
    texts = [str(t) for t in _reference(family)["texts"]]
    ours = evaluate.encode(m, texts, batch_size=8, progress=False)
    assert np.abs(ours - _reference(family)["embeddings"]).max() <= TOL


def test_unsupported_model_type_is_named():
    with pytest.raises(
        convert.ModelFolderError, match=r"model_type 'xlm-roberta' is not supported"
    ):
        convert.config_from_hf({"model_type": "xlm-roberta", "hidden_size": 32}, "x/config.json")
    with pytest.raises(convert.ModelFolderError, match=r"model_type None is not supported"):
        convert.config_from_hf({"hidden_size": 32}, "x/config.json")
