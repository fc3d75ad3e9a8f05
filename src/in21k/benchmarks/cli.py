"""``in21k bench decode|prepare|loader|train|infer``: one handler for every benchmark."""

from __future__ import annotations

import argparse
import importlib
import json
from dataclasses import dataclass

from in21k.config import add_config_args, config_from_args, print_config_requested


@dataclass(frozen=True)
class Bench:
    config: str  # class name in in21k.benchmarks.options
    run: str  # "module:function" under in21k.benchmarks, called with the config, returns a JSON-able dict
    text: str | None  # "module:function" giving the human-readable text of a result (None: key  value lines)
    help: str
    description: str


BENCHES = {
    "decode": Bench(
        "DecodeBenchConfig",
        "prepare:run_decode_bench",
        None,
        "images/s per core of prepare's decode+resize+encode path vs the original's cv2 path and the decode limit",
        "Decode, resize to 224 and encode at quality 95 a generated corpus with the release's size mix, in this one "
        "process, image by image interleaved: prepare's path (ours), the original's exact path (original_cv2: "
        "cv2 full decode, INTER_LINEAR, q95; when OpenCV is installed) and libjpeg-turbo decode alone at the best "
        "DCT scale (limit_turbo). Reports ratio_vs_original, ratio_vs_limit and the output quality of ours and "
        "the original against an antialiased reference (mean abs. difference, aliasing on zone plates).",
    ),
    "dedup": Bench(
        "DedupBenchConfig",
        "dedup:run_dedup_bench",
        "dedup:format_result",
        "precision and recall of prepare's duplicate finder on a release with planted copies",
        "Write a synthetic release with --plant copies of each kind (exact, reencode, rescale, crop, border, colour) "
        "inside and across classes and an evaluation set, run prepare on it with --against (local Ray), and score "
        "its manifest against the planted pairs: recall per kind and scope, precision, the share of the release's "
        "own images wrongly flagged, and evaluation matches that are not planted. Contenders on the same "
        "fingerprints: the hash alone (no colour check) and an exhaustive search (the join's own recall).",
    ),
    "prepare": Bench(
        "PrepareBenchConfig",
        "prepare:run_prepare_bench",
        None,
        "end-to-end images/s of the Ray prepare job on N cores vs N x the single-core decode rate",
        "Write a raw release of the bench corpus, measure the single-core decode rate on it, run prepare on a "
        "local Ray with N CPUs, and report ratio = job images/s / (N x single-core rate).",
    ),
    "loader": Bench(
        "LoaderBenchConfig",
        "loader:run_bench",
        "loader:format_result",
        "images/s of the streaming loader vs ImageFolder and vs the decode+transform limit",
        "Images/s of in21k's streaming loader against (a) torchvision ImageFolder over the same images extracted "
        "to a temporary folder, same transform and workers, and (b) the per-sample decode+transform work in a "
        "tight loop (the limit), and libjpeg-turbo decode alone (limit_turbo; limit_turbo_fast and "
        "limit_turbo_batches for reference). With --loader.transform eval also the installed peers (webdataset, "
        "timm's wds reader, LitData). Targets: >= 1.2 x ImageFolder, >= 0.9 x the limit; with eval >= 0.85 x "
        "limit_turbo and >= 1.5 x the best peer. --s3 also streams from a SeaweedFS server started on 127.0.0.1 "
        "and reports it against local disk.",
    ),
    "tar": Bench(
        "TarBenchConfig",
        "tar:run_tar_bench",
        None,
        "microseconds per sample to read shards into samples: ours vs webdataset's tar iterators",
        "Read the first shards of a local prepared dataset into samples (no decoding) with our tar reader and "
        "with webdataset's (tar_file_expander + group_by_keys), and plain reads of the same bytes as the limit; "
        "ratio_vs_webdataset = webdataset's time per sample / ours.",
    ),
    "storage": Bench(
        "StorageBenchConfig",
        "storage:run_storage_bench",
        "storage:format_result",
        "the loader from S3 (SeaweedFS on 127.0.0.1) per client (s3fs, pyarrow, obstore) vs local disk",
        "Upload the first shards of a local prepared dataset to a SeaweedFS server started on 127.0.0.1, then time "
        "create_loader epochs from local disk and from s3:// through each client of --clients (fsspec = s3fs, "
        "pyarrow, obstore), interleaved over rounds. Reports img/s, CPU ms per image of the loader's processes and "
        "of the server, and the wall and CPU ratios to local disk (target: >= 0.9 at equal CPU).",
    ),
    "train": Bench(
        "BenchTrainConfig",
        "train:bench_train",
        "train:format_text",
        "model-zoo row (maximal batch, train/infer img/s) and loader-fed vs synthetic training img/s",
        "Without --batch-size, find the maximal training batch by search (doubling, then bisection on "
        "out-of-memory; on CPU --max-batch caps it) and time at 90% of it, as the original's model-zoo table did. "
        "Train a timm model for --steps steps on synthetic device tensors and time inference on the same batch; "
        "with --data/--make-data also train fed by create_loader (--gpu-decode: JPEG bytes decoded and augmented "
        "on the device) and report the loader-fed/synthetic ratio. Prints the row with the original table's "
        "columns and its ratio against the original's V100 figure for the model (a cross-machine reference), "
        "then one JSON line (--json: the JSON line only). --make-data first writes a synthetic prepared dataset.",
    ),
    "infer": Bench(
        "BenchInferConfig",
        "train:bench_infer",
        "train:format_text",
        "maximal inference batch and inference img/s at 90%% of it (model-zoo row)",
        "Find the maximal inference batch by search (doubling, then bisection on out-of-memory; on CPU "
        "--max-batch caps it), then time inference (eval mode, no grad, autocast) on synthetic device tensors at "
        "90% of it. Prints the row with the original table's columns (the training column is left to bench "
        "train) and the ratio against the original's V100 inference figure (a cross-machine reference), then "
        "one JSON line (--json: the JSON line only).",
    ),
}


def _function(spec: str):
    module, name = spec.split(":")
    return getattr(importlib.import_module(f"in21k.benchmarks.{module}"), name)


def _bench(args: argparse.Namespace) -> int:
    from in21k.benchmarks import options

    bench = BENCHES[args.bench_command]
    cfg = config_from_args(args, getattr(options, bench.config))
    if print_config_requested(args, cfg):
        return 0
    result = _function(bench.run)(cfg)
    if args.json:
        print(json.dumps(result))
    elif bench.text is not None:
        print(_function(bench.text)(result))
    else:
        width = max(map(len, result))
        print("\n".join(f"{k:<{width}}  {v}" for k, v in result.items()))
    return 0


def register(commands) -> None:
    from in21k.benchmarks import options

    for name, bench in BENCHES.items():
        parser = commands.add_bench(name, help=bench.help, description=bench.description)
        add_config_args(parser, getattr(options, bench.config))
        parser.add_argument("--json", action="store_true", help="print one JSON object only")
        parser.set_defaults(func=_bench)
