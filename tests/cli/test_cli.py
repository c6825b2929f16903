"""The ``kmr`` dispatcher (keras_maskrcnn.cli): subcommands forward to their modules' flags, bad
configs are one line and exit status 2 for every subcommand, --list-configs, weights taken
from beside a run's or a conversion's config.yaml, the unrelated-distribution check, and the
frictions it removed (progress on synthetic, no parallel_iterations warning at build)."""
import logging
import os
import subprocess
import sys
from importlib import metadata

import pytest

from keras_maskrcnn import cli
from keras_maskrcnn.cli import dispatch
from keras_maskrcnn.cli.weights import resolve_weights, weights_beside
from support import ROOT

# a flag of each subcommand's own parser, which its --help must show through kmr
OWN_FLAG = {"train": "--no-export", "evaluate": "--max-images", "predict": "--score-threshold",
            "export": "--full-masks", "convert": "torchvision", "tfrecord": "--shards",
            "synthetic": "--max-objects", "demo": "--image"}
BAD_CONFIG = {  # argv whose config has an unknown key, per subcommand
    "train": ["--config", "tiny", "--set", "train.total_stepz=3"],
    "evaluate": ["--config", "tiny", "--weights", "w.weights.h5", "--set", "eval.max_imagez=3"],
    "export": ["--config", "tiny", "--weights", "w.weights.h5", "--output", "x",
               "--set", "model.backbone.nmae=resnet18"],
    "demo": ["--config", "no_such_config"],
}


def _env():
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("KMR_TRACEBACK", None)
    return env


def test_every_issue_subcommand_is_there():
    assert set(cli.COMMANDS) == set(OWN_FLAG)


@pytest.mark.parametrize("command", sorted(OWN_FLAG))
def test_subcommand_help_is_the_modules_own(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    assert OWN_FLAG[command] in capsys.readouterr().out


def test_usage_unknown_subcommand_and_version(capsys):
    assert cli.main([]) == 2 and "subcommands:" in capsys.readouterr().err
    assert cli.main(["--help"]) == 0 and "train" in capsys.readouterr().out
    assert cli.main(["trian", "--config", "x"]) == 2
    err = capsys.readouterr().err
    assert "unknown subcommand 'trian'" in err and "did you mean 'train'" in err
    assert cli.main(["--version"]) == 0
    from keras_maskrcnn import __version__
    assert capsys.readouterr().out.strip() == f"keras3-maskrcnn {__version__}"


def test_list_configs_from_an_unrelated_directory_without_tensorflow(tmp_path):
    code = ("import sys; from keras_maskrcnn.cli import main; rc = main(['train', "
            "'--list-configs']); assert 'tensorflow' not in sys.modules; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    names = proc.stdout.split()
    assert "shapes" in names and "detectron2/mask_rcnn_R_50_FPN_3x" in names
    assert "yolact_r50_fpn_coco" in names and "maskrcnn_r50_fpn_coco" in names


def test_python_dash_m_is_the_same_program(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "keras_maskrcnn", "train", "--config", "tiny",
                           "--set", "train.total_steps=4"], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("kmr train: error: ")
    assert "train.lr_decay_steps: must be in [1, 4], got 8" in proc.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()


def test_train_py_wrapper_prints_config_errors_as_one_line(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--config",
                           "shapes", "--set", "train.batch_sise=2"], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("train.py: error: ") and "'train.batch_size'" in proc.stderr


@pytest.mark.parametrize("command", sorted(BAD_CONFIG))
def test_config_errors_are_one_line_and_status_2(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w.weights.h5").write_bytes(b"")
    assert cli.main([command, *BAD_CONFIG[command]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"kmr {command}: error: "), err
    key = {"train": "train.total_stepz", "evaluate": "eval.max_imagez",
           "export": "model.backbone.nmae", "demo": "no_such_config"}[command]
    assert key in err


def test_predict_config_error_is_an_argparse_error(tmp_path, capsys):
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    with pytest.raises(SystemExit) as e:
        cli.main(["predict", "--config", "tiny", "--input", str(image), "--output",
                  str(tmp_path / "o.png"), "--set", "model.num_clases=3"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "model.num_clases" in err


def test_traceback_on_request(monkeypatch):
    monkeypatch.setenv("KMR_TRACEBACK", "1")
    from keras_maskrcnn.config import ConfigError
    with pytest.raises(ConfigError):
        cli.main(["train", "--config", "tiny", "--set", "train.total_stepz=3"])


def test_weights_beside_a_config(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("train: {seed: 1}\n")
    with pytest.raises(FileNotFoundError, match="no model.weights.h5 next to the config"):
        resolve_weights(str(run / "config.yaml"))
    assert weights_beside(str(run / "config.yaml")) is None
    (run / "model.weights.h5").write_bytes(b"")
    assert resolve_weights(str(run / "config.yaml")) == str(run / "model.weights.h5")
    (tmp_path / "other.weights.h5").write_bytes(b"")
    assert resolve_weights(str(run / "config.yaml"), str(tmp_path / "other.weights.h5")) == str(
        tmp_path / "other.weights.h5")  # given weights win
    with pytest.raises(FileNotFoundError, match="--weights .*missing.h5: no such file"):
        resolve_weights(str(run / "config.yaml"), str(tmp_path / "missing.h5"))
    with pytest.raises(FileNotFoundError, match="packaged|next to the config"):
        resolve_weights("shapes")  # the package holds configs, not weights


def test_export_without_weights_names_what_is_missing(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("train: {seed: 1}\n")
    assert cli.main(["export", "--config", str(tmp_path / "config.yaml"),
                     "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no model.weights.h5 next to the config" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("version,refused", [("0.2.2", True), ("0.1.0.dev0", False)])
def test_refuses_to_start_beside_the_unrelated_distribution(version, refused, monkeypatch,
                                                            capsys):
    real = metadata.version

    def fake_version(name):
        return version if name == dispatch.OLD_DISTRIBUTION else real(name)

    monkeypatch.setattr(metadata, "version", fake_version)
    assert cli.main(["train", "--list-configs"]) == (2 if refused else 0)
    out = capsys.readouterr()
    if refused:
        assert "unrelated distribution 'keras-maskrcnn' 0.2.2" in out.err
        assert "pip uninstall" in out.err and out.out == ""
    else:
        assert "shapes" in out.out


def test_synthetic_shows_progress(tmp_path, capsys):
    assert cli.main(["synthetic", "--output", str(tmp_path / "d"), "--train", "3", "--val",
                     "2", "--image-size", "64"]) == 0
    err = capsys.readouterr().err
    assert "writing train" in err and "3/3" in err and "writing val" in err and "2/2" in err
    assert (tmp_path / "d" / "annotations" / "instances_val.json").is_file()


def test_no_parallel_iterations_warning_when_keypoints_decode_eagerly():
    """Model build calls the model eagerly; the keypoint decoder's map_fn warned each time."""
    import tensorflow as tf
    from tensorflow.python.platform import tf_logging

    from keras_maskrcnn.ops.keypoints import heatmaps_to_keypoints

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = tf.get_logger()
    logger.addHandler(handler)
    try:
        tf_logging._log_counter_per_token.clear()  # log_first_n: once per call site
        heatmaps_to_keypoints(tf.zeros([1, 2, 4, 8, 8]), tf.constant([[[0., 0, 10, 10],
                                                                       [2, 2, 9, 12]]]))
        ours = [r.getMessage() for r in records]
        tf_logging._log_counter_per_token.clear()
        tf.map_fn(lambda x: x, tf.zeros([2]), parallel_iterations=4)  # the control: it warns
        control = [r.getMessage() for r in records[len(ours):]]
    finally:
        logger.removeHandler(handler)
    assert not any("parallel_iterations" in m for m in ours), ours
    assert any("parallel_iterations" in m for m in control), control


def test_print_config_writes_a_loadable_whole_config(tmp_path, capsys):
    from keras_maskrcnn.config import load_config

    assert cli.main(["train", "--config", "shapes", "--print-config", "--set",
                     "train.seed=3"]) == 0
    path = tmp_path / "mine.yaml"
    path.write_text(capsys.readouterr().out)
    assert load_config(str(path)) == load_config("shapes", ["train.seed=3"])


def test_low_memory_restarts_only_a_command_line_process(monkeypatch):
    """``--low-memory`` re-executes the process (huge pages) only when its arguments are the
    process' own command line (``kmr train ...`` / ``python train.py ...``), not when a caller
    passes them to ``main`` in Python."""
    from keras_maskrcnn.cli.train import is_process_command_line

    args = ["--config", "tiny", "--low-memory"]
    monkeypatch.setattr(sys, "orig_argv", ["python", "/venv/bin/kmr", "train", *args])
    assert is_process_command_line(args) and is_process_command_line(None)
    monkeypatch.setattr(sys, "orig_argv", ["python", "-m", "pytest", "tests"])
    assert not is_process_command_line(args) and not is_process_command_line([])


def test_train_py_refuses_beside_the_unrelated_distribution_too(monkeypatch, capsys):
    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: "0.2.2"
                        if name == dispatch.OLD_DISTRIBUTION else real(name))
    assert cli.run("train", ["--list-configs"], prog="train.py") == 2
    assert capsys.readouterr().err.startswith("train.py: error: the unrelated distribution")
