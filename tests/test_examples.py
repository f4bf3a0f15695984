"""The examples run as documented and tell the truth."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_embed_host_example_refuses_the_second_host(backend: str) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "embed_host.py"), backend], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "host-b refused: resource disk:/images/web.qcow2 is busy" in result.stdout
    assert "host-b runs web: [('disk:/images/web.qcow2', 3)]" in result.stdout


def test_libvirt_sequence_example_acquires_and_releases() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "libvirt_sequence.py")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "acquired: [('disk:/var/lib/libvirt/images/demo.img', 1)]" in result.stdout
    assert "released; records: [('disk:/var/lib/libvirt/images/demo.img', 0)]" in result.stdout
