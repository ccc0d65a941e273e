"""A tiny `custom` job: fit y = a*x + b to data/points.csv by gradient descent.

It shows the container contract with nothing but the standard library (so it runs in any image):
inputs from the `train` channel, hyperparameters from the JSON file, metrics appended per epoch,
the model written to the model folder, the failure reason in the failure file, and a checkpoint on
SIGTERM so a stopped or preempted run resumes where it was.
"""
import csv
import json
import os
import signal
import sys
import time
from pathlib import Path

hp = json.loads(Path(os.environ["FACEOPS_HYPERPARAMETERS"]).read_text())
train_dir = Path(os.environ["FACEOPS_CHANNEL_TRAIN"])
model_dir = Path(os.environ["FACEOPS_MODEL_DIR"])
checkpoint = Path(os.environ["FACEOPS_CHECKPOINT_DIR"]) / "state.json"


def write_failure(reason):
    Path(os.environ["FACEOPS_FAILURE_FILE"]).write_text(reason)


def log_metrics(**values):
    with open(os.environ["FACEOPS_METRICS_FILE"], "a") as fh:
        fh.write(json.dumps(values) + "\n")


points = []
for path in sorted(train_dir.rglob("*.csv")):
    with open(path) as fh:
        points += [(float(r["x"]), float(r["y"])) for r in csv.DictReader(fh)]
if not points:
    write_failure(f"no points found in {train_dir} (expected *.csv files with x,y columns)")
    sys.exit(1)

state = json.loads(checkpoint.read_text()) if checkpoint.exists() else {"epoch": 0, "a": 0.0, "b": 0.0}


def save_and_exit(*_):
    checkpoint.write_text(json.dumps(state))
    print(f"SIGTERM: checkpoint saved at epoch {state['epoch']}", flush=True)
    sys.exit(143)


signal.signal(signal.SIGTERM, save_and_exit)
lr, epochs, delay = float(hp.get("lr", 0.05)), int(hp.get("epochs", 50)), float(hp.get("sleep", 0.0))
for epoch in range(state["epoch"], epochs):
    n = len(points)
    grad_a = sum(2 * (state["a"] * x + state["b"] - y) * x for x, y in points) / n
    grad_b = sum(2 * (state["a"] * x + state["b"] - y) for x, y in points) / n
    state.update(a=state["a"] - lr * grad_a, b=state["b"] - lr * grad_b, epoch=epoch + 1)
    loss = sum((state["a"] * x + state["b"] - y) ** 2 for x, y in points) / n
    if loss != loss or loss > 1e12:
        write_failure(f"loss diverged at epoch {epoch + 1} (lr={lr}); try a smaller lr")
        sys.exit(1)
    log_metrics(epoch=epoch + 1, loss=loss)
    print(f"epoch {epoch + 1}/{epochs} loss {loss:.6f}", flush=True)
    time.sleep(delay)

(model_dir / "model.json").write_text(json.dumps({"a": state["a"], "b": state["b"]}))
print(f"fitted y = {state['a']:.4f} x + {state['b']:.4f}")
