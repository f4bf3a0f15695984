"""A million hostile frames at a real host's peer socket, CURVE on (issue 10).

Hosts a and b join one memory lockspace in this process, each with its
own CURVE key; a runs a guest (a sleeping process) holding two disk
leases. A hostile peer that signs with a's key (so b authenticates it as a
host of the lockspace, the worst CURVE allows) sends b random bytes,
mutated valid frames, well-formed maps with bad fields, valid messages out
of order, real PREPAREs of a's leases with their COMMIT/CANCEL out of turn,
msgpack headers promising huge lengths, and now and then a frame over the
size limit; a stranger whose key b does not allow tries too (see
``actorlock.testing.peer_fuzz``).

Printed: frames/s (the client and the host share this process and its
GIL), answered/unanswered frames by kind, RSS at start, after the first
10% of frames (warm) and at the end, and the checks: a's lease records
unchanged, no incoming migration left on b, no domain started on b, no
lockspace loss, b renewing throughout, and a real migration a -> b after.

It has no floor row: it is a robustness run, judged by its checks (the
exit status is 1 if one fails); its table gives the rate and the memory.

    python benchmarks/bench_peer_fuzz.py [--frames 1000000] [--seed 1] [--workers 32] [--backend trio]
                                        [--json out.json]
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
import time

import anyio
from benchtable import Table

from actorlock.testing.peer_fuzz import FuzzOutcome, fuzz_real_host, rss_kib


async def run(frames: int, seed: int, workers: int, guest_pid: int, keys: str) -> FuzzOutcome:
    started = time.monotonic()

    def progress(done: int) -> None:
        elapsed = time.monotonic() - started
        rate = done / elapsed
        print(f"  {done:>9} frames  {elapsed:7.1f}s  {rate:8.0f} frames/s  RSS {rss_kib()} KiB", flush=True)

    return await fuzz_real_host(
        frames, seed=seed, key_dir=keys, guest_pid=guest_pid, workers=workers, progress=progress
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=32, help="requests the hostile peer keeps in flight")
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument("--json", default=None, help="also write the rows and checks to this JSON file")
    args = parser.parse_args()
    # The host's warnings about refused frames are rate-limited; keep them off the figures.
    logging.basicConfig(level=logging.ERROR)
    print(f"{args.frames} hostile frames, seed {args.seed}, {args.workers} in flight, {args.backend}")
    guest = subprocess.Popen(["sleep", "86400"])
    try:
        with tempfile.TemporaryDirectory() as keys:
            options = (args.frames, args.seed, args.workers, guest.pid, keys)
            outcome = anyio.run(run, *options, backend=args.backend)
    finally:
        guest.kill()
        guest.wait()
    report = outcome.report
    print(f"sent {report.sent} in {report.seconds:.1f}s: {report.rate:.0f} frames/s")
    print(f"answered {report.answered}, unanswered {report.unanswered} (responses sent as requests,")
    print("  mutated frames that became valid responses, oversized frames, drops over a limit)")
    print("by kind: " + ", ".join(f"{k} {n}" for k, n in sorted(report.by_kind.items())))
    print(f"stranger (key not allowed) attempts: {outcome.stranger_frames}")
    growth = outcome.rss_end_kib - outcome.rss_warm_kib
    print(
        f"RSS KiB: start {outcome.rss_start_kib}, warm {outcome.rss_warm_kib}, end {outcome.rss_end_kib}; "
        f"growth after warm-up {growth} KiB"
    )
    checks = {
        "a's lease records unchanged": outcome.leases_after == outcome.leases_before,
        "no incoming migration left on b": outcome.incoming_after == 0,
        "no domain started on b": outcome.domains_after == (),
        "no lockspace loss": outcome.losses == 0,
        f"b renewed during the run ({outcome.renewals} times)": outcome.renewals > 0,
        "a real migration a -> b afterwards": outcome.migrated_after,
    }
    for what, ok in checks.items():
        print(f"  {'ok  ' if ok else 'FAIL'} {what}")
    table = Table(f"bench_peer_fuzz ({args.backend}, {args.workers} in flight)", unit="per s or KiB")
    table.add("hostile frames/s", report.rate, extra={"frames": report.sent, "seconds": report.seconds})
    table.add("RSS KiB, warm", outcome.rss_warm_kib)
    table.add("RSS KiB, end", outcome.rss_end_kib, floor="RSS KiB, warm")
    for what, ok in checks.items():
        table.note(f"check {'ok' if ok else 'FAILED'}: {what}")
    table.write_json(args.json)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
