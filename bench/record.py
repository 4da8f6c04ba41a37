"""Every benchmark once, briefly, with the host it ran on: the docs' performance page (``python -m bench.record``).

``python -m bench.record docs/data/bench.json`` runs, each with its own ``--json``:

- ``bench.sim_exits`` (the simulator next to raw Unicorn; ``--repeat`` repetitions, no breakdown);
- ``bench.io_exit`` (KVM's IO-exit round trip: hvcore, a bare ioctl loop, a C loop), where KVM is usable;
- ``bench.workloads`` (SeaBIOS and Linux on hvcore and QEMU, one run each unless ``--workload-repeat``),

and writes one JSON file: when and where it was measured (kernel, CPU, KVM module, CPU count,
Python, Unicorn), the command, and each benchmark's own JSON (``null`` with the reason when it could
not run). The docs build renders that file (``docs/tables.py``) and never runs a benchmark itself:
a timing belongs to the host it was taken on, and the page says which one.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import io_exit, sim_exits, workloads
from hvcore.host import host_identity

__all__ = ["host_record", "main"]

FORMAT = 1
"""The version of the file's layout (``docs/tables.py`` reads it)."""


def host_record() -> dict[str, Any]:
    """The host the numbers belong to: its names (``hvcore.host.host_identity``), CPUs, Python and Unicorn."""
    identity = host_identity()
    try:
        unicorn = metadata.version("unicorn")
    except metadata.PackageNotFoundError:
        unicorn = "not installed"
    return {
        "kernel": identity.kernel,
        "cpu_vendor": identity.cpu_vendor,
        "cpu_model": identity.cpu_model,
        "kvm_module": identity.kvm_module,
        "cpus": os.cpu_count(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "unicorn": unicorn,
    }


def _run(name: str, main: Callable[[Sequence[str]], int], argv: list[str], out: Path) -> tuple[Any, str | None]:
    """Run one benchmark's ``main`` with ``--json out``: (its JSON, None), or (None, why there is none)."""
    print(f"== bench.record: python -m bench.{name} {' '.join(argv)}", flush=True)
    status = main([*argv, "--json", str(out)])
    if not out.exists():
        return None, f"bench.{name} wrote no results (exit status {status}; see its output)"
    return json.loads(out.read_text()), None


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: run the benchmarks, write the file. Exit status 0 unless the arguments were bad."""
    parser = argparse.ArgumentParser(prog="python -m bench.record", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("output", type=Path, help="the JSON file to write (the docs read docs/data/bench.json)")
    parser.add_argument("--repeat", type=int, default=5, help="repetitions of the exit benchmarks (%(default)s)")
    parser.add_argument("--workload-repeat", type=int, default=1, help="runs per workload row (%(default)s)")
    parser.add_argument("--linux-timeout", type=float, default=90.0, help="seconds per Linux run (%(default)s)")
    parser.add_argument("--only", default=",".join(workloads.WORKLOADS), help="workloads (%(default)s)")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.workload_repeat < 1:
        parser.error("--repeat and --workload-repeat must be at least 1")
    command = "python -m bench.record " + " ".join(sys.argv[1:] if argv is None else argv)
    record: dict[str, Any] = {
        "format": FORMAT,
        "recorded": datetime.date.today().isoformat(),
        "command": command,
        "host": host_record(),
    }
    repeat = ["--repeat", str(args.repeat)]
    with tempfile.TemporaryDirectory(prefix="hvcore-record-") as tmp:
        runs: list[tuple[str, Callable[[Sequence[str]], int], list[str]]] = [
            ("sim_exits", sim_exits.main, [*repeat, "--no-breakdown"]),
            ("io_exit", io_exit.main, [*repeat, "--no-breakdown"]),
            ("workloads", workloads.main, ["--only", args.only, "--repeat", str(args.workload_repeat),
                                           "--linux-timeout", str(args.linux_timeout)]),
        ]  # fmt: skip
        for name, bench_main, bench_argv in runs:
            result, reason = _run(name, bench_main, bench_argv, Path(tmp) / f"{name}.json")
            record[name] = result
            if reason is not None:
                record[f"{name}_missing"] = reason
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
