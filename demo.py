"""The seed's demo as a web page (Gradio): similarity, asymmetric QA, search / cluster, bias.

    python demo.py --models=M1[,NAME=M2...] [--index=DIR] [--host=127.0.0.1] [--port=7860]

Each M is anything convert.load_model accepts (a HF / sentence-transformers folder or a training
workdir), optionally named NAME=PATH; the models are loaded, and compiled for short texts, once at
start-up. --index is a search index made by `python apps.py search index` with one of the models;
without it, the SciFact titles in sample_data/ are indexed with the first model in the background
(into runs/demo-index-<fingerprint>/, resumed and reused by later launches) while the page serves.
The tabs are demo_tabs.py's functions over apps.py and bias.py. Models, index and templates come
only from this command line; a request holds texts and numbers, checked against the --max_*
limits; a bad one gets a message in the page (gr.Error), its traceback stays in this process's
log, and the server goes on. Needs `pip install -r requirements-demo.txt` (Gradio).
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from collections.abc import Sequence

from absl import app, flags, logging

import apps
import bias
import convert
import demo_tabs as tabs
import distributed
import evaluate

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
try:
    import gradio as gr
    import pandas as pd
except ImportError as e:
    sys.exit(f"error: the demo needs `pip install -r requirements-demo.txt` ({e})")

flags.DEFINE_list("models", None, "model folders or training workdirs, each PATH or NAME=PATH")
flags.DEFINE_string("host", "127.0.0.1", "address to serve on (0.0.0.0: every interface)")
flags.DEFINE_integer("port", 7860, "port to serve on")
flags.DEFINE_string("runs", os.path.join(tabs.HERE, "runs"), "where the default index is kept")
flags.DEFINE_integer("max_texts", 64, "limit: texts per request")
flags.DEFINE_integer("max_chars", 2000, "limit: characters per text")
flags.DEFINE_integer("max_k", 50, "limit: search hits per query (and hits clustered)")
flags.DEFINE_integer("max_clusters", 12, "limit: k of k-means")
flags.DEFINE_integer("max_sample", 1000, "limit: documents of the index clustered at once")
# --index (default: the SciFact titles, built here) and --templates are apps.py's flags.
flags.declare_key_flag("index")
flags.declare_key_flag("templates")

SIM_COLUMNS = ["model", "rank", "cosine", "text"]
QA_COLUMNS = ["model", "rank", "dot", "answer"]
HIT_COLUMNS = ["rank", "score", "id", "text"]
CLUSTER_COLUMNS = ["cluster", "size", "nearest", "id", "text"]
HITS, SAMPLE = "the hits of the query", "a random sample of the index"
NONE = "(none)"
EXPECTED = (tabs.InputError, apps.AppError, evaluate.DataFileError, convert.ModelFolderError)


def _guard(fn):
    """A handler whose errors become messages in the page, never a traceback."""

    @functools.wraps(fn)  # keeps the signature: Gradio reads the progress argument from it
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EXPECTED as e:
            raise gr.Error(str(e), print_exception=False) from None
        except Exception as e:
            logging.exception("request failed in %s", fn.__name__)
            raise gr.Error(
                f"the request failed ({type(e).__name__}: {e}); the server's log has the details",
                print_exception=False,
            ) from None

    return run


def index_status(demo: tabs.Demo) -> str:
    idx = demo.index
    if idx is None:
        return "No search index is served."
    text = f"Index `{idx.path}`: {len(idx.docs):,} documents, model **{idx.model}**"
    if idx.error is not None:
        return f"{text}. The build stopped: {idx.error}"
    if len(idx.docs) < idx.total:
        return f"{text}; building in the background: {len(idx.docs):,} of {idx.total:,} so far."
    return text + "."


def build_page(demo: tabs.Demo) -> gr.Blocks:
    """The four tabs; each button calls one handler below."""
    names, lim = list(demo.models), demo.limits

    def similarity(source, others, chosen):
        rows = tabs.ranking(demo, source, others, chosen, qa=False)
        return pd.DataFrame(rows, columns=SIM_COLUMNS), tabs.ranking_figure(rows, "cosine")

    def qa(question, answers, chosen):
        rows = tabs.ranking(demo, question, answers, chosen, qa=True)
        return pd.DataFrame(rows, columns=QA_COLUMNS), tabs.ranking_figure(rows, "dot product")

    def search(query, k):
        _, hits = tabs.search(demo, query, k)
        rows = [[r, round(h["score"], 4), h["id"], h["text"]] for r, h in enumerate(hits, 1)]
        return pd.DataFrame(rows, columns=HIT_COLUMNS), index_status(demo)

    def cluster(source, query, top_k, k, sample, seed):
        src = {HITS: "hits", SAMPLE: "sample"}.get(source, source)
        result = tabs.cluster(demo, src, query, top_k, k, sample, seed)
        table = pd.DataFrame(tabs.cluster_rows(result), columns=CLUSTER_COLUMNS)
        return tabs.cluster_figure(result), table, index_status(demo)

    def gender_bias(a, b, progress=gr.Progress(track_tqdm=True)):  # noqa: B008 (Gradio's way)
        chosen = [a] if b in (None, "", NONE, a) else [a, b]
        reports = {n: tabs.bias_report(demo, n) for n in tabs.chosen_models(demo, chosen)}
        columns = ["occupation", "female %"]
        for n in reports:
            columns += [f"{n}: male", f"{n}: female", f"{n}: margin"]
        figs = [bias.bias_figure(r, n) for n, r in reports.items()] + [None]
        table = pd.DataFrame(tabs.bias_rows(reports), columns=columns)
        return tabs.bias_summary(reports), figs[0], figs[1], table

    def tick():
        idx = demo.index
        building = idx is not None and idx.error is None and len(idx.docs) < idx.total
        return index_status(demo), gr.Timer(active=building)

    def table(columns, eid, widths):
        return gr.Dataframe(
            headers=columns,
            interactive=False,
            wrap=True,
            column_widths=widths,
            max_height=2000,  # every row rendered: the page scrolls, not the table
            elem_id=eid,
        )

    with gr.Blocks(title="Sentence embeddings demo", analytics_enabled=False) as page:
        gr.Markdown(
            f"# Sentence embeddings\nModels: {', '.join(f'**{n}**' for n in names)}. "
            f"Limits per request: {lim.texts} texts, {lim.chars:,} characters per text, "
            f"{lim.top_k} hits, {lim.clusters} clusters, {lim.sample:,} documents clustered."
        )
        with gr.Tab("Similarity", id="similarity"):
            source = gr.Textbox(
                value=tabs.SIMILARITY_EXAMPLE[0], label="Source text", elem_id="sim-source"
            )
            others = gr.Textbox(
                value="\n".join(tabs.SIMILARITY_EXAMPLE[1]),
                label="Texts to rank by cosine similarity, one per line",
                lines=6,
                elem_id="sim-others",
            )
            sim_models = gr.CheckboxGroup(names, value=names, label="Models", elem_id="sim-models")
            sim_go = gr.Button("Rank", variant="primary", elem_id="sim-go")
            with gr.Row():
                sim_table = table(SIM_COLUMNS, "sim-table", ["20%", "10%", "14%", "56%"])
                sim_plot = gr.Plot(format="png", show_label=False, elem_id="sim-plot")
        with gr.Tab("Asymmetric QA", id="qa"):
            question = gr.Textbox(value=tabs.QA_EXAMPLE[0], label="Question", elem_id="qa-question")
            answers = gr.Textbox(
                value="\n".join(tabs.QA_EXAMPLE[1]),
                label="Candidate answers, one per line (ranked by dot product)",
                lines=5,
                elem_id="qa-answers",
            )
            qa_models = gr.CheckboxGroup(names, value=names, label="Models", elem_id="qa-models")
            qa_go = gr.Button("Rank answers", variant="primary", elem_id="qa-go")
            with gr.Row():
                qa_table = table(QA_COLUMNS, "qa-table", ["20%", "10%", "14%", "56%"])
                qa_plot = gr.Plot(format="png", show_label=False, elem_id="qa-plot")
        with gr.Tab("Search / Cluster", id="search"):
            status = gr.Markdown(index_status(demo), elem_id="index-status")
            with gr.Row():
                query = gr.Textbox(
                    value=tabs.SEARCH_EXAMPLE, label="Query", scale=4, elem_id="search-query"
                )
                top_k = gr.Number(min(10, lim.top_k), precision=0, label="hits", elem_id="top-k")
            search_go = gr.Button("Search", variant="primary", elem_id="search-go")
            hits = table(HIT_COLUMNS, "search-table", ["8%", "10%", "12%", "70%"])
            with gr.Row():
                cl_source = gr.Radio([HITS, SAMPLE], value=HITS, label="Cluster", scale=2)
                cl_k = gr.Number(min(3, lim.clusters), precision=0, label="k", elem_id="cl-k")
                cl_sample = gr.Number(
                    min(200, lim.sample), precision=0, label="sample size", elem_id="cl-sample"
                )
                cl_seed = gr.Number(0, precision=0, label="seed", elem_id="cl-seed")
            cl_go = gr.Button("Cluster", elem_id="cluster-go")
            cl_plot = gr.Plot(format="png", show_label=False, elem_id="cluster-plot")
            cl_table = table(CLUSTER_COLUMNS, "cluster-table", ["9%", "7%", "9%", "11%", "64%"])
            building = demo.index is not None and len(demo.index.docs) < demo.index.total
            timer = gr.Timer(2, active=building)
        with gr.Tab("Gender bias", id="bias"):
            with gr.Row():
                bias_a = gr.Dropdown(names, value=names[0], label="Model", elem_id="bias-a")
                bias_b = gr.Dropdown(
                    [NONE, *names],
                    value=names[1] if len(names) > 1 else NONE,
                    label="Compared with",
                    elem_id="bias-b",
                )
            bias_go = gr.Button("Evaluate", variant="primary", elem_id="bias-go")
            bias_md = gr.Markdown(elem_id="bias-summary")
            with gr.Row():
                bias_plot_a = gr.Plot(format="png", show_label=False, elem_id="bias-plot-a")
                bias_plot_b = gr.Plot(format="png", show_label=False, elem_id="bias-plot-b")
            bias_table = gr.Dataframe(interactive=False, max_height=2000, elem_id="bias-table")

        sim_go.click(_guard(similarity), [source, others, sim_models], [sim_table, sim_plot])
        qa_go.click(_guard(qa), [question, answers, qa_models], [qa_table, qa_plot])
        search_go.click(_guard(search), [query, top_k], [hits, status])
        cl_inputs = [cl_source, query, top_k, cl_k, cl_sample, cl_seed]
        cl_go.click(_guard(cluster), cl_inputs, [cl_plot, cl_table, status])
        bias_outputs = [bias_md, bias_plot_a, bias_plot_b, bias_table]
        bias_go.click(_guard(gender_bias), [bias_a, bias_b], bias_outputs)
        timer.tick(tick, None, [status, timer], show_progress="hidden")
        page.load(tick, None, [status, timer], show_progress="hidden")  # a page opened later
    return page


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    f = flags.FLAGS
    distributed.use_host_devices()  # before any JAX computation: encoding uses every core
    if not f["verbosity"].present:  # JAX's INFO lines on request, as in the other CLIs
        logging.set_verbosity(logging.WARNING)
    if not f.models:
        raise app.UsageError("give --models=PATH[,NAME=PATH...]")
    limits = tabs.Limits(f.max_texts, f.max_chars, f.max_k, f.max_clusters, f.max_sample)
    try:
        models = {name: convert.load_model(path) for name, path in tabs.model_labels(f.models)}
        demo = tabs.Demo(models, None, f.templates, limits)
        bias.read_bias_templates(f.templates)  # a bad folder fails now, not at the first click
        todo = tabs.open_index(demo, f.index, f.runs)
    except EXPECTED as e:
        sys.exit(f"error: {e}")
    print(f"compiling {len(models)} model(s) for short texts ...", flush=True)
    tabs.warm_up(demo)
    if todo is not None:
        left = len(todo[1]) - len(demo.index.docs)
        print(
            f"indexing {left:,} SciFact titles into {todo[0]} in the background (the Search "
            "tab shows the progress; later launches resume and reuse it)",
            flush=True,
        )
        threading.Thread(target=tabs.build_default_index, args=(demo, *todo), daemon=True).start()
    if f.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {f.host}: whoever reaches this machine can use the demo")
    page = build_page(demo)
    page.queue(default_concurrency_limit=1, max_size=64)  # one request per button at a time
    page.launch(
        server_name=f.host,
        server_port=f.port,
        show_error=False,  # messages come from _guard; tracebacks stay in the log
        ssr_mode=False,  # server-side rendering would need Node
        mcp_server=False,
        pwa=False,
        enable_monitoring=False,
        footer_links=[],
    )


if __name__ == "__main__":
    app.run(main)
