"""Resident memory of this process (Linux), shared by the PyTorch benchmark scripts."""


def status_kib(key):
    """A `/proc/self/status` field in KiB (e.g. "VmRSS:", "VmHWM:"); 0 when absent."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    return 0


def reset_peak():
    """Resets the peak resident memory (VmHWM) to the current one."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
