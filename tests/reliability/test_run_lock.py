"""Two runs on one output_dir (issue 20, item 5): the second refuses with one line naming the
directory and the holder; a dead holder's lock is taken over, saying so; only the chief of a
multi-worker job locks. The holder is a separate process running training/lock.py itself."""
import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from keras_maskrcnn import run, training
from keras_maskrcnn.training import lock
from support.models import tiny_config

HOLDER = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("lock", sys.argv[1])
lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lock)  # the module alone: no TensorFlow in this process
with lock.output_dir_lock(sys.argv[2]):
    print("locked", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def holder(tmp_path):
    """A live process holding tmp_path/run's lock; yields (directory, process)."""
    directory = str(tmp_path / "run")
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, lock.__file__, directory], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "locked"
        yield directory, process
    finally:
        process.kill()
        process.wait(timeout=30)


def test_second_run_refuses_naming_the_directory_and_the_holder(holder):
    directory, process = holder
    with pytest.raises(lock.OutputDirInUse) as error:
        with lock.output_dir_lock(directory):
            pass
    message = str(error.value)
    assert "\n" not in message and directory in message
    assert f"pid {process.pid} on host {socket.gethostname()}" in message


def test_train_and_evaluate_refuses_before_any_work(holder, monkeypatch, capsys):
    """train.py's job: one ERROR line and exit code 1, before data or model are touched."""
    directory, process = holder

    def no_train(cfg):
        raise AssertionError("trained in a locked output_dir")

    monkeypatch.setattr(run, "train", no_train)
    cfg = tiny_config(**{"train.output_dir": directory})
    assert run.train_and_evaluate(cfg, run_evaluation=False, run_export=False) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("ERROR: ") and f"pid {process.pid}" in out[0]


def test_lock_of_a_killed_run_is_taken_over_saying_so(holder):
    directory, process = holder
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    messages = []
    with lock.output_dir_lock(directory, log=messages.append) as path:
        with open(path) as f:
            assert json.load(f)["pid"] == os.getpid()
    assert len(messages) == 1 and f"pid {process.pid}" in messages[0]
    assert "taking over" in messages[0]
    with open(path) as f:
        assert f.read() == ""  # released cleanly: the next run says nothing
    messages.clear()
    with lock.output_dir_lock(directory, log=messages.append):
        pass
    assert messages == []


def test_lock_is_reentrant_within_a_process(tmp_path):
    directory = str(tmp_path / "run")
    with lock.output_dir_lock(directory) as path:
        with lock.output_dir_lock(directory):
            pass
        with open(path) as f:
            assert json.load(f)["pid"] == os.getpid()  # still held after the inner release


@pytest.mark.parametrize("task,owner", [({"type": "chief", "index": 0}, True),
                                        ({"type": "worker", "index": 0}, False),
                                        ({"type": "worker", "index": 1}, False)])
def test_only_the_chief_of_a_multi_worker_job_locks(monkeypatch, task, owner):
    cluster = {"chief": ["localhost:1"], "worker": ["localhost:2", "localhost:3"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": task}))
    assert training.will_write_outputs("auto") == owner
    assert training.will_write_outputs("multi_worker") == owner
    assert training.will_write_outputs("default")  # one process: it writes


def test_worker_zero_writes_when_there_is_no_chief(monkeypatch):
    cluster = {"worker": ["localhost:2", "localhost:3"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster,
                                                "task": {"type": "worker", "index": 0}}))
    assert training.will_write_outputs("auto")
    monkeypatch.delenv("TF_CONFIG")
    assert training.will_write_outputs("auto")


def test_holder_module_is_standalone():
    """The holder above loads training/lock.py alone: it must import only the standard
    library (no TensorFlow: the lock is taken before anything heavy)."""
    import ast

    with open(lock.__file__) as f:
        tree = ast.parse(f.read())
    imported = {a.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for a in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= set(sys.stdlib_module_names), imported
