"""What every benchmark script shares: the machine's description, peak memory, and running each
case in a fresh subprocess (so one case's peak memory or thread state does not leak into the next).

    from harness import machine_lines, PeakMemory, run_cases, worker_main

    def run_case(spec: dict) -> dict:          # runs inside the subprocess; spec and result are JSON
        meter = PeakMemory("cpu")
        meter.start()                            # reset the peak just before the measured work
        ...
        return {**spec, "seconds": ..., "peak_bytes": meter.peak(), "rise_bytes": meter.rise()}

    if __name__ == "__main__":
        if worker_main(sys.argv, run_case):      # `script.py --worker SPEC`: one case, then exit
            sys.exit(0)
        print("\\n".join(machine_lines("cpu")))
        results = run_cases(__file__, [{"name": "a"}, {"name": "b"}], timeout=600)

A failed or timed-out case comes back as `{**spec, "error": "..."}`, never as an exception.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MARKER = "@@RESULT "


# ----------------------------------------------------------------------------------------------
# the machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load_average() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1 / 5 / 15 min)"
    except OSError:
        return "n/a"


def machine_lines(device: str = "cpu") -> list[str]:
    """Versions, CPU (model, cores, SIMD capability torch uses), torch threads, load, and the GPU."""
    import torch

    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "n/a")()
    lines = [f"torch {torch.__version__}, python {platform.python_version()}, {platform.system()} {platform.machine()}",
             f"CPU: {cpu_model()}; {os.cpu_count()} logical CPUs ({usable_cores()} usable); capability {capability}; "
             f"torch threads {torch.get_num_threads()} intra-op / {torch.get_num_interop_threads()} inter-op",
             f"load average: {load_average()}"]
    if str(device).startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        lines.append(f"GPU: {device} = {props.name}, {props.total_memory / 2**30:.1f} GiB, CUDA {torch.version.cuda}")
    else:
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
        lines.append(f"device: {device} (GPU: {gpu})")
    return lines


def busy_note(threads: int = 0) -> str:
    """A warning when other processes already keep the CPUs busy (figures then mean less); '' if idle."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return ""
    cpus = usable_cores()
    if load < 0.5 * cpus:
        return ""
    hint = "" if threads == 1 else "; --threads 1 gives steadier figures on a busy machine"
    return f"note: load average {load:.1f} on {cpus} CPUs: other jobs share the CPUs{hint}"


def resolve_device(name: str) -> str:
    """'auto' -> 'cuda' if available else 'cpu'; ValueError for anything but cpu, cuda, cuda:N."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not (name in ("cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit())):
        raise ValueError(f"--device {name!r}: choose auto, cpu, cuda or cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA device is available")
    return name


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"


# ----------------------------------------------------------------------------------------------
# peak memory


class PeakMemory:
    """Peak memory of this process from `start()` on.

    cuda: torch.cuda.max_memory_allocated (tensors only). cpu: the peak resident set size VmHWM,
    reset by /proc/self/clear_refs at start() (Linux >= 4.0); where that reset is impossible,
    getrusage's ru_maxrss, which never falls (so only a rise above the earlier peak counts). An
    RSS figure includes the allocator's caching: it is not an exact tensor count.
    """

    def __init__(self, device: str = "cpu") -> None:
        self.cuda = str(device).startswith("cuda")
        self.device = device
        self.before = 0
        self.source = "cuda" if self.cuda else "VmHWM"

    def start(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device)
            return
        self.before = _rss_bytes()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            self.source = "ru_maxrss"
            self.before = max(self.before, _max_rss_bytes())

    def peak(self) -> int:
        if self.cuda:
            import torch

            return torch.cuda.max_memory_allocated(self.device)
        if self.source == "VmHWM":
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return _max_rss_bytes()

    def rise(self) -> int:
        """Peak minus the memory in use at start()."""
        return max(0, self.peak() - self.before)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _max_rss_bytes() -> int:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


# ----------------------------------------------------------------------------------------------
# one case per subprocess


def worker_main(argv: list[str], run_case: Callable[[dict], dict]) -> bool:
    """If argv is `script --worker SPEC`, run that one case, print its result for `spawn_case`
    and return True; otherwise return False."""
    if "--worker" not in argv:
        return False
    spec = json.loads(argv[argv.index("--worker") + 1])
    print(MARKER + json.dumps(run_case(spec)), flush=True)
    return True


def spawn_case(script: str | Path, spec: dict, timeout: float | None = None) -> dict:
    """Run one case as `python script --worker SPEC` and return its result dict."""
    cmd = [sys.executable, str(Path(script).resolve()), "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timed out after {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER):])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {**spec, "error": f"exit {proc.returncode}: {tail}"}


def run_cases(script: str | Path, specs: Iterable[dict], timeout: float | None = None,
              report: Callable[[dict], None] | None = None) -> list[dict]:
    """`spawn_case` for each spec in turn; `report(result)` after each (e.g. a progress line)."""
    results = []
    for spec in specs:
        results.append(spawn_case(script, spec, timeout))
        if report is not None:
            report(results[-1])
    return results
