"""sweep.py and results.py: grids and named cells, the results table and its verdicts, and a
two-cell smoke sweep end to end (killed from outside, then resumed without redoing finished
cells)."""

import fcntl
import gzip
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import results
import sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_grid_is_a_cartesian_product_with_tuple_values():
    cells = sweep.parse_grid("batch_size=8,32;data.bucket_lengths=(32,64),(64,128)")
    assert [c.overrides for c in cells] == [
        "batch_size=8,data.bucket_lengths=(32,64)",
        "batch_size=8,data.bucket_lengths=(64,128)",
        "batch_size=32,data.bucket_lengths=(32,64)",
        "batch_size=32,data.bucket_lengths=(64,128)",
    ]
    assert [c.name for c in cells] == [c.overrides for c in cells]
    # A ';' inside quotes belongs to the value.
    (cell,) = sweep.parse_grid("init_from='a;b'")
    assert cell.overrides == "init_from='a;b'"
    with pytest.raises(sweep.SweepError, match="not 'field=value1"):
        sweep.parse_grid("batch_size")


def test_named_cells():
    cells = sweep.parse_cells(
        "base:; batch 8 : batch_size=8, lr=1e-5;tuple:data.bucket_lengths=(16,32)"
    )
    assert [(c.name, c.overrides) for c in cells] == [
        ("base", ""),
        ("batch 8", "batch_size=8,lr=1e-5"),
        ("tuple", "data.bucket_lengths=(16,32)"),
    ]
    with pytest.raises(sweep.SweepError, match="not 'name:field"):
        sweep.parse_cells("batch_size=8")


def _runs(tmp_path, cells, seeds=(0, 1), evals=None):
    evals = [os.path.join(ROOT, "sample_data", "stsb", "dev.tsv.gz")] if evals is None else evals
    return sweep.build_runs("configs/base.py:smoke", cells, seeds, str(tmp_path), evals, "cc")


def test_runs_resolve_overrides_seeds_and_eval(tmp_path):
    cells = sweep.parse_cells("a:;b:batch_size=8,data.bucket_lengths=(16,32)")
    runs = _runs(tmp_path, cells)
    assert [(r.cell.name, r.seed) for r in runs] == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    assert runs[3].dir == str(tmp_path / "cells" / "b" / "seed_1")
    c = sweep.resolve_config(runs[3].spec)
    assert (c.batch_size, tuple(c.data.bucket_lengths), c.seed) == (8, (16, 32), 1)
    assert c.total_steps == 12  # the :smoke variant underneath
    assert c.eval.sts_files == (os.path.join(ROOT, "sample_data", "stsb", "dev.tsv.gz"),)
    assert c.eval.retrieval_dirs == ()
    assert c.compilation_cache_dir == str(tmp_path / "cc")  # one cache for every cell
    folder = os.path.join(ROOT, "sample_data", "retrieval", "scifact")
    c = sweep.resolve_config(_runs(tmp_path, cells[:1], evals=[folder])[0].spec)
    assert (c.eval.sts_files, c.eval.retrieval_dirs) == ((), (folder,))


def test_bad_sweeps_fail_before_training_naming_the_cell(tmp_path):
    with pytest.raises(ValueError, match="cell 'b'.*unknown config field 'no_such'"):
        _runs(tmp_path, sweep.parse_cells("a:;b:no_such=1"))
    with pytest.raises(sweep.SweepError, match="seed comes from --seeds"):
        _runs(tmp_path, sweep.parse_cells("a:seed=3"))
    with pytest.raises(sweep.SweepError, match="unique"):
        _runs(tmp_path, sweep.parse_cells("a:;a:lr=1.0"))
    with pytest.raises(sweep.SweepError, match="nothing to evaluate"):
        _runs(tmp_path, sweep.parse_cells("a:"), evals=[])
    with pytest.raises(sweep.SweepError, match="does not exist"):
        _runs(tmp_path, sweep.parse_cells("a:"), evals=["/no/such/file.tsv"])


def test_records_define_the_same_cell_in_another_clone(tmp_path):
    """cell.json holds the config relative to the checkout: a clone elsewhere, given a finished
    run's records, sees the same cell; an absolute path inside this checkout means it too."""
    (run,) = _runs(tmp_path, sweep.parse_cells("a:"), seeds=(0,))
    assert run.spec["config"] == "configs/base.py:smoke"
    # eval tasks inside the repository are recorded relative to it, and read as its files; the
    # compilation cache (under tmp_path, outside the repository) stays absolute
    assert run.spec["eval"] == ["sample_data/stsb/dev.tsv.gz"]
    assert run.spec["compilation_cache"] == str(tmp_path / "cc")
    c = sweep.resolve_config(run.spec)
    assert c.eval.sts_files == (os.path.join(ROOT, "sample_data", "stsb", "dev.tsv.gz"),)
    assert c.compilation_cache_dir == str(tmp_path / "cc")
    sweep.check_spec(run)
    with open(os.path.join(run.dir, sweep.SPEC)) as f:
        spec = json.load(f)
    spec["config"] = os.path.join(ROOT, "configs", "base.py") + ":smoke"  # as recorded before
    with open(os.path.join(run.dir, sweep.SPEC), "w") as f:
        json.dump(spec, f)
    sweep.check_spec(run)
    # A finished run's result.json, its task relative to the repository as make_record writes it
    # (absolute, as recorded before: the same): finished in any clone.
    task = os.path.join(ROOT, "sample_data", "stsb", "dev.tsv.gz")
    assert run.tasks == (task,)
    for recorded in ("sample_data/stsb/dev.tsv.gz", task):
        with open(os.path.join(run.dir, sweep.RESULT), "w") as f:
            json.dump({"evals": [{"task": recorded, "metric": "spearman_cosine", "score": 1}]}, f)
        assert sweep.finished(run) is not None
    with open(os.path.join(run.dir, sweep.RESULT), "w") as f:
        json.dump({"evals": [{"task": "/elsewhere/dev.tsv.gz", "metric": "m", "score": 1}]}, f)
    assert sweep.finished(run) is None
    spec["config"] = "/elsewhere/configs/base.py:smoke"  # another file: another cell
    with open(os.path.join(run.dir, sweep.SPEC), "w") as f:
        json.dump(spec, f)
    with pytest.raises(sweep.SweepError, match="different definition"):
        sweep.check_spec(run)


def test_a_changed_cell_definition_is_an_error(tmp_path):
    (run,) = _runs(tmp_path, sweep.parse_cells("a:lr=1e-3"), seeds=(0,))
    sweep.check_spec(run)
    sweep.check_spec(run)  # same definition: fine
    (changed,) = _runs(tmp_path, sweep.parse_cells("a:lr=2e-3"), seeds=(0,))
    with pytest.raises(sweep.SweepError, match="different definition.*lr=1e-3.*lr=2e-3"):
        sweep.check_spec(changed)


def test_a_cell_trains_on_the_devices_main_py_would_use(tmp_path, monkeypatch):
    """run_cell splits the CPU into host devices as main.py does (before JAX computes), so a
    sweep's cell trains and evaluates as the same config run by main.py does."""
    import distributed

    (run,) = _runs(tmp_path, sweep.parse_cells("a:"), seeds=(0,))
    sweep.check_spec(run)

    class Called(Exception):
        pass

    def use_host_devices(*args, **kwargs):
        raise Called

    monkeypatch.setattr(distributed, "use_host_devices", use_host_devices)
    with pytest.raises(Called):
        sweep.run_cell(run.dir)
    assert not os.path.exists(os.path.join(run.dir, "metrics.jsonl"))  # before any training


# ----------------------------------------------------------------------------- end to end


def _metrics(run_dir):
    return results.read_jsonl(os.path.join(run_dir, "metrics.jsonl"))


def _locked(run_dir):
    """The pid in a cell's lock file while a process holds the lock (gone when it dies)."""
    path = os.path.join(run_dir, sweep.LOCK)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            return int(f.read().strip())
    return None


def test_machine_lock_waits_for_its_holder(tmp_path, capsys):
    import threading

    path = str(tmp_path / "machine.lock")
    held = open(path, "a+")  # another job holding the lock (flock: per open file)
    fcntl.flock(held, fcntl.LOCK_EX)
    entered = threading.Event()

    def run():
        with sweep.machine_lock(path):
            entered.set()

    t = threading.Thread(target=run)
    t.start()
    assert not entered.wait(0.5), "entered while another holder had the lock"
    held.close()  # released
    assert entered.wait(10)
    t.join()
    assert "waiting for the machine lock" in capsys.readouterr().out
    with sweep.machine_lock(""):  # no lock: nothing to wait for
        pass


@pytest.mark.slow
def test_smoke_sweep_killed_and_resumed(tmp_path):
    sts = tmp_path / "sts.tsv"
    with gzip.open(os.path.join(ROOT, "sample_data", "stsb", "dev.tsv.gz"), "rt") as f:
        sts.write_text("".join(next(f) for _ in range(41)))  # header + 40 pairs
    workdir = tmp_path / "sweep"
    cmd = [
        sys.executable,
        os.path.join(ROOT, "sweep.py"),
        "--config=configs/base.py:smoke",
        "--cells=short:total_steps=4;long:total_steps=12",
        "--seeds=0",
        f"--workdir={workdir}",
        f"--eval={sts}",
        f"--compilation_cache={os.environ.get('JAX_COMPILATION_CACHE_DIR', '')}",
    ]
    short, long = workdir / "cells" / "short" / "seed_0", workdir / "cells" / "long" / "seed_0"
    # The 12-step cell stops itself after step 6 (checkpoint at step 4): the first sweep runs
    # through tests/fixtures/fault_sweep.py, whose cells get a SIGSTOP hook in main.train; the
    # 4-step cell never gets there. Then the sweep is killed from outside.
    faulty = [
        cmd[0],
        os.path.join(ROOT, "tests", "fixtures", "fault_sweep.py"),
        "--fault=step@6:SIGSTOP",
    ]
    proc = subprocess.Popen(
        faulty + cmd[2:], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.time() + 600
        while not any(r.get("step") == 5 and "loss" in r for r in _metrics(long)):
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.time() < deadline
            time.sleep(0.05)
        assert (short / sweep.RESULT).exists()  # the first cell finished before the second began
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # The cell's process dies with the sweep (PR_SET_PDEATHSIG), releasing its lock.
        deadline = time.time() + 60
        while _locked(long):
            assert time.time() < deadline, "the cell outlived its killed sweep"
            time.sleep(0.05)
    finally:
        proc.kill()
        if pid := _locked(long):
            os.kill(pid, signal.SIGKILL)
    assert not (long / sweep.RESULT).exists()
    assert sorted(os.listdir(long / "checkpoints")) == [f"{4:09d}"]
    before = {p: os.stat(short / p).st_mtime_ns for p in ("metrics.jsonl", sweep.RESULT)}
    short_metrics = (short / "metrics.jsonl").read_text()

    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "1 of 2 runs already finished: skipped" in r.stdout
    # The finished cell was not touched; the other resumed from its checkpoint.
    assert {p: os.stat(short / p).st_mtime_ns for p in before} == before
    assert (short / "metrics.jsonl").read_text() == short_metrics
    assert (short / sweep.LOG).read_text().count("--- ") == 1  # launched once
    assert "resuming from step 4" in (long / sweep.LOG).read_text()

    got = [json.loads(x) for x in (workdir / "results.jsonl").read_text().splitlines()]
    assert [(g["name"], g["seed"], g["steps"]) for g in got] == [("short", 0, 4), ("long", 0, 12)]
    for g, run_dir in zip(got, (short, long), strict=True):
        # Each score is the cell's own final evaluation, as its metrics.jsonl records it.
        own = [m["eval"] for m in _metrics(run_dir) if "eval" in m and m["step"] == g["steps"]]
        assert g["evals"] == own and len(own) == 1 and own[0]["task"] == str(sts)
        assert g["scores"] == {f"{sts} spearman_cosine": own[0]["score"]}
        assert g["train_wall_s"] > 0 and g["pairs_per_s"] > 0
    assert got[1]["attempts"] == 2  # killed once, resumed once
    assert len(results.read_jsonl(str(long / sweep.ATTEMPTS))) == 2
    assert len(results.read_jsonl(str(short / sweep.ATTEMPTS))) == 1
    md = (workdir / "results.md").read_text()
    assert "| short | `total_steps=4` | 1/1 |" in md and "| long | `total_steps=12` | 1/1 |" in md
    assert (workdir / "results.png").stat().st_size > 0
