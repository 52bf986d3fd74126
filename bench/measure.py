"""CPU and memory of a process and all its descendants, read from /proc.

CPU is utime + stime of every live process in the tree (clock ticks, usually 10 ms). Memory is the sum of VmRSS, and
of Pss (which splits pages shared between processes, such as nginx's shared memory zone, instead of counting them once
per worker).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses


def process_tree(root: int) -> list[int]:
    """``root`` and every process descended from it that is alive now."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent = int(_stat_fields(int(entry))[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = _stat_fields(pid)
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def _status_kib(pid: int, path: str, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/{path}").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass(frozen=True)
class Memory:
    rss_kib: int
    pss_kib: int


def memory(pids: list[int]) -> Memory:
    return Memory(
        rss_kib=sum(_status_kib(pid, "status", "VmRSS:") for pid in pids),
        pss_kib=sum(_status_kib(pid, "smaps_rollup", "Pss:") for pid in pids),
    )


class CpuMeter:
    """CPU seconds spent by a process tree between ``start()`` and ``stop()``."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.pids: list[int] = []
        self.started = 0.0

    def start(self) -> None:
        self.pids = process_tree(self.root)
        self.started = cpu_seconds(self.pids)

    def stop(self) -> float:
        return cpu_seconds(self.pids) - self.started
