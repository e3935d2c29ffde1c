"""The ``sadp-data`` command line: ``demo``, ``convert``, ``index``, ``info`` and ``bench``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__
from .remote import is_remote

#: Help of the ``--storage-options`` flag of the commands that take remote URLs.
STORAGE_OPTIONS_HELP = (
    "JSON object of fsspec filesystem options for remote URLs, e.g. "
    '\'{"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}\' (default: the filesystem\'s own configuration)'
)


def _demo(args: argparse.Namespace) -> int:
    from sadp_data.bench.command import demo_command

    return demo_command(args)


def _bench(args: argparse.Namespace) -> int:
    from sadp_data.bench.command import bench_command

    return bench_command(args)


def _convert(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .shards.parallel_convert import check_workers
    from .shards.writer import write_shards
    from .sources import open_source

    if check_workers(args.workers) > 1 and args.format == "ffcv":
        raise ValueError(f"--workers {args.workers}: parallel conversion writes WebDataset shards, not --format ffcv")
    with tqdm(total=1, desc="read source", unit="source", disable=args.no_progress) as bar:
        source = open_source(args.source, split=args.split, frames=args.frames)
        if args.limit is not None:
            source = source.head(args.limit)
        bar.update()
    if args.format == "ffcv":
        from sadp_data.adapters.ffcv import beton_fingerprint, sidecar_path, write_beton

        beton = write_beton(source, args.out, overwrite=args.overwrite)
        print(
            f"{len(source)} examples in {beton} ({beton.stat().st_size / 1e6:.1f} MB); fingerprint "
            f"{beton_fingerprint(beton)}; score sidecar {sidecar_path(beton)}"
        )
        return 0
    options = {"shard_size": args.shard_size, "name": args.name, "progress": not args.no_progress}
    options.update(overwrite=args.overwrite, workers=args.workers)
    if is_remote(args.out):
        from .shards.publish import publish_shards

        index = publish_shards(source, args.out, storage_options=_storage_options(args), **options)
    else:
        index = write_shards(source, args.out, **options)
    _print_written(index, "at", args.out)
    return 0


def _storage_options(args: argparse.Namespace, flag: str = "storage_options") -> dict | None:
    """``--storage-options`` (or another such ``flag``) parsed as a JSON object (fsspec filesystem
    arguments), or ``None``."""
    import json

    text = getattr(args, flag, None)
    name = "--" + flag.replace("_", "-")
    if not text:
        return None
    try:
        options = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{name} is not valid JSON: {error}") from error
    if not isinstance(options, dict):
        raise ValueError(f"{name} must be a JSON object, got {text!r}")
    return options


def _index(args: argparse.Namespace) -> int:
    from .shards.indexing import index_shards

    index = index_shards(
        args.shards,
        args.out,
        name=args.name,
        progress=not args.no_progress,
        overwrite=args.overwrite,
        storage_options=_storage_options(args),
    )
    _print_written(index, "indexed at", args.out)
    from .remote import covers

    folder = index.shard_location
    if not covers(args.out, folder):
        print(
            f"the shards lie outside {args.out}, so readers must trust their folder: sadp-data info {args.out} "
            f"--trust-shard-root {folder.url}, or ShardIndex.load / ScoredShards(..., trusted_roots=[{folder.url!r}])"
            + (" with shard_storage_options for it" if folder.remote else "")
        )
    return 0


def _print_written(index, where: str, out: str) -> None:
    """One line on scored shards just written or indexed: size, fingerprint, sidecar."""
    total = sum(shard["bytes"] for shard in index.shards)
    print(
        f"{index.num_examples} examples in {len(index.shards)} shards ({total / 1e6:.1f} MB) {where} {out}; "
        f"fingerprint {index.fingerprint}; score sidecar {index.sidecar_path()}"
    )


def _info(args: argparse.Namespace) -> int:
    import numpy as np

    from .shards import ShardError, ShardIndex

    index = ShardIndex.load(
        args.path,
        storage_options=_storage_options(args),
        trusted_roots=args.trust_shard_root or (),
        shard_storage_options=_storage_options(args, "shard_storage_options"),
    )
    store = index.open_store("r+" if index.location.remote else "r")
    shards = index.shards
    sizes = [shard["bytes"] for shard in shards]
    seen = store.seen()
    scored = seen > 0
    print(f"{args.path}: {index.meta['name']} from {index.meta['source']}")
    print(f"  examples     {index.num_examples:,}   fields {', '.join(index.meta['fields'])}")
    print(
        f"  shards       {len(shards)} x up to {index.shard_size:,} samples, {sum(sizes) / 1e6:.1f} MB "
        f"(min {min(sizes) / 1e6:.2f}, max {max(sizes) / 1e6:.2f} MB per shard)"
    )
    print(f"  fingerprint  {index.fingerprint}")
    print(
        f"  scored       {int(scored.sum()):,} of {index.num_examples:,} ({100 * scored.mean():.1f} %), "
        f"score updates {int(seen.sum()):,}, store version {store.version}"
    )
    if scored.any():
        values = store.scores()[scored]
        q05, q50, q95 = np.quantile(values, [0.05, 0.5, 0.95])
        print(
            f"  scores       mean {values.mean():.4g}  p5 {q05:.4g}  median {q50:.4g}  p95 {q95:.4g}  "
            f"max {values.max():.4g}"
        )
        print(f"  last epoch   {int(store.last_epoch().max())}")
    history = store.keep_ratio_history
    if history:
        print("  keep ratios  " + ", ".join(f"e{epoch}:{ratio:g}" for epoch, ratio in history[-8:]))
    store.close()
    if args.verify:
        from .shards import verify_shards

        bad = verify_shards(index)
        if bad:
            raise ShardError(
                f"{len(bad)} of {len(index.shards)} shards differ from their SHA-256 in index.json: {bad[:5]}"
            )
        print(f"  verified     all {len(index.shards)} shards match their SHA-256")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from sadp_data.bench.guide import suite_help
    from sadp_data.bench.training_data import option_help

    parser = argparse.ArgumentParser(prog="sadp-data", description="Spike-aware data pruning for SNN training.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}", help="print the version")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="train a conv SNN on Fashion-MNIST: full data vs random pruning vs SADP",
        description="Train a spiking CNN on the Fashion-MNIST copy shipped in the repository with full "
        "data, random dynamic pruning and SADP, and print accuracy, time and speedups.",
    )
    demo_help = option_help()
    demo.add_argument("--quick", action="store_true", help=demo_help["quick"])
    demo.add_argument(
        "--dataset",
        default="fashion-mnist",
        choices=["fashion-mnist", "nmnist"],
        help="fashion-mnist (shipped) or nmnist (an N-MNIST folder given with --data) (default %(default)s)",
    )
    demo.add_argument("--data", help="data folder (default for fashion-mnist: the repository's data/fashion-mnist)")
    demo.add_argument("--json", help="write all figures to this JSON file")
    demo.add_argument("--plot", help="write accuracy vs training time to this PNG file")
    for flag in ("--epochs", "--keep-ratio", "--seed", "--train-size", "--batch-size"):
        name = flag[2:].replace("-", "_")
        demo.add_argument(flag, type=float if name == "keep_ratio" else int, help=demo_help[name])
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    demo.set_defaults(handler=_demo)

    convert = commands.add_parser(
        "convert",
        help="convert a dataset to scored shards (tar shards + index + score sidecar)",
        description="Convert an IDX folder, a .npz file (arrays x, y) or module:callable (a map-style "
        "dataset) into WebDataset shards with a byte-offset index and a Zarr score sidecar.",
    )
    convert.add_argument(
        "source", help="IDX folder, file.npz, module:callable, nmnist:PATH, tonic:NMNIST:PATH or tonic:DVSGesture:PATH"
    )
    convert.add_argument("out", help="output folder (must be new or empty), or a URL such as s3://bucket/prefix")
    convert.add_argument(
        "--format",
        default="webdataset",
        choices=["webdataset", "ffcv"],
        help="webdataset (OUT is a folder) or ffcv (OUT is a .beton file) (default %(default)s)",
    )
    convert.add_argument("--shard-size", type=int, default=10_000, help="samples per shard (default 10000)")
    convert.add_argument("--name", default="train", help="shard name prefix (default train)")
    convert.add_argument(
        "--split", default="train", choices=["train", "test"], help="split to convert (default %(default)s)"
    )
    convert.add_argument("--frames", type=int, help="event sources: store T integrated frames instead of raw events")
    convert.add_argument("--limit", type=int, help="convert only the first N examples")
    convert.add_argument("--overwrite", action="store_true", help="allow a non-empty output folder")
    convert.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="P",
        help="processes writing whole shards in parallel (default 1: serial); the output is byte-identical",
    )
    convert.add_argument("--storage-options", help=STORAGE_OPTIONS_HELP)
    convert.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    convert.set_defaults(handler=_convert)

    index = commands.add_parser(
        "index",
        help="index existing WebDataset shards as scored shards (the shards are not rewritten)",
        description="Read each tar shard once and write index.json, offsets.npy and a score sidecar into OUT "
        "(which may be the shards' folder). Samples are numbered by their index.cls member when every sample "
        "has one, else in shard order.",
    )
    index.add_argument("shards", nargs="+", help="shard paths or brace patterns, e.g. 'train-{000000..000009}.tar'")
    index.add_argument("out", help="folder for the index files and the sidecar")
    index.add_argument("--name", help="dataset name (default: the shards' file-name prefix)")
    index.add_argument("--overwrite", action="store_true", help="replace an existing index.json")
    index.add_argument("--storage-options", help=STORAGE_OPTIONS_HELP)
    index.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    index.set_defaults(handler=_index)

    info = commands.add_parser(
        "info",
        help="summarise scored shards and their scores",
        description="Print what a scored-shards folder or URL holds: examples and fields, shards and their sizes, "
        "the fingerprint, how many examples have a score and how the scores are spread, and the last keep "
        "ratios; --verify also reads every shard and checks it against its SHA-256 in index.json.",
    )
    info.add_argument("path", help="a scored-shards folder or URL written by `sadp-data convert`")
    info.add_argument("--storage-options", help=STORAGE_OPTIONS_HELP)
    info.add_argument(
        "--trust-shard-root",
        action="append",
        metavar="ROOT",
        help="a folder or URL outside PATH's folder (or origin) whose shards index.json may name (repeatable; "
        "`sadp-data index` prints it when the shards lie outside OUT); without it such an index is refused",
    )
    info.add_argument(
        "--shard-storage-options",
        help="JSON object of fsspec options for a trusted shard root on another origin (--storage-options "
        "are never sent there)",
    )
    info.add_argument("--verify", action="store_true", help="read every shard and check its SHA-256 against index.json")
    info.set_defaults(handler=_info)

    bench = commands.add_parser(
        "bench",
        help="run benchmark suites, or write their report",
        description="Run benchmark suites and print their figures: sadp-data bench SUITE [SUITE ...], every "
        "suite with sadp-data bench all, or write the report from their JSON: sadp-data bench report [--json DIR] "
        "[--out PATH]. Without a suite name it lists the suites and how long each takes (with --json or --quick "
        "and no name it runs all).",
    )
    bench.add_argument("suite", nargs="*", metavar="SUITE", help=suite_help())
    bench.add_argument(
        "--backends",
        default="numba,numpy,torch",
        help="kernels suite: the sampling-kernel backends whose plan_epoch is timed, comma-separated (numba, numpy, "
        "torch, cuda; default %(default)s); not --backend, which picks the loader suite's data backend",
    )
    bench.add_argument(
        "--backend",
        help="loader suite: the data-loading backend timed against its plain loader: torch, webdataset, ffcv, dvs, "
        "remote (S3 and HTTP on loopback servers; needs --nmnist) or all (default: webdataset alone; every available "
        "backend but remote when several suites run); not --backends, which lists the kernels suite's sampling "
        "kernels",
    )
    bench.add_argument(
        "--device", default="cpu", help="kernels suite: device of the torch backend and baselines (default %(default)s)"
    )
    bench.add_argument("--quick", action="store_true", help="a small, fast version (a smoke test)")
    bench.add_argument(
        "--json",
        help="one suite: write its figures to this .json file; several suites (or a folder): write DIR/<suite>.json; "
        "report: the folder to read (default bench/results)",
    )
    bench.add_argument("--out", help="report: the Markdown file to write (default: REPORT.md in the --json folder)")
    bench.add_argument("--plot", help="score: write its figure to this PNG file")
    bench.add_argument("--zoo", action="store_true", help="score: fidelity and cost over a model zoo (bench.score_zoo)")
    bench.add_argument("--data", help="Fashion-MNIST IDX folder (default: the repository's copy); dvs: N-MNIST folder")
    bench.add_argument(
        "--nmnist",
        help="N-MNIST folder for the dvs loader and the train and frontier suites (default: $SADP_NMNIST; "
        "without one they skip N-MNIST)",
    )
    bench.add_argument("--methods", help="train: comma-separated methods (default: every registered method)")
    bench.add_argument("--datasets", help="train: comma-separated datasets (default fashion-mnist,nmnist)")
    bench.add_argument(
        "--seeds",
        type=int,
        help="train, frontier: number of seeds (train: default 3, --quick 1; frontier: 5 for the whole grid "
        "and 5 more for the contested cells, --quick 2; with --seeds N, N seeds of the whole grid and "
        "the ablation, no contested cells)",
    )
    bench.add_argument("--train-size", type=int, help="train: training examples per dataset (override)")
    bench.add_argument("--epochs", type=int, help="train: epochs (override)")
    bench.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    bench.add_argument(
        "--resummarise",
        action="store_true",
        help="frontier: recompute the summary, targets, FRONTIER.md and plots from the runs in --json PATH "
        "(trains nothing)",
    )
    bench.set_defaults(handler=_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import shlex

    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["sadp-data", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.handler(args)
    except (FileNotFoundError, FileExistsError, ValueError, RuntimeError) as error:
        parser.exit(2, f"sadp-data {args.command}: error: {error}\n")
    except (OSError, KeyError, ImportError) as error:  # e.g. a permission, a source's missing key, an extra
        parser.exit(2, f"sadp-data {args.command}: error: {type(error).__name__}: {error}\n")


if __name__ == "__main__":
    sys.exit(main())
