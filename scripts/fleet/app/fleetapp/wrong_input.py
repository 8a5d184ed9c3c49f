"""Wrong input against a fieldtune SuperNode (run config mode=wrong-arrays): sends one node a
`train` message whose arrays do not match its model (one array with another shape), then one
with an array the model does not have, and expects an error reply naming the array each
time; then an `evaluate` message with the model's own arrays, which must get a normal reply
(the node kept serving). Prints one `wrong-input:` line per check; raises on a wrong answer."""
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict


def ask(grid, node, kind, arrays, timeout):
    content = RecordDict({"arrays": ArrayRecord(arrays), "config": ConfigRecord({"server-round": 1})})
    msg = Message(content=content, dst_node_id=node, message_type=kind)
    replies = list(grid.send_and_receive([msg], timeout=timeout))
    if len(replies) != 1:
        raise RuntimeError(f"{kind}: {len(replies)} replies in {timeout} s, expected 1")
    return replies[0]


def wrong_arrays(grid, c):
    from .server_app import read_safetensors  # the demo's reader (no cycle at import time)

    init = Path(tempfile.mkdtemp(prefix="fleet-wrong-")) / "init.safetensors"
    subprocess.run([c["fieldtune"], "fleet", "--config", c["fleet-config"], "--export-arrays", str(init)],
                   check=True, capture_output=True)
    good = {k: Array(np.array(v)) for k, v in read_safetensors(init).items()}
    deadline = time.time() + float(c["round-timeout"])
    while not list(grid.get_node_ids()):
        if time.time() > deadline:
            raise RuntimeError("no node connected")
        time.sleep(0.5)
    node = list(grid.get_node_ids())[0]
    timeout = float(c["round-timeout"])

    name = sorted(good)[0]
    reshaped = dict(good)
    reshaped[name] = Array(np.zeros((3, 5), dtype=np.float32))
    unknown = dict(good)
    unknown["head.extra.weight"] = Array(np.zeros((2,), dtype=np.float32))
    for label, arrays, named in (("shape", reshaped, name), ("name", unknown, "head.extra.weight")):
        r = ask(grid, node, "train", arrays, timeout)
        if not r.has_error() or named not in r.error.reason:
            raise RuntimeError(f"train with a wrong {label}: expected an error reply naming '{named}'")
        print(f"wrong-input: train with a wrong {label}: error reply: {r.error.reason}", flush=True)
    r = ask(grid, node, "evaluate", good, timeout)
    if r.has_error():
        raise RuntimeError(f"evaluate after the wrong input failed: {r.error.reason}")
    acc = float(r.content["metrics"]["anchor-accuracy"])
    print(f"wrong-input: then evaluate: anchor-accuracy {acc:.4f} (the node kept serving)", flush=True)
