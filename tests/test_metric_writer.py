"""Scalars go to metrics.jsonl and to TensorBoard event files, and writing them does not load
PyTorch (which tensorboardX would otherwise import at every trainer's start)."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r"""
import glob, json, struct, sys
from clip_ddpm.training.metric_writer import MetricWriter

writer = MetricWriter(sys.argv[1])
writer.write(3, {"loss": 0.25, "learning_rate": 1e-3})
writer.close()
loaded = "torch" in sys.modules
import torch  # still importable afterwards

from tensorboardX.proto.event_pb2 import Event

scalars = []
for path in glob.glob(sys.argv[1] + "/tensorboard/*"):
    data = open(path, "rb").read()
    while data:  # TFRecord: length (8 bytes), its CRC (4), the record, its CRC (4)
        (length,) = struct.unpack("<Q", data[:8])
        event = Event.FromString(data[12:12 + length])
        data = data[16 + length:]
        scalars += [[event.step, value.tag, value.simple_value] for value in event.summary.value]
print(json.dumps({"torch_loaded": loaded, "scalars": sorted(scalars)}))
"""


def test_scalars_reach_jsonl_and_tensorboard_without_loading_pytorch(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO)
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["torch_loaded"] is False
    assert [step for step, _, _ in result["scalars"]] == [3, 3]
    # TensorBoard keeps float32.
    assert {tag: value for _, tag, value in result["scalars"]} == {"loss": 0.25, "learning_rate": pytest.approx(1e-3)}
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"step": 3, "loss": 0.25, "learning_rate": 1e-3}]
