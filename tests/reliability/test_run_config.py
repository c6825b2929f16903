"""Hostile config files and overrides (issue 20, items 6 and 7): alias bombs, self-references,
deep nesting and absurd integers are one-line ConfigErrors, quickly and in little memory."""
import os
import subprocess
import sys
import time

import pytest

from keras_maskrcnn import config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "configs", "tiny.yaml")


def _alias_bomb():
    """~0.5 KB of YAML under a valid key whose aliases expand to 9**9 (387 million) strings."""
    levels = ['&a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    levels += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    return "train: {output_dir: [" + ", ".join(levels) + "]}\n"


LOAD = """
import resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))  # main grew to gigabytes
from keras_maskrcnn import config
start = time.time()
try:
    config.load_config(sys.argv[1])
except config.ConfigError as e:
    print(f"{time.time() - start:.3f}")
    print(e)
"""


def test_yaml_alias_bomb_is_refused_within_a_second(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb())
    assert path.stat().st_size < 1024
    result = subprocess.run([sys.executable, "-c", LOAD, str(path)], capture_output=True,
                            text=True, timeout=30, env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.returncode == 0 and not result.stderr, result.stderr[-2000:]
    seconds, message = result.stdout.strip().split("\n")
    assert float(seconds) < 1.0
    assert message.startswith(f"{path}: ") and len(message) < 200
    assert "alias" in message[len(str(path)):]


@pytest.mark.parametrize("text,expected", [
    ("train: &x {output_dir: *x}\n", "alias"),  # before: RecursionError
    ("model: &m {num_classes: 3}\ninput: *m\n", "alias"),
    ("train: " + "[" * 200 + "]" * 200 + "\n", "nested deeper"),
])
def test_self_references_and_deep_nesting_are_config_errors(tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    start = time.time()
    with pytest.raises(config.ConfigError, match=expected) as error:
        config.load_config(str(path))
    assert time.time() - start < 1.0 and "\n" not in str(error.value)


def test_error_messages_show_values_briefly():
    long_list = "[" + ", ".join(["'" + "x" * 1000 + "'"] * 200) + "]"
    with pytest.raises(config.ConfigError) as error:
        config.load_config(TINY, overrides=[f"train.output_dir={long_list}"])
    assert "train.output_dir" in str(error.value) and len(str(error.value)) < 400
    with pytest.raises(config.ConfigError, match="train.batch_size: invalid YAML|"
                                                 "4300 digits"):
        config.load_config(TINY, overrides=["train.batch_size=" + "9" * 5000])


@pytest.mark.parametrize("override,expected", [
    ("train.total_steps=99999999999999999999", "int64"),  # before: accepted
    ("train.total_steps=2000000000", r"must be in \[1, 1000000000\]"),
    ("train.steps_per_epoch=10000000000", r"must be in \[1, 1000000000\]"),
    ("train.checkpoint_every=10000000000", r"must be in \[1, 1000000000\]"),
    ("train.batch_size=100000000", r"must be in \[1, 65536\]"),
    ("train.seed=99999999999", r"must be in \[0, 4294967295\]"),  # NumPy's seed is 32-bit
    ("model.num_classes=-99999999999999999999999", "int64"),
])
def test_absurd_integers_are_refused_by_the_schema(override, expected):
    key = override.split("=")[0]
    with pytest.raises(config.ConfigError, match=expected) as error:
        config.load_config(TINY, overrides=[override])
    assert key in str(error.value) and len(str(error.value)) < 300


def test_the_bounds_leave_real_schedules_alone():
    cfg = config.load_config(TINY, overrides=["train.total_steps=1000000000",
                                              "train.lr_decay_steps=[999999999]",
                                              "train.seed=4294967295", "train.batch_size=4096"])
    assert cfg.train.total_steps == 10**9
