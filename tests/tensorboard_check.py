"""Reads kiln's TensorBoard event files with TensorBoard's own reader.

Usage: tensorboard_check.py LOGDIR. Prints JSON: every scalar series (tag -> [[step,
value], ...]), the HParams session's hyperparameters and end status, and the
experiment's hparam and metric names, and the HParams tags that the data provider behind
TensorBoard's dashboards lists, for tests/tensorboard.rs to compare.
"""

import json
import sys

from tensorboard import context
from tensorboard.backend.event_processing import data_provider
from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.backend.event_processing import plugin_event_multiplexer as pem
from tensorboard.plugins.hparams import plugin_data_pb2

acc = ea.EventAccumulator(sys.argv[1], size_guidance={k: 0 for k in ea.DEFAULT_SIZE_GUIDANCE})
acc.Reload()
out = {"scalars": {}, "hparams": {}, "status": None, "experiment": None}
for tag in acc.Tags()["scalars"]:
    out["scalars"][tag] = [[e.step, e.value] for e in acc.Scalars(tag)]
for tag, content in acc.PluginTagToContent("hparams").items():
    data = plugin_data_pb2.HParamsPluginData.FromString(content)
    kind = data.WhichOneof("data")
    if kind == "session_start_info":
        for name, value in data.session_start_info.hparams.items():
            out["hparams"][name] = getattr(value, value.WhichOneof("kind"))
    elif kind == "session_end_info":
        out["status"] = data.session_end_info.status
    elif kind == "experiment":
        out["experiment"] = {
            "hparams": [h.name for h in data.experiment.hparam_infos],
            "metrics": [m.name.tag for m in data.experiment.metric_infos],
        }
# The HParams dashboard finds its summaries through the data provider, by their tensors.
mux = pem.EventMultiplexer()
mux.AddRunsFromDirectory(sys.argv[1])
mux.Reload()
provider = data_provider.MultiplexerDataProvider(mux, sys.argv[1])
listed = provider.list_tensors(context.RequestContext(), experiment_id="", plugin_name="hparams")
out["listed"] = sorted(tag for tags in listed.values() for tag in tags)
print(json.dumps(out))
