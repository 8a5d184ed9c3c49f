"""FedAvg or FedProx (strategy, proximal-mu) over fieldtune SuperNodes with server-side
evaluation: each round the aggregated arrays are scored on the full labeled set by
`fieldtune fleet --eval-arrays` (the same engine the devices run). Prints per round the
nodes that answered, how far their arrays moved from the round's global arrays
(||w - w_global||), each reply's metrics (`round R: node N metrics {JSON}`) and the
accuracy; ends with `fleet: rounds R, clients N, accuracy BEFORE -> AFTER`. With
checks=true it also asserts that the aggregate equals the num-examples-weighted mean of the
clients' arrays. mode=wrong-arrays runs the wrong-input check of wrong_input.py instead."""
import json
import re
import struct
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, FedProx

from .wrong_input import wrong_arrays

app = ServerApp()


def read_safetensors(path):
    b = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", b[:8])
    head = json.loads(b[8 : 8 + n])
    out = {}
    for name, m in head.items():
        if name == "__metadata__":
            continue
        assert m["dtype"] == "F32", f"{path}: {name} is {m['dtype']}"
        s, e = m["data_offsets"]
        out[name] = np.frombuffer(b[8 + n + s : 8 + n + e], dtype="<f4").reshape(m["shape"])
    return out


def write_safetensors(path, arrays):
    head, off, blobs = {}, 0, []
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name], dtype="<f4")
        head[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        off += a.nbytes
        blobs.append(a.tobytes())
    h = json.dumps(head).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    Path(path).write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


class Watched:
    """Records who answered and how far they moved; with checks, recomputes the weighted mean."""

    def __init__(self, checks, **kw):
        super().__init__(**kw)
        self.checks = checks
        self.answered = {}
        self.max_diff = 0.0
        self.sent = {}
        self.drift = {}

    def configure_train(self, server_round, arrays, config, grid):
        self.sent = {n: arrays[n].numpy().astype(np.float64) for n in arrays}
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        ok = [r for r in replies if not r.has_error()]
        for r in replies:
            if r.has_error():
                print(f"round {server_round}: node {r.metadata.src_node_id} failed: {r.error.reason}", flush=True)
        self.answered[server_round] = sorted(r.metadata.src_node_id for r in ok)
        if ok:
            d = []
            for r in ok:
                a = r.content["arrays"]
                d.append(float(np.sqrt(sum(((a[n].numpy() - self.sent[n]) ** 2).sum() for n in a))))
            self.drift[server_round] = float(np.mean(d))
            print(f"round {server_round}: ||w - w_global|| per client {', '.join(f'{x:.4f}' for x in d)}; mean {np.mean(d):.4f}", flush=True)
            for r in ok:
                m = {k: r.content["metrics"][k] for k in r.content["metrics"]}
                print(f"round {server_round}: node {r.metadata.src_node_id} metrics {json.dumps(m, sort_keys=True)}", flush=True)
        arrays, metrics = super().aggregate_train(server_round, replies)
        if self.checks and arrays is not None and ok:
            w = np.array([float(r.content["metrics"]["num-examples"]) for r in ok])
            for name in arrays:
                mean = sum(wi * r.content["arrays"][name].numpy().astype(np.float64) for wi, r in zip(w, ok)) / w.sum()
                d = float(np.max(np.abs(arrays[name].numpy() - mean))) if mean.size else 0.0
                self.max_diff = max(self.max_diff, d)
            print(f"round {server_round}: aggregate vs weighted mean of {len(ok)} clients: max |diff| {self.max_diff:.2e}", flush=True)
        return arrays, metrics


class WatchedFedAvg(Watched, FedAvg):
    pass


class WatchedFedProx(Watched, FedProx):
    pass


@app.main()
def main(grid: Grid, context: Context) -> None:
    c = context.run_config
    if c.get("mode", "rounds") == "wrong-arrays":
        wrong_arrays(grid, c)
        return
    fieldtune, cfg, data = c["fieldtune"], c["fleet-config"], c["eval-data"]
    tmp = Path(tempfile.mkdtemp(prefix="fleet-"))
    init = tmp / "init.safetensors"
    subprocess.run([fieldtune, "fleet", "--config", cfg, "--export-arrays", str(init)], check=True, capture_output=True)
    initial = read_safetensors(init)
    accs = {}

    def evaluate(server_round, arrays):
        f = tmp / f"round-{server_round}.safetensors"
        write_safetensors(f, {n: arrays[n].numpy() for n in arrays})
        out = subprocess.run([fieldtune, "fleet", "--config", cfg, "--eval-arrays", str(f), data],
                             check=True, capture_output=True, text=True).stdout
        acc = float(re.search(r"accuracy: ([0-9.]+)", out).group(1))
        accs[server_round] = acc
        who = strategy.answered.get(server_round)
        print(f"round {server_round}: clients {who if who is not None else '-'}, accuracy {acc:.4f}", flush=True)
        return MetricRecord({"accuracy": acc})

    n = int(c["min-nodes"])
    kw = dict(min_train_nodes=n, min_available_nodes=n, fraction_evaluate=0.0)
    if c.get("strategy", "fedavg") == "fedprox":
        strategy = WatchedFedProx(bool(c["checks"]), proximal_mu=float(c["proximal-mu"]), **kw)
    else:
        strategy = WatchedFedAvg(bool(c["checks"]), **kw)
    rounds = int(c["num-server-rounds"])
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord({k: Array(np.array(v)) for k, v in initial.items()}),
        num_rounds=rounds,
        timeout=float(c["round-timeout"]),
        train_config=ConfigRecord({}),
        evaluate_fn=evaluate,
    )
    last = max(accs)
    clients = max((len(v) for v in strategy.answered.values()), default=0)
    print(f"fleet: rounds {rounds}, clients {clients}, accuracy {accs[0]:.4f} -> {accs[last]:.4f}", flush=True)
    if strategy.drift:
        name = f"fedprox mu {strategy.proximal_mu}" if isinstance(strategy, FedProx) else "fedavg"
        print(f"fleet: {name}: mean ||w - w_global|| over rounds {np.mean(list(strategy.drift.values())):.4f}", flush=True)
    if bool(c["checks"]):
        assert strategy.max_diff < 1e-5, f"FedAvg differs from the weighted mean by {strategy.max_diff}"
        print(f"fleet: FedAvg == weighted mean of the clients' arrays (max |diff| {strategy.max_diff:.2e})", flush=True)
