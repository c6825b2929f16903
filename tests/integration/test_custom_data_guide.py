"""docs/custom_data.md, run: its command blocks are read from the markdown (so guide and test
cannot drift) and run in order from a shell, on a small synthetic COCO-format dataset with 3
categories (keras_maskrcnn.data.synthetic at 160 px) laid out where the guide says, from seeded
random COCO-sized checkpoints saved under the guide's file names:

- ```bash maskrcnn: torchvision maskrcnn_resnet50_fpn (91 classes) -> convert -> train.py
  fine-tunes to 4 classes -> evaluate.py -> predict -> export;
- ```bash yolact: the reference YOLACT ResNet-50 (81 classes, tests/support transcription);
- ```bash detectron2: a detectron2-layout mask_rcnn_R_50_FPN (81 classes, tests/support).

The only change to the guide's commands: ``train.py`` gets test-size ``--set`` overrides
appended (128-160 px images, 2 steps, fewer proposals). Each train log must carry exactly one
line naming the skipped class-specific layers. Slow (ResNet-50 models on a CPU).
"""
import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import support

ROOT = support.ROOT
GUIDE = os.path.join(ROOT, "docs", "custom_data.md")
TIMEOUT = 2400  # per command; a ResNet-50 export took > 20 min on 2 busy cores
STEPS = ["train.batch_size=1", "train.total_steps=2", "train.steps_per_epoch=2",
         "train.checkpoint_every=2", "train.warmup_steps=1", "train.lr_decay_steps=[1]",
         "eval.max_images=2", "eval.num_visualizations=1"]
SMALL_RCNN = ["input.min_size_train=[128]", "input.min_size_test=128", "input.max_size=160",
              "model.rpn.pre_nms_top_n_train=200", "model.rpn.post_nms_top_n_train=100",
              "model.rpn.pre_nms_top_n_test=100", "model.rpn.post_nms_top_n_test=50",
              "model.roi_heads.batch_size_per_image=32", "model.roi_heads.detections_per_image=10",
              *STEPS]
SMALL_YOLACT = ["input.size=128", "model.yolact.detections_per_image=10", *STEPS]
SKIP_LINE = re.compile(r"another class \(or keypoint\) count, so (.*) keep their fresh "
                       r"initialisation")


def guide_commands(tag):
    """The commands of the guide's ```bash <tag> blocks, in order, as argv lists."""
    with open(GUIDE, encoding="utf-8") as f:
        text = f.read()
    blocks = re.findall(rf"^```bash {tag}\n(.*?)^```", text, flags=re.M | re.S)
    assert blocks, f"no ```bash {tag} block in {GUIDE}"
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [shlex.split(line) for line in lines if line.strip()]


def run(argv, cwd, small):
    """One guide command; ``python`` is this interpreter, train.py gets ``small`` appended."""
    argv = [sys.executable if a == "python" else a for a in argv]
    if "train.py" in argv:
        argv += ["--set", *small]
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    env.pop("TF_CONFIG", None)
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT,
                            env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{shlex.join(argv)}\n{output[-4000:]}"
    return output


def skipped_layers(output):
    lines = [m.group(1) for m in map(SKIP_LINE.search, output.splitlines()) if m]
    assert len(lines) == 1, output[-4000:]
    return sorted(lines[0].split(", "))


@pytest.fixture
def workspace(tmp_path):
    """A directory like a checkout's root: configs/, train.py, evaluate.py and the guide's
    data/my_dataset (3 categories; val/000001.jpg for the predict command)."""
    from keras_maskrcnn.data import synthetic
    for name in ("configs", "train.py", "evaluate.py"):
        os.symlink(os.path.join(ROOT, name), tmp_path / name)
    root = tmp_path / "data" / "my_dataset"
    synthetic.write_synthetic_dataset(str(root), num_train=4, num_val=2, image_size=160,
                                      keypoint_categories=())
    first = next((root / "val").glob("000001.*"))
    Image.open(first).convert("RGB").save(root / "val" / "000001.jpg", quality=92)
    with open(root / "annotations" / "instances_train.json") as f:
        assert len(json.load(f)["categories"]) == 3
    return tmp_path


@pytest.mark.slow
def test_guide_torchvision_finetune_evaluate_predict_export(workspace):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    coco = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=91)
    torch.save(coco.state_dict(), workspace / "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth")
    outputs = [run(argv, workspace, SMALL_RCNN) for argv in guide_commands("maskrcnn")]
    convert, train, evaluate, predict, export = outputs
    assert (workspace / "converted" / "maskrcnn_r50_fpn" / "model.weights.h5").exists()
    assert skipped_layers(train) == ["bbox_pred", "cls_score", "mask_fcn_logits"]
    run_dir = workspace / "runs" / "my_dataset"
    assert "Average Precision" in train and (run_dir / "model.weights.h5").exists()
    assert (run_dir / "saved_model" / "saved_model.pb").exists()
    assert not SKIP_LINE.search(evaluate + predict + export)  # the run's weights fit
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert {"bbox", "segm"} <= set(metrics) and 0.0 <= metrics["segm"]["AP"] <= 1.0
    assert Image.open(workspace / "prediction.png").size == (160, 160)
    assert (workspace / "exported" / "my_dataset" / "saved_model.pb").exists()


@pytest.mark.slow
def test_guide_yolact_finetune(workspace):
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    from support import yolact_torch_reference as ref
    image = np.asarray(Image.open(next((workspace / "data/my_dataset/train").glob("*"))))
    model = ref.randomised(50, 81, 32, ref.preprocess(image, 128))
    torch.save(model.state_dict(), workspace / "yolact_resnet50_54_800000.pth")
    convert, train = [run(argv, workspace, SMALL_YOLACT) for argv in guide_commands("yolact")]
    assert skipped_layers(train) == ["class_logits", "semantic_seg"]
    assert (workspace / "runs" / "my_dataset_yolact" / "model.weights.h5").exists()


@pytest.mark.slow
def test_guide_detectron2_finetune(workspace):
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    from support import d2_layout, d2_oracle
    torch.manual_seed(0)
    model = d2_oracle.build_fpn_oracle("mask", num_classes=81, min_size=128, max_size=160,
                                       score_threshold=0.05)
    d2_layout.write_pkl(workspace / "model_final_f10217.pkl",
                        d2_layout.to_detectron2(model.state_dict()))
    convert, train = [run(argv, workspace, SMALL_RCNN) for argv in guide_commands("detectron2")]
    assert skipped_layers(train) == ["bbox_pred", "cls_score", "mask_fcn_logits"]
    assert (workspace / "runs" / "my_dataset_d2" / "model.weights.h5").exists()
