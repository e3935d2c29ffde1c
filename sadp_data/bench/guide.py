"""The list of ``sadp-data bench`` suites a user sees: each name, how long it runs and what it measures.

``sadp-data bench`` without a suite name prints ``format_suite_list()`` instead of starting a run, and
the command's ``--help`` describes its SUITE argument with ``suite_help()``; both read ``SUITE_GUIDE``.
"""

from __future__ import annotations

#: Every name ``sadp-data bench`` takes: how long it runs at full size on the 2-core CPU of
#: ``bench/results`` (each result's ``run.wall_s``) and what it measures. ``sadp-data bench`` without
#: a name prints this list (``format_suite_list``) and the command's ``--help`` shows it.
SUITE_GUIDE: dict[str, tuple[str, str]] = {
    "loader": (
        "about 4 min",
        "epoch time and samples/s of importance-sampled loading against the plain loader of the data backend "
        "--backend names (default webdataset; all: torch, webdataset, ffcv and dvs, about 7 min; remote only "
        "when named)",
    ),
    "kernels": (
        "about 1 min",
        "plan_epoch time and memory of the sampling kernels --backends names, against torch.randperm, numpy "
        "choice and torch.multinomial",
    ),
    "store": ("about 30 s", "score-store update throughput, memory per example, hook overhead"),
    "score": (
        "about 2 min",
        "fidelity of the importance scores to exact per-example gradient norms (--zoo: over spikingjelly, snntorch "
        "and norse networks, with the scorer's cost, about 20 min)",
    ),
    "train": ("about 40 min", "end-to-end accuracy and speedup of every method"),
    "all": ("about 50 min", "every suite above, in that order (with --quick: a few minutes)"),
    "frontier": (
        "about 2 h",
        "only when named: accuracy against cost of every method and SADP's ablation, paired over 5 seeds "
        "(10 in the contested cells), with FRONTIER.md and plots beside its JSON",
    ),
    "scale": (
        "about 1 min",
        "only when named (needs about 12 GB of memory): per-rank memory and plan time of the partitioned score "
        "table vs the replicated one, 4 gloo ranks at N = 10^8",
    ),
    "report": ("seconds", "write REPORT.md and plots from the JSON in --json DIR"),
}


def suite_help() -> str:
    """The help of ``sadp-data bench``'s SUITE argument: every name, its rough duration and what it measures."""
    return "; ".join(f"{name} ({duration}): {text}" for name, (duration, text) in SUITE_GUIDE.items())


def format_suite_list() -> str:
    """What ``sadp-data bench`` prints when no suite is named: one line per suite, then how to run."""
    lines = ["Benchmark suites (times at full size on a 2-core CPU; --quick runs a small version):"]
    lines += [f"  {name:<9} {duration:<13} {text}" for name, (duration, text) in SUITE_GUIDE.items()]
    lines += [
        "Run some: sadp-data bench SUITE [SUITE ...] [--quick] [--json DIR]",
        "Run every suite: sadp-data bench all --json DIR   (sadp-data bench --help: every flag)",
    ]
    return "\n".join(lines)
