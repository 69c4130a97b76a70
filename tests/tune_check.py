"""Reads a `kiln tune --tensorboard LOGDIR` folder with TensorBoard's own reader.

Usage: tune_check.py LOGDIR. Prints JSON: the experiment's hparam and metric names (from
the folder's root run), and per trial run (trial-NNN) its hyperparameters, end status
and final scalars, for tests/tune.rs to compare with trials.csv.
"""

import json
import sys

from tensorboard.backend.event_processing import plugin_event_multiplexer as pem
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.util import tensor_util

mux = pem.EventMultiplexer()
mux.AddRunsFromDirectory(sys.argv[1])
mux.Reload()
out = {"experiment": None, "sessions": {}}
for run, tags in mux.PluginRunToTagToContent("hparams").items():
    for tag, content in tags.items():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        kind = data.WhichOneof("data")
        if kind == "experiment":
            out["experiment"] = {
                "hparams": [h.name for h in data.experiment.hparam_infos],
                "metrics": [m.name.tag for m in data.experiment.metric_infos],
            }
            continue
        s = out["sessions"].setdefault(run, {"hparams": {}, "status": None, "scalars": {}})
        if kind == "session_start_info":
            for name, value in data.session_start_info.hparams.items():
                s["hparams"][name] = getattr(value, value.WhichOneof("kind"))
        elif kind == "session_end_info":
            s["status"] = data.session_end_info.status
# The multiplexer behind the dashboards reads scalars as tensors.
for run, s in out["sessions"].items():
    for tag in mux.GetAccumulator(run).Tags()["tensors"]:
        if not tag.startswith("_hparams_"):
            s["scalars"][tag] = [
                [e.step, float(tensor_util.make_ndarray(e.tensor_proto))]
                for e in mux.Tensors(run, tag)
            ]
print(json.dumps(out))
