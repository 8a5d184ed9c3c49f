#!/usr/bin/python3
"""PyTorch reference of `fieldtune tta` (online test-time adaptation over a domain sequence).

    /usr/bin/python3 scripts/reference/torch_tta.py --batches DIR [--methods ...] [--seeds 0,1,2]
        [--settings reset,continual] [--threads 2] [--out results.json]

Runs the same protocol and recipes as `fieldtune tta` on the very batches fieldtune used:
`fieldtune tta ... --dump-batches DIR` writes DIR/<row>/seed-<S>/settings.json (the row's
method and resolved settings, batch size, domain order), DIR/<row>/seed-<S>/<NN>-<domain>/
step-<K>.safetensors (x_test, y_test and the train-step inputs x_labeled, y_labeled, x_weak,
x_strong) and, when the settings have pretext heads, DIR/<row>/seed-<S>/heads.safetensors (the
heads' initial values, the jigsaw's permutations). <row> is the method's name, or
METHOD:LABEL for a `--method-config METHOD:LABEL=FILE` variant; --methods takes the same names.
So the two sides differ only in the computation: here the ONNX model runs through
`reference.onnx_torch.OnnxModule` (torch ops, torch autograd), the loss is
`reference.uda.uda_loss` plus the pretext and feature-consistency terms of
`reference.pretext`, the optimizer `torch.optim.AdamW`/`SGD`, the mean teacher a plain EMA in
torch.

Protocol (per domain, per batch): predict x_test with the current weights and BatchNorm on the
test batch's statistics (`source`: running statistics; `teacher`: the teacher's weights), count
errors against y_test; then one optimizer step on the batch. `reset`: every domain starts from
the source weights, the pretext heads' initial values, a fresh optimizer and a fresh teacher,
and the step number (of the TSA schedule and of the in-graph random streams: inpaint's mask,
the corruption task's noise) starts again at 1; `continual`: no reset, the heads train on and
the step number counts on across domains.

The train step mirrors fieldtune's graph layout: one forward in BatchNorm training mode over
the concatenation [x_labeled (if any), x_weak (if the entropy terms read it), x_strong], sliced;
when the weak view is not in it, a separate no-gradient forward over x_weak alone gives the
consistency target (the mean teacher's forward over x_weak alone when there is a teacher).
Feature consistency reads the strong view's rows of that gradient pass and the weak view's rows
of the pass that holds the weak view (the gradient pass, else the teacher's or the no-gradient
one); each pretext task's batch (built from x_weak) is a forward of its own, as in fieldtune.
"""
import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = os.path.dirname(HERE)
ROOT = os.path.dirname(SCRIPTS)
sys.path.insert(0, SCRIPTS)  # the reference package
from reference.onnx_torch import OnnxModule  # noqa: E402
from reference import pretext, st  # noqa: E402
from reference.uda import uda_loss  # noqa: E402


def bn_affine_names(net):
    names = []
    for n in net.graph.node:
        if n.op_type == "BatchNormalization":
            names += [n.input[1], n.input[2]]
    return names


def trainable_names(net, trainable):
    if trainable == "bn":
        return bn_affine_names(net)
    if trainable == "all":
        return sorted(net.float_initializers())
    raise SystemExit(f"trainable selection {trainable!r} is not supported by this reference")


def loss_cfg(s):
    l = s["loss"]
    return {
        "ce_weight": l["ce_weight"], "tsa": l["tsa"], "tsa_steps": l["tsa_steps"],
        "consistency_weight": l["consistency_weight"], "sharpen_temperature": l["sharpen_temperature"],
        "confidence_threshold": l["confidence_threshold"], "entropy_weight": l["entropy_weight"],
        "diversity_weight": l["diversity_weight"], "pseudo_label_weight": l["pseudo_label_weight"],
        "pseudo_label_threshold": l["pseudo_label_threshold"],
    }


def make_optimizer(s, params):
    o = s["optimizer"]
    if o["kind"] == "adamw":
        return torch.optim.AdamW(params, lr=s["lr"], betas=(o["beta1"], o["beta2"]), eps=o["eps"],
                                 weight_decay=o["weight_decay"])
    return torch.optim.SGD(params, lr=s["lr"], momentum=o["momentum"], weight_decay=o["weight_decay"],
                           nesterov=o["nesterov"])


def load_steps(folder):
    files = sorted(f for f in os.listdir(folder) if f.startswith("step-"))
    out = []
    for f in files:
        t, _ = st.load(os.path.join(folder, f))
        out.append({k: torch.from_numpy(np.array(v)) for k, v in t.items()})
    return out


def load_heads(dump):
    """The dump's pretext heads (initial values) and the jigsaw's permutations, if any."""
    path = os.path.join(dump, "heads.safetensors")
    if not os.path.exists(path):
        return {}, None
    t, _ = st.load(path)
    perms = t.pop("jigsaw.permutations", None)
    unknown = [k for k in t if k not in pretext.HEADS]
    if unknown:
        raise SystemExit(f"{path}: unknown head tensors {unknown}")
    return t, perms


def train_step(s, cfg, b, net, params, teacher, step, perms, maps):
    """One train step's loss, as fieldtune's graph lays it out (see the module docstring)."""
    labeled = s["batch_labeled"] > 0
    weak_trains = cfg["entropy_weight"] != 0 or cfg["diversity_weight"] != 0
    fc = s.get("feature_consistency")
    feature = (fc.get("feature") or pretext.classifier_input(net)) if fc else None
    xs = ([b["x_labeled"]] if labeled else []) + ([b["x_weak"]] if weak_trains else []) + [b["x_strong"]]
    sizes = [len(v) for v in xs]
    out = net(torch.cat(xs), params, output=[net.output, feature] if fc else None)
    logits, feat = (out[0], out[1]) if fc else (out, None)
    chunks = list(torch.split(logits, sizes))
    logits_l = chunks.pop(0) if labeled else None
    logits_w = chunks.pop(0) if weak_trains else None
    logits_s = chunks.pop(0)
    target = weak_feat = None
    if teacher is not None or not weak_trains:
        with torch.no_grad():
            src = teacher if teacher is not None else params
            target, weak_feat = net(b["x_weak"], src, output=[net.output, feature or net.output])
    if logits_w is None:
        logits_w = target
    total, terms = uda_loss(cfg, logits_l, b["y_labeled"] if labeled else None, logits_w, logits_s,
                            float(step), logits_target=target)
    if fc:
        frows = torch.split(pretext.rows(feat), sizes)
        strong = frows[-1]
        weak = frows[1 if labeled else 0] if weak_trains else pretext.rows(weak_feat)
        lfc = pretext.feature_consistency(fc, weak, strong)
        total = total + fc["weight"] * lfc
        terms["loss_feature_consistency"] = lfc
    head_total, head_metrics = pretext.head_terms(net, params, s, b["x_weak"], step, perms, maps)
    terms.update(head_metrics)
    return total + head_total, terms


def run_method(method, seed, settings_list, dump, net_train, net_eval, init):
    meta = json.load(open(os.path.join(dump, "settings.json")))
    s = meta["settings"]
    domains = meta["domains"]
    if s and s.get("cotta"):
        raise SystemExit(f"{method}: this reference has no CoTTA (augmented teacher views, stochastic restore); "
                         "run fieldtune's cotta rows without it")
    data = {d: load_steps(os.path.join(dump, d)) for d in domains}
    names = trainable_names(net_train, s["trainable"]) if s else []
    heads, perms = load_heads(dump)
    if s and s.get("jigsaw") and perms is None:
        raise SystemExit(f"{dump}: the settings have a jigsaw task but heads.safetensors has no permutations")
    init = dict(init, **heads)
    cfg = loss_cfg(s) if s else None
    teacher_ema = s["teacher"]["ema"] if s and s.get("teacher") else None
    maps = {}
    results = []
    for setting in settings_list:
        t0 = time.perf_counter()
        params = opt = teacher = None
        step = 0
        per_domain = []
        for di, d in enumerate(domains):
            if s and (params is None or setting == "reset"):
                params = {k: torch.tensor(np.array(init[k]), requires_grad=True) for k in names + sorted(heads)}
                opt = make_optimizer(s, list(params.values()))
                teacher = {k: params[k].detach().clone() for k in names} if teacher_ema else None
                step = 0
            errors = count = 0
            predicted = [0] * 10
            losses = []
            for b in data[d]:
                x, y = b["x_test"], b["y_test"]
                with torch.no_grad():
                    if meta["method"] == "source":
                        logits = net_eval(x, {})
                    else:
                        logits = net_train(x, teacher if teacher is not None else (params or {}))
                pred = logits.argmax(1)
                errors += int((pred != y).sum())
                count += len(y)
                for p in pred.tolist():
                    predicted[p] += 1
                if not s:
                    continue
                step += 1
                total, _ = train_step(s, cfg, b, net_train, params, teacher, step, perms, maps)
                if not torch.isfinite(total):
                    raise RuntimeError(f"{method} {setting} seed {seed}: non-finite loss in {d} step {step}")
                opt.zero_grad()
                total.backward()
                opt.step()
                losses.append(float(total))
                if teacher is not None:
                    with torch.no_grad():
                        for k in names:
                            teacher[k].mul_(teacher_ema).add_(params[k].detach(), alpha=1 - teacher_ema)
            per_domain.append({"domain": d.split("-", 1)[1], "count": count, "errors": errors,
                               "error": 100.0 * errors / count, "predicted": predicted,
                               "mean_loss": float(np.mean(losses)) if losses else None})
        results.append({"name": method, "method": meta["method"], "setting": setting, "seed": seed,
                        "mean_error": float(np.mean([r["error"] for r in per_domain])),
                        "domains": per_domain, "seconds": time.perf_counter() - t0, "settings": s})
        print(f"{method:9s} {setting:9s} seed {seed}: mean error {results[-1]['mean_error']:.2f}% "
              f"({results[-1]['seconds']:.1f} s)", flush=True)
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", required=True, help="the DIR of `fieldtune tta --dump-batches DIR`")
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "fmnist-cnn", "model.onnx"))
    ap.add_argument("--methods", default="source,bn,tent,uda,fixmatch,teacher",
                    help="row names (folders of the dump): methods, or METHOD:LABEL variants")
    ap.add_argument("--settings", default="reset,continual")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    net_train = OnnxModule(args.model, bn_mode="train")
    net_eval = OnnxModule(args.model, bn_mode="eval")
    init = net_train.float_initializers()
    runs = []
    for seed in [int(v) for v in args.seeds.split(",")]:
        for method in args.methods.split(","):
            dump = os.path.join(args.batches, method, f"seed-{seed}")
            runs += run_method(method, seed, args.settings.split(","), dump, net_train, net_eval, init)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"torch": torch.__version__, "python": platform.python_version(),
                       "threads": args.threads, "model": args.model, "runs": runs}, f, indent=1)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
