"""The ``sadp-data`` command line: ``demo`` and ``bench`` (``convert`` and ``info`` are planned)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _demo(args: argparse.Namespace) -> int:
    from .demo import DemoConfig, format_table, plot, run_demo, write_json

    config = DemoConfig.quick() if args.quick else DemoConfig()
    for name in ("epochs", "keep_ratio", "seed", "train_size", "batch_size"):
        value = getattr(args, name)
        if value is not None:
            setattr(config, name, value)
    result = run_demo(config, data_dir=args.data, show_progress=not args.no_progress)
    print(format_table(result))
    if args.json:
        write_json(result, args.json)
        print(f"figures written to {args.json}")
    if args.plot:
        plot(result, args.plot)
        print(f"plot written to {args.plot}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    if args.suite == "score":
        from sadp_data.bench.score import ScoreBenchConfig, format_score_table, plot_scores, run_score_bench

        config = ScoreBenchConfig.quick() if args.quick else ScoreBenchConfig()
        result = run_score_bench(config, data_dir=args.data, show_progress=not args.no_progress)
        print(format_score_table(result))
        if args.plot:
            plot_scores(result, args.plot)
            print(f"plot written to {args.plot}")
        result = {key: value for key, value in result.items() if not key.startswith("_")}
    else:
        from sadp_data.bench.kernels import SIZES, format_kernel_table, run_kernel_bench

        sizes = (10**5, 10**6) if args.quick else SIZES
        backends = tuple(name.strip() for name in args.backends.split(",") if name.strip())
        result = run_kernel_bench(sizes, backends, device=args.device, progress=not args.no_progress)
        print(format_kernel_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"figures written to {args.json}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sadp-data", description="Spike-aware data pruning for SNN training.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="train a conv SNN on Fashion-MNIST: full data vs random pruning vs SADP",
        description="Train a spiking CNN on the Fashion-MNIST copy shipped in the repository with full "
        "data, random dynamic pruning and SADP, and print accuracy, time and speedups.",
    )
    demo.add_argument("--quick", action="store_true", help="a ≤ 2 min run on a subset (4 epochs, 4,000 images)")
    demo.add_argument("--data", help="IDX folder (default: the repository's data/fashion-mnist)")
    demo.add_argument("--json", help="write all figures to this JSON file")
    demo.add_argument("--plot", help="write accuracy vs training time to this PNG file")
    demo.add_argument("--epochs", type=int, help="override the number of epochs")
    demo.add_argument("--keep-ratio", type=float, help="fraction of examples per pruned epoch (default 0.7)")
    demo.add_argument("--seed", type=int, help="seed of weights and sampling (default 0)")
    demo.add_argument("--train-size", type=int, help="number of training images used")
    demo.add_argument("--batch-size", type=int, help="batch size (default 128)")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    demo.set_defaults(handler=_demo)

    bench = commands.add_parser(
        "bench", help="run a benchmark suite", description="Run a benchmark suite and print its figures."
    )
    bench.add_argument(
        "suite",
        choices=["score", "kernels"],
        help="score: fidelity of the importance scores and their overhead; kernels: plan_epoch time and memory "
        "per backend against torch.randperm, numpy choice and torch.multinomial",
    )
    bench.add_argument(
        "--backends", default="numba,numpy,torch", help="kernels: comma-separated backends (numba, numpy, torch, cuda)"
    )
    bench.add_argument("--device", default="cpu", help="kernels: device of the torch backend and baselines")
    bench.add_argument("--quick", action="store_true", help="a small, fast version (a smoke test)")
    bench.add_argument("--json", help="write all figures to this JSON file")
    bench.add_argument("--plot", help="write the suite's figure to this PNG file")
    bench.add_argument("--data", help="Fashion-MNIST IDX folder (default: the repository's copy)")
    bench.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    bench.set_defaults(handler=_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        parser.exit(2, f"sadp-data {args.command}: error: {error}\n")


if __name__ == "__main__":
    sys.exit(main())
