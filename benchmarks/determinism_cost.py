"""Cost of --deterministic (tf.config.experimental.enable_op_determinism) on an HLTM run.

    PYTHONPATH=. python benchmarks/determinism_cost.py [--steps=300] [--repeats=3]

Times ``model.fit`` (after a warm-up epoch that traces the step) of the paper's HLTM setting
(depth 5, hid 10, batch 128, nce, steps_per_execution 50) with op determinism off and on,
each in a fresh process (determinism is process-global), and prints steps/s. The CPU is
shared with other jobs, so absolute figures are pessimistic; compare the two columns.
"""

import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(deterministic, steps):
    """Runs in a child process: steps/s of fit with or without op determinism."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf

    sys.path.insert(0, ROOT)
    from dualssl_tf import config, experiments
    from dualssl_tf.run import trainer

    cfg = config.TrainConfig(hltm_depth=5, hltm_hid=10, batch_size=128,
                             steps_per_execution=50, model_dir="/tmp/unused", verbose=0)
    keras.utils.set_random_seed(cfg.run.seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    exp = experiments.build(cfg)
    model = trainer.build_model(cfg, exp)
    data = trainer._select_negatives(cfg, exp.train_data)
    model.fit(data, epochs=1, steps_per_epoch=100, verbose=0)  # trace + warm up
    t0 = time.perf_counter()
    model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0)
    return steps / (time.perf_counter() - t0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=["on", "off"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(measure(args.child == "on", args.steps))
        return
    rows = {"off": [], "on": []}
    for _ in range(args.repeats):
        for mode in ("off", "on"):  # interleaved, so load changes hit both alike
            out = subprocess.run([sys.executable, __file__, f"--child={mode}",
                                  f"--steps={args.steps}"], capture_output=True, text=True,
                                 check=True)
            rows[mode].append(float(out.stdout.strip().splitlines()[-1]))
    print(f"HLTM depth 5, hid 10, batch 128, {args.steps} steps per timing, "
          f"{args.repeats} fresh processes each (shared CPU: pessimistic)\n")
    print("determinism  steps/s (each run)            best")
    for mode in ("off", "on"):
        runs = "  ".join(f"{v:7.1f}" for v in rows[mode])
        print(f"{mode:<11}  {runs:<28}  {max(rows[mode]):7.1f}")
    print(f"\nbest on / best off = {max(rows['on']) / max(rows['off']):.3f}")


if __name__ == "__main__":
    main()
