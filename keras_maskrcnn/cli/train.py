"""Train a detector: ``kmr train --config shapes [--set key=value ...]`` (= ``python train.py``).

Reads and validates the config (before any work), picks the tf.distribute strategy, makes the
synthetic dataset when the config uses it and it is absent, builds the tf.data pipeline and the
model, and trains with ``model.fit``: checkpoints every ``train.checkpoint_every`` steps, and
a rerun of the same command resumes from the newest checkpoint. Then, unless told not to, it
evaluates with COCOeval, exports a SavedModel and draws predictions of validation images.

Output directory (``train.output_dir``):
    config.yaml              the config used (with overrides applied)
    checkpoints/             ckpt-<step>.weights.h5 (model + optimizer), newest few kept
    logs/                    TensorBoard: losses, learning rate, evaluation AP, prediction images
    model.weights.h5         final weights
    eval/                    results.json (COCO results), metrics.json
    saved_model/             SavedModel for TF Serving (serving_default: encoded images)
    predictions/             PNGs of predictions on validation images

``--config`` is a packaged config's name or a YAML path (``keras_maskrcnn.config.packaged``);
``--list-configs`` prints the names, ``--print-config`` the resolved config (every field,
overrides applied) as YAML to start a file of one's own from.
"""
import argparse
import os
import sys

from keras_maskrcnn import config as config_lib  # import-light: no TensorFlow


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Train keras-maskrcnn (Mask R-CNN, Keypoint "
                                                 "R-CNN, YOLACT).")
    parser.add_argument("--config", help="a packaged config's name (--list-configs) or a YAML "
                                         "file's path")
    parser.add_argument("--list-configs", action="store_true",
                        help="list the packaged configs, loadable by name, and exit")
    parser.add_argument("--print-config", action="store_true",
                        help="print the config (every field, --set applied) as YAML and exit")
    config_lib.add_override_argument(parser, "train.batch_size=4 train.seed=1")
    parser.add_argument("--no-eval", action="store_true", help="skip the final evaluation")
    parser.add_argument("--no-export", action="store_true", help="skip the SavedModel export")
    parser.add_argument("--low-memory", action="store_true",
                        help="CPU training: system malloc with 1 MiB mmap threshold and "
                             "transparent huge pages instead of oneDNN's pool (lower peak "
                             "memory, slower steps; see keras_maskrcnn/accel/memory.py)")
    args = parser.parse_args(argv)
    if args.config is None and not args.list_configs:
        parser.error("the following arguments are required: --config")
    return args


def is_process_command_line(argv):
    """True when ``argv`` is this process' own command line (``python train.py ARGS`` or
    ``kmr train ARGS``), not arguments passed by a caller in Python: only then may
    ``--low-memory`` re-execute the process."""
    if argv is None:
        return True
    argv = list(argv)
    return bool(argv) and list(sys.orig_argv[-len(argv):]) == argv


def main(argv=None):
    args = parse_args(argv)
    if args.list_configs:
        print("\n".join(config_lib.list_configs()))
        return 0
    cfg = config_lib.load_config(args.config, overrides=args.set)  # strict: fails fast
    if args.print_config:
        sys.stdout.write(config_lib.config_to_yaml(cfg))
        return 0
    # TensorFlow leaves its oneDNN kernels off by default on some x86 CPUs (on the 2-core AVX2
    # AMD EPYC this was tuned on); turning them on made a training step ~1.6x faster there
    # (mostly conv backprop). Must be set before TensorFlow is imported; an explicit
    # TF_ENABLE_ONEDNN_OPTS=0 in the environment still wins.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    if args.low_memory:
        from keras_maskrcnn.accel import memory
        if is_process_command_line(argv):  # restart once with huge pages for malloc's mmaps
            memory.restart_with_huge_pages()
        memory.use_lean_allocator()
    from keras_maskrcnn import run  # imports TensorFlow: after the config is known good

    return run.train_and_evaluate(cfg, run_evaluation=not args.no_eval,
                                  run_export=not args.no_export)


if __name__ == "__main__":
    sys.exit(main())
