"""Run a script as N local CPU processes under ``jax.distributed`` (``tvvar.sharding.initialize_distributed`` reads
the coordinator, the process count and the process id from the environment): what the multi-process tests share."""

import os
import socket
import subprocess
import sys
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_processes(script: Path, args: list[str], cwd: Path, *, num_processes: int = 2, devices: int = 1,
                  timeout: float = 300) -> list[str]:
    """Start ``num_processes`` copies of ``script args`` (``devices`` fake CPU devices each, one coordinator on a free
    port), wait for all, kill any left on a timeout; every one must exit 0 (else AssertionError with its output's
    tail). Returns their outputs."""
    port = free_port()
    procs = []
    for pid in range(num_processes):
        env = {**os.environ, "JAX_NUM_CPU_DEVICES": str(devices), "TVVAR_COORDINATOR": f"localhost:{port}",
               "TVVAR_NUM_PROCESSES": str(num_processes), "TVVAR_PROCESS_ID": str(pid)}
        procs.append(subprocess.Popen([sys.executable, str(script), *args], env=env, cwd=cwd,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    try:
        outs = [p.communicate(timeout=timeout)[0].decode() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, o in zip(procs, outs, strict=True):
        assert p.returncode == 0, o[-3000:]
    return outs
