"""The ``actorlock`` command: thin, argv -> config -> anyio.run."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import anyio

from .errors import ActorlockError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="actorlock",
        description="Lease-based lock coordinator for virtual-machine hosts.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="run the guest lifecycle end to end and print a timeline",
        description=(
            "Run libvirt's lock-manager sequences (start, hotplug, unplug, pause/resume, "
            "restart-and-attach, shutdown) on two simulated hosts sharing a file lockspace, "
            "and show a second host refused while the first holds the disk."
        ),
    )
    demo.add_argument(
        "--lockspace",
        type=Path,
        help="existing lockspace directory to use (default: a new temporary directory)",
    )
    demo.add_argument(
        "--backend", choices=("file", "memory"), default="file", help="lease backend (default: file)"
    )
    demo.add_argument("--trio", action="store_true", help="run on trio instead of asyncio")

    keygen = sub.add_parser(
        "keygen",
        help="write a CURVE key pair for [peer] key_file; print the public key",
        description=(
            "Write a new CURVE key pair to PATH (mode 0600) for the [peer] key_file setting, and "
            "print the public key (Z85) for the other hosts' [peer] allowed_keys. The secret key "
            "is never printed."
        ),
    )
    keygen.add_argument("path", type=Path, help="where to write the key file (must not exist)")

    sim = sub.add_parser(
        "sim",
        help="run randomized fault-injection scenarios on simulated hosts and check safety",
        description=(
            "Run K seeded random scenarios (starts, stops, hotplugs, pauses, host and coordinator "
            "crashes, host pauses, backend failures and stalls, and storage faults with a duration: "
            "stalled storage, slow operations, a saturated worker pool, slow state writes, delays "
            "between a read and its judgement, with coordinator restarts inside them) on N simulated "
            "hosts, judge each history with the safety checker, print scenarios run, faults injected, "
            "a line 'faults: KIND=N ...', operations done and a line 'violations: V'; exit 1 on any "
            "violation."
        ),
    )
    sim.add_argument("--hosts", type=int, default=3, help="simulated hosts per scenario, 3 to 5 (default 3)")
    sim.add_argument("--scenarios", type=int, default=100, help="scenarios to run (default 100)")
    sim.add_argument("--seed", type=int, default=0, help="seed of the first scenario (default 0)")
    sim.add_argument(
        "--backend", choices=("memory", "file"), default="memory", help="lease backend (default memory)"
    )
    sim.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")

    chaos = sub.add_parser(
        "chaos",
        help="run host processes on loopback under kill -9, SIGSTOP/SIGCONT and restarts; check safety",
        description=(
            "Start host processes sharing a file lockspace on loopback, start, migrate and stop guests "
            "while sending kill -9, SIGSTOP/SIGCONT and restarts to the hosts, then judge the merged "
            "history with the safety checker; prints 'violations: V' and exits 1 on any violation."
        ),
        add_help=False,
    )
    del chaos  # listed for --help; its own options are parsed by main_chaos (see main)
    sub.add_parser(
        "explore",
        help="explore every interleaving of the migration handoff up to a bound; check invariants",
        add_help=False,
    )

    leases = sub.add_parser(
        "leases",
        help="show who holds what in a file lockspace",
        description=(
            "List every lease record (resource, mode, owner host, domain, fencing token) "
            "and every host with its liveness as observed from here."
        ),
    )
    leases.add_argument("--lockspace", type=Path, help="the lockspace directory (file backend)")
    leases.add_argument(
        "--etcd",
        action="append",
        metavar="URL",
        help="an etcd member's client URL (repeat for failover): read the etcd lockspace at --prefix",
    )
    leases.add_argument("--prefix", help="the etcd lockspace's key prefix ([etcd] prefix)")
    leases.add_argument(
        "--observe",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="watch host records this long to tell renewing hosts from stale ones (default 1.0; 0 skips)",
    )
    leases.add_argument("--json", action="store_true", help="print JSON instead of tables")
    leases.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="a host's [host] state_dir: also show which of its guests have a pid to fence "
        "(a domain holding leases with no guest pid is marked unfenceable)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["chaos"]:
        # Its options belong to the chaos runner, which has its own parser.
        from ._verify.chaos import main_chaos

        return main_chaos(argv[1:])
    if argv[:1] == ["explore"]:
        from ._verify.explore import main_explore

        return main_explore(argv[1:])
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            from .demo import run_demo

            backend = "trio" if args.trio else "asyncio"
            anyio.run(run_demo, args.lockspace, args.backend, print, backend=backend)
            return 0
        if args.command == "sim":
            from ._verify.scenarios import main_sim

            if not 1 <= args.hosts <= 16 or args.scenarios < 1 or args.jobs < 1:
                print("actorlock sim: --hosts 1..16; --scenarios and --jobs at least 1", file=sys.stderr)
                return 2
            return main_sim(args.hosts, args.scenarios, args.seed, print, args.backend, args.jobs)
        if args.command == "keygen":
            from .transport.zmq import KeyPair, generate_keypair, save_keypair

            if args.path.exists():
                print(f"actorlock keygen: {args.path} already exists; not overwriting it", file=sys.stderr)
                return 1
            keys = KeyPair(*generate_keypair())
            try:
                save_keypair(args.path, keys)
            except OSError as exc:
                print(f"actorlock keygen: cannot write {args.path}: {exc.strerror}", file=sys.stderr)
                return 1
            print(keys.public)
            return 0
        if args.command == "leases":
            from .lockspace_report import lockspace_report

            if args.observe < 0:
                print("actorlock leases: --observe must not be negative", file=sys.stderr)
                return 2
            one_place = (args.lockspace is None) != (args.etcd is None)
            if not one_place or (args.etcd is not None) != bool(args.prefix):
                usage = "give --lockspace DIR, or --etcd URL with --prefix P"
                print(f"actorlock leases: {usage}", file=sys.stderr)
                return 2
            if args.etcd is not None:
                from .lockspace_report import etcd_reader

                reader = etcd_reader(args.etcd, args.prefix)
                where = f"etcd {' '.join(args.etcd)} prefix {args.prefix}"
                report = anyio.run(
                    functools.partial(lockspace_report, where, args.observe, args.state_dir, backend=reader)
                )
            else:
                report = anyio.run(lockspace_report, args.lockspace, args.observe, args.state_dir)
            print(json.dumps(report.to_json(), indent=2) if args.json else report.to_text())
            return 0
    except ActorlockError as exc:
        print(f"actorlock {args.command}: {exc}", file=sys.stderr)
        return 1
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
