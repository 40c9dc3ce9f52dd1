"""Every entry point answers bad input with one clear line and writes nothing.

One table over the CLIs (main, apps, data in this process; evaluate and convert, whose flags
exist only when they run as programs, and main's `--config.FIELD=` flags, which ml_collections
reads from sys.argv, as subprocesses marked slow). Each row asserts the exit status, that the
message names the file (and line or field) and the reason, and that no output file was created
or changed. The tiny models are copies of tests/fixtures/tiny_bert with one thing broken.
"""

import gzip
import json
import os
import shutil
import subprocess
import sys

import pytest
import safetensors.numpy
from absl import flags

import apps
import checkpoint
import data
import main
import runconfig
from configs import base

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "fixtures", "tiny_bert")


# ----------------------------------------------------------------------------- helpers


def _snapshot(paths) -> dict:
    """Every file under each path, with its bytes (None for a path that does not exist)."""
    out = {}
    for top in paths:
        if not os.path.exists(top):
            out[top] = None
        elif os.path.isfile(top):
            with open(top, "rb") as f:
                out[top] = f.read()
        else:
            for dirpath, _, names in os.walk(top):
                for n in names:
                    with open(os.path.join(dirpath, n), "rb") as f:
                        out[os.path.join(dirpath, n)] = f.read()
            out[top] = "folder"
    return out


def _refused(run, outputs, parts, capsys=None):
    """Runs a CLI (in this process: SystemExit; else a CompletedProcess); asserts exit status
    1, one `error:` line holding every part, and that nothing under `outputs` changed."""
    before = _snapshot(outputs)
    if capsys is not None:
        with pytest.raises(SystemExit) as e:
            run()
        code = e.value.code
        status, text = (1, code) if isinstance(code, str) else (code, capsys.readouterr().err)
    else:
        r = run()
        status, text = r.returncode, r.stderr
    assert status == 1, text[-3000:]
    errors = [ln for ln in text.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, text[-3000:]
    for part in parts:
        assert part in errors[0], (part, errors[0])
    assert "Traceback" not in text
    assert _snapshot(outputs) == before


def _tiny(tmp_path, name="model"):
    folder = tmp_path / name
    shutil.copytree(TINY, folder)
    return folder


def _edit_tensors(folder, edit):
    path = folder / "model.safetensors"
    tensors = safetensors.numpy.load_file(str(path))
    edit(tensors)
    safetensors.numpy.save_file(tensors, str(path))


def _truncate(path):
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])


# ----------------------------------------------------------------------------- main


def _run_main(*args):
    """main.py's CLI in this process; its flags exist for the call only (they would clash with
    other CLIs' flags)."""
    known = set(flags.FLAGS)
    main.define_flags()
    try:
        flags.FLAGS.unparse_flags()
        main.main(main.parse_flags(["main.py", *args]))
    finally:
        for name in set(flags.FLAGS) - known:
            delattr(flags.FLAGS, name)


def _config_json_workdir(tmp_path):
    """A workdir a smoke run left: run_config.json and a checkpoint folder."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    runconfig.save(str(workdir), base.get_config("smoke"), 0)
    os.makedirs(workdir / checkpoint.CHECKPOINTS / f"{4:09d}" / "model")
    (workdir / checkpoint.CHECKPOINTS / f"{4:09d}" / "state.json").write_text("{}")
    return workdir


def _bad_sts(tmp_path):
    path = tmp_path / "sts.tsv"
    path.write_text("sentence1\tsentence2\tscore\na\tb\t1\nc\td\thigh\n")
    return path


def _junk_data(tmp_path):
    folder = tmp_path / "junk_data"
    folder.mkdir()
    (folder / "junk.jsonl").write_bytes(b'{"oops\n["one"]\n')
    return folder


MAIN_CASES = {
    # case: (config argument after 'smoke,' given tmp_path, parts of the message)
    "int field": (lambda t: "batch_size=abc", ["config field batch_size", "'abc'"]),
    "float field": (lambda t: "lr=fast", ["config field lr", "'fast'"]),
    "bool field": (lambda t: "loss.symmetric=maybe", ["config field loss.symmetric", "maybe"]),
    "str field": (lambda t: "model.pooling=3", ["config field model.pooling", "3"]),
    "tuple field": (
        lambda t: "data.bucket_lengths=(16,'x')",
        ["config field data.bucket_lengths", "should be a tuple of int"],
    ),
    "unknown field": (lambda t: "loss.temperature=2", ["unknown config field 'loss.temperature'"]),
    "out of range": (lambda t: "batch_size=12", ["config field batch_size", "multiple of the 8"]),
    "truncated init_from": (
        lambda t: f"init_from={_truncated_model(t)}",
        ["model/model.safetensors", "not a valid safetensors file"],
    ),
    "no valid line": (
        lambda t: f"data.dir={_junk_data(t)}",
        ["junk_data/junk.jsonl has no valid line", "junk.jsonl:1 (malformed_json)"],
    ),
    "bad sts score": (
        lambda t: f"eval.sts_files=('{_bad_sts(t)}',)",
        ["config field eval.sts_files", "sts.tsv:3: score 'high' is not a number"],
    ),
    "data_config not json": (
        lambda t: f"data.config_file={_write(t / 'data_config.json', '[{')}",
        ["data_config.json: not valid JSON"],
    ),
    "resume incompatible": (
        lambda t: "model.hidden_size=64",
        ["workdir", "model.hidden_size: 32 -> 64", "use a new workdir"],
    ),
}


def _truncated_model(tmp_path):
    folder = _tiny(tmp_path)
    _truncate(folder / "model.safetensors")
    return folder


def _write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", sorted(MAIN_CASES))
def test_main(tmp_path, capsys, case):
    arg, parts = MAIN_CASES[case]
    if case == "resume incompatible":
        workdir = _config_json_workdir(tmp_path)
        parts = [*parts, str(workdir)]
    else:
        workdir = tmp_path / "run"
    config = f"--config={ROOT}/configs/base.py:smoke,{arg(tmp_path)}"
    _refused(lambda: _run_main(config, f"--workdir={workdir}"), [workdir], parts, capsys)


@pytest.mark.slow
@pytest.mark.parametrize(
    "flag, parts",
    [
        ("--config.batch_size=abc", ["--config.batch_size=abc", "invalid literal for int()"]),
        ("--config.nope=1", ["--config.nope=1: no such config field"]),
        ("--config.data.bucket_lengths=abc", ["data.bucket_lengths", "a tuple of int"]),
    ],
)
def test_main_config_flags(tmp_path, flag, parts):
    workdir = tmp_path / "run"
    cmd = [sys.executable, "main.py", "--config=configs/base.py:smoke", f"--workdir={workdir}"]
    run = lambda: subprocess.run([*cmd, flag], cwd=ROOT, capture_output=True, text=True)  # noqa: E731
    _refused(run, [workdir], parts)


# ----------------------------------------------------------------------------- apps


def _apps(*args):
    flags.FLAGS.unparse_flags()
    apps.main(flags.FLAGS(["apps.py", *args]))


def _texts(tmp_path, lines=("a cat", "a dog", "the sky")):
    path = tmp_path / "texts.txt"
    path.write_text("".join(t + "\n" for t in lines))
    return path


def _missing_tensor(t):
    _edit_tensors(t, lambda x: x.pop("encoder.layer.1.output.dense.weight"))
    return ["model.safetensors: tensor 'encoder.layer.1.output.dense.weight' is missing"]


def _extra_tensor(t):
    def add(x):
        x["encoder.layer.2.attention.self.query.weight"] = x[
            "encoder.layer.1.attention.self.query.weight"
        ]

    _edit_tensors(t, add)
    return [
        "model.safetensors: tensor 'encoder.layer.2.attention.self.query.weight' is not part",
        "config.json describes (bert, 2 layers)",
    ]


def _wrong_shape(t):
    def cut(x):
        x["encoder.layer.0.intermediate.dense.weight"] = x[
            "encoder.layer.0.intermediate.dense.weight"
        ][:40]

    _edit_tensors(t, cut)
    return ["model.safetensors: tensor 'encoder.layer.0.intermediate.dense.weight' has shape"]


def _truncated(t):
    _truncate(t / "model.safetensors")
    return ["model.safetensors: not a valid safetensors file"]


def _bad_tokenizer(t):
    (t / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    return ["tokenizer.json: not a valid tokenizer file"]


def _bad_config(t):
    (t / "config.json").write_text("{not json")
    return ["config.json: not valid JSON"]


MODEL_FOLDER_CASES = {
    "missing tensor": _missing_tensor,
    "extra tensor": _extra_tensor,
    "wrong-shape tensor": _wrong_shape,
    "truncated safetensors": _truncated,
    "tokenizer.json does not parse": _bad_tokenizer,
    "config.json does not parse": _bad_config,
}


@pytest.mark.parametrize("case", sorted(MODEL_FOLDER_CASES))
def test_apps_model_folder(tmp_path, capsys, case):
    folder = _tiny(tmp_path)
    parts = MODEL_FOLDER_CASES[case](folder)
    out, texts = tmp_path / "emb.npy", _texts(tmp_path)
    args = ["embed", f"--model={folder}", f"--input={texts}", f"--output={out}"]
    _refused(lambda: _apps(*args), [out, folder], [str(folder), *parts], capsys)


def test_apps_input_not_utf8(tmp_path, capsys):
    src = tmp_path / "texts.txt"
    src.write_bytes(b"fine\ncaf\xe9 au lait\n")
    out = tmp_path / "emb.npy"
    run = lambda: _apps("embed", f"--model={TINY}", f"--input={src}", f"--output={out}")  # noqa: E731
    _refused(run, [out], [f"{src}:2: not UTF-8 text", "column 4"], capsys)


@pytest.fixture
def index(tmp_path):
    folder = tmp_path / "index"
    _apps("search", "index", f"--model={TINY}", f"--input={_texts(tmp_path)}", f"--index={folder}")
    return folder


def test_apps_index_of_another_model(tmp_path, capsys, index):
    other = _tiny(tmp_path, "other")

    def nudge(tensors):  # one weight nudged: the same architecture, another model
        tensors["embeddings.LayerNorm.bias"] = tensors["embeddings.LayerNorm.bias"] + 0.01

    _edit_tensors(other, nudge)
    run = lambda: _apps("search", "query", f"--index={index}", f"--model={other}", "a bird")  # noqa: E731
    _refused(run, [index], [str(index), "the index was built with model"], capsys)
    more = _texts(tmp_path, ["one more"])
    args = ["search", "index", f"--model={other}", f"--input={more}", f"--index={index}"]
    _refused(lambda: _apps(*args), [index], [str(index), "the index was built with model"], capsys)


def test_apps_index_with_truncated_embeddings(tmp_path, capsys, index):
    _truncate(index / apps.INDEX_EMB)
    parts = [str(index / apps.INDEX_EMB), "cannot read", "rebuild the index"]
    run = lambda: _apps("search", "query", f"--index={index}", f"--model={TINY}", "a bird")  # noqa: E731
    _refused(run, [index], parts, capsys)
    more = _texts(tmp_path, ["one more"])
    run = lambda: _apps("search", "index", f"--model={TINY}", f"--input={more}", f"--index={index}")  # noqa: E731
    _refused(run, [index], parts, capsys)


def test_apps_index_with_a_bad_docs_line(capsys, index):
    lines = (index / apps.INDEX_DOCS).read_text().splitlines()
    (index / apps.INDEX_DOCS).write_text("\n".join([lines[0], "{oops", *lines[2:]]) + "\n")
    run = lambda: _apps("search", "query", f"--index={index}", f"--model={TINY}", "a bird")  # noqa: E731
    _refused(run, [index], [f"{index / apps.INDEX_DOCS}:2: not valid JSON"], capsys)


def test_apps_cluster_with_too_many_clusters(tmp_path, capsys):
    texts = _texts(tmp_path)
    run = lambda: _apps("cluster", f"--model={TINY}", f"--input={texts}", "--k=10")  # noqa: E731
    _refused(run, [tmp_path], ["--k=10", "number of texts (3)"], capsys)


# ----------------------------------------------------------------------------- data


def test_data_missing_folder(tmp_path, capsys):
    run = lambda: data.main([f"--data={tmp_path}/nowhere", f"--tokenizer={TINY}"])  # noqa: E731
    _refused(run, [tmp_path], [f"data folder not found: {tmp_path}/nowhere"], capsys)


def test_data_config_with_a_bad_entry(tmp_path, capsys):
    path = tmp_path / "data_config.json"
    path.write_text(json.dumps([{"name": "a.jsonl", "lines": 3, "weight": "heavy"}]))
    work = tmp_path / "work"
    run = lambda: data.main([f"--data={path}", f"--tokenizer={TINY}", f"--workdir={work}"])  # noqa: E731
    _refused(run, [tmp_path], [str(path), "entry 0 should be", "'heavy'"], capsys)


def test_data_without_a_valid_line_caches_nothing(tmp_path, capsys):
    folder = _junk_data(tmp_path)
    work = tmp_path / "work"
    run = lambda: data.main([f"--data={folder}", f"--tokenizer={TINY}", f"--workdir={work}"])  # noqa: E731
    parts = [f"{folder}/junk.jsonl has no valid line", "junk.jsonl:2 (too_few_texts)"]
    _refused(run, [tmp_path], parts, capsys)


def test_data_bad_tokenizer(tmp_path, capsys):
    folder = _tiny(tmp_path)
    _bad_tokenizer(folder)
    run = lambda: data.main([f"--data={data.SAMPLE_DATA_DIR}", f"--tokenizer={folder}"])  # noqa: E731
    parts = [f"{folder}/tokenizer.json: not a valid tokenizer file"]
    _refused(run, [folder, data.SAMPLE_DATA_DIR], parts, capsys)


# ----------------------------------------------------------------------------- evaluate, convert


def _program(*args):
    return lambda: subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def _beir(tmp_path, queries=True, qrels_doc="d1"):
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    with gzip.open(folder / "corpus.jsonl.gz", "wt") as f:
        for i in range(3):
            f.write(json.dumps({"_id": f"d{i}", "title": "", "text": f"document {i}"}) + "\n")
    if queries:
        with gzip.open(folder / "queries.jsonl.gz", "wt") as f:
            f.write(json.dumps({"_id": "q1", "text": "a query"}) + "\n")
    (folder / "qrels" / "test.tsv").write_text(
        f"query-id\tcorpus-id\tscore\nq1\td0\t1\nq1\t{qrels_doc}\t1\n"
    )
    return folder


@pytest.mark.slow
def test_evaluate_sts_with_a_non_numeric_score(tmp_path):
    path = _bad_sts(tmp_path)
    run = _program("evaluate.py", f"--model={TINY}", f"--sts={path}")
    _refused(run, [tmp_path], [f"{path}:3: score 'high' is not a number"])


@pytest.mark.slow
def test_evaluate_qrels_naming_an_unknown_document(tmp_path):
    folder = _beir(tmp_path, qrels_doc="d9")
    run = _program("evaluate.py", f"--model={TINY}", f"--retrieval={folder}")
    parts = [f"{folder}/qrels/test.tsv:3: corpus-id 'd9' is not in {folder}/corpus.jsonl.gz"]
    _refused(run, [tmp_path], parts)


@pytest.mark.slow
def test_evaluate_beir_folder_without_queries(tmp_path):
    folder = _beir(tmp_path, queries=False)
    run = _program("evaluate.py", f"--model={TINY}", f"--retrieval={folder}")
    _refused(run, [tmp_path], [f"{folder}/queries.jsonl.gz: file not found"])


@pytest.mark.slow
def test_convert_model_folder_with_a_missing_tensor(tmp_path):
    folder = _tiny(tmp_path)
    parts = _missing_tensor(folder)
    out = tmp_path / "out"
    _refused(_program("convert.py", f"--model={folder}", f"--out={out}"), [out, folder], parts)


@pytest.mark.slow
def test_convert_into_a_folder_that_holds_files(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    run = _program("convert.py", f"--model={TINY}", f"--out={out}")
    _refused(run, [out], [f"--out {out}: already exists and is not empty"])
