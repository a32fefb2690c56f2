"""`ftc train --nproc N`: validate and prepare once here, then re-launch under torchrun."""

from __future__ import annotations

import os
import subprocess
import sys

from fine_tune_cli.errors import DistributedError


def torchrun_command(nproc: int, train_args: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "fine_tune_cli",
        "train",
        *train_args,
    ]


def relaunch_with_torchrun(nproc: int, train_args: list[str]) -> dict[str, object]:
    """Run the workers; a failed worker is a distributed failure (exit 9)."""
    env = dict(os.environ)
    # N processes with default threading oversubscribe the cores (tens of times slower).
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    # Workers' stdout (their own summaries) is relayed to our stderr, so that with --json
    # our stdout still carries exactly one object.
    with subprocess.Popen(
        torchrun_command(nproc, train_args), env=env, stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stderr.write(line)
        code = proc.wait()
    if code != 0:
        raise DistributedError(
            f"torchrun with {nproc} processes failed (exit {code}); see the run's train.log"
        )
    return {"processes": nproc}
