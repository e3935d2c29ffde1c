"""The ``demo`` and ``bench`` commands of ``sadp-data`` (the parser is ``sadp_data.cli``'s): run and report."""

from __future__ import annotations

import argparse


def demo_command(args: argparse.Namespace) -> int:
    """``sadp-data demo``: train full, random and SADP runs of the demo, print the summary, write what was asked."""
    from sadp_data.bench.demo import DemoConfig, plot, run_demo, summary, write_json

    config = DemoConfig.for_dataset(args.dataset, quick=args.quick)
    for name in ("epochs", "keep_ratio", "seed", "train_size", "batch_size"):
        value = getattr(args, name)
        if value is not None:
            setattr(config, name, value)
    progress = not args.no_progress
    result = run_demo(config, args.data, show_progress=progress, command=args.command_line, quick=args.quick)
    print(summary(result))
    if args.json:
        write_json(result, args.json)
        print(f"figures written to {args.json}")
    if args.plot:
        plot(result, args.plot)
        print(f"plot written to {args.plot}")
    return 0


def _names(value: str | None) -> tuple[str, ...] | None:
    """A comma-separated flag value as a tuple of names (``None`` when the flag was not given)."""
    return None if value is None else tuple(name.strip() for name in value.split(",") if name.strip())


def bench_command(args: argparse.Namespace) -> int:
    """``sadp-data bench``: the suite list without arguments, else the report, a re-summary or the named suites.

    Flag combinations that make no sense raise ``ValueError`` naming the flag.
    """
    from sadp_data.bench.suite import BenchOptions, default_results_dir, resolve_suites, run_suites

    if not args.suite and not (args.json or args.quick):
        from sadp_data.bench.guide import format_suite_list

        print(format_suite_list())
        return 0
    if "report" in args.suite:
        if args.suite != ["report"]:
            raise ValueError("`bench report` runs alone: sadp-data bench report [--json DIR] [--out PATH]")
        from sadp_data.bench.report import write_report

        folder = args.json or str(default_results_dir())
        out = write_report(folder, args.out, command=args.command_line)
        print(f"report written to {out}")
        return 0
    if args.resummarise:
        if args.suite != ["frontier"] or not args.json:
            raise ValueError(
                "--resummarise needs the frontier suite and its JSON: bench frontier --resummarise --json PATH"
            )
        from sadp_data.bench.frontier import format_frontier_table, resummarise, write_frontier_report

        result = resummarise(args.json)
        print(format_frontier_table(result))
        print(f"summary and targets recomputed in {args.json}; report written to {write_frontier_report(args.json)}")
        return 0
    if args.out:
        raise ValueError("--out belongs to `bench report`")
    if args.seeds is not None and args.seeds <= 0:
        raise ValueError(f"--seeds must be positive, got {args.seeds}")
    options = BenchOptions(
        quick=args.quick,
        data=args.data,
        nmnist=args.nmnist,
        backend=args.backend,
        backends=args.backends,
        device=args.device,
        plot=args.plot,
        progress=not args.no_progress,
        methods=_names(args.methods),
        datasets=_names(args.datasets),
        seeds=args.seeds,
        train_size=args.train_size,
        epochs=args.epochs,
        command=args.command_line,
        zoo=args.zoo,
    )
    run_suites(resolve_suites(args.suite), options, args.json)
    return 0
