"""Does a cut before Qwen3-VL's last DeepStack plane cost accuracy? The same kept-token count at different layers.

trio-eval compares methods at layer-averaged budgets, so a method cutting after layer 1 (the Qwen methods: layer 0
sees every image token) keeps fewer tokens than one cutting on the input embeddings (Edge-LLM's DART): the budget
and the cut's layer change together. Here every cut keeps the same KEEP image tokens and only its layer moves:
one cut at layer 1 or 2 (before DeepStack adds its planes after layers 1 and 2; a dropped token never gets
them), at layer 3 (after every plane), and `dart-embed` at layer 0 (before any layer); random at the same layers
as a floor. Accuracy (greedy, exact match) and per kind on the synthetic held-out split, torch backend.

python benchmarks/deepstack_cut_layer.py [--model trio-tiny-qwen3] [--keep 8,16] [--n 200] \
    [--out benchmarks/results/deepstack_cut_layer_trio_tiny_qwen3.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

METHODS = (("dart-embed", (0,)), ("trio", (1, 2, 3)), ("fastv", (1, 2, 3)), ("dart", (1, 2, 3)),
           ("random", (0, 1, 3)))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="trio-tiny-qwen3")
    parser.add_argument("--keep", default="8,16", help="image tokens each cut keeps (comma-separated)")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)

    from trio_edge import load
    from trio_edge.calibration.data import load_records
    from trio_edge.calibration.evaluate import accuracy, accuracy_by_kind
    from trio_edge.models.registry import load as load_model

    loaded = load_model(args.model)
    adapter = loaded.adapter
    grid = adapter.default_grid()
    tokens, layers = adapter.image_token_count(grid), adapter.num_layers
    records = load_records("synthetic", n=args.n)
    rows = []
    for keep in (int(k) for k in args.keep.split(",")):
        for method, cut_layers in METHODS:
            for layer in cut_layers:
                started = time.time()
                with load(loaded, cuts=f"{layer}:{keep}", method=method, max_new_tokens=4) as pipeline:
                    acc, predictions = accuracy(pipeline, records)
                share = (layer * tokens + (layers - layer) * keep) / (layers * tokens)
                rows.append({"method": method, "cut": f"{layer}:{keep}", "layer": layer, "keep": keep,
                             "layer_averaged": round(share, 4), "accuracy": acc,
                             "by_kind": accuracy_by_kind(predictions, records)})
                print(f"{method:<11}{layer}:{keep:<5} {100 * share:5.1f}% of the tokens  {100 * acc:5.1f}%  "
                      + "  ".join(f"{k} {100 * v:.1f}%" for k, v in rows[-1]["by_kind"].items())
                      + f"  ({time.time() - started:.0f} s)", flush=True)
    body = {"command": "python benchmarks/deepstack_cut_layer.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "model": args.model, "n": args.n, "image_tokens": tokens, "layers": layers,
            "deepstack_layers": getattr(adapter, "deepstack_layers", 0), "rows": rows}
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(body, handle, indent=2)
    return body


if __name__ == "__main__":
    main()
