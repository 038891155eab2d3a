"""py-spy sampling of a server process, and a plain-text summary of it.

``record`` runs ``py-spy record --format raw`` (collapsed stacks, one line
per distinct stack with its sample count) against a pid for a fixed time;
``summarize`` reports where on-CPU samples fall: by package of the leaf
frame, and the functions with the most inclusive and self time. py-spy needs
ptrace rights over the target: root, or the same user with ptrace allowed.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

FRAME = re.compile(r"^(?P<name>.*?) \((?P<file>[^():]*)(?::\d+)?\)$")
# Names for paths that say little by themselves; everything else is named
# by its site-packages distribution or its standard-library module.
PACKAGES = (
    ("/core/", "core (switchboard)"),
    ("/bench/", "bench"),
    ("/selectors.py", "stdlib selectors (epoll register/modify)"),
    ("/collections/__init__.py", "stdlib collections"),
)


def py_spy() -> str:
    """Path of the py-spy executable next to this interpreter, or on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    found = shutil.which("py-spy")
    if found is None:
        raise FileNotFoundError("py-spy not found: pip install py-spy")
    return found


@contextlib.contextmanager
def record(pid: int, seconds: int, output: Path) -> Iterator[Callable[[], bool]]:
    """Sample ``pid`` for ``seconds`` while the body runs; yield "did it work"."""
    log = output.with_suffix(".log")
    finished = {"ok": False}
    argv = [
        py_spy(), "record",
        "--pid", str(pid),
        "--duration", str(seconds),
        "--rate", "100",
        "--format", "raw",
        "--nonblocking",  # do not pause the server while sampling it
        "--full-filenames",
        "--output", str(output),
    ]  # fmt: skip
    with log.open("wb") as sink:
        process = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT)
        try:
            yield lambda: finished["ok"]
        finally:
            try:
                process.wait(seconds + 60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
            finished["ok"] = process.returncode == 0 and output.exists()


# Leaf frames that wait rather than compute; --nonblocking sampling cannot
# always tell an idle thread from a busy one.
WAITING = re.compile(r"(^|\.)(select|poll|epoll|wait|acquire|_worker|get)$")


# Frames every stack of a thread passes through: left out of "inclusive".
ROOTS = re.compile(
    r"^(_run_module_as_main|_run_code|<module>|CommandLineInterface\.\w+|"
    r"Server\.run|\w*Reactor\.run|BaseEventLoop\.(run_forever|_run_once)|"
    r"Handle\._run|Thread\.\w+|_worker|Server\.serve|run|main|asyncio_run|"
    r"Runner\.run|Context\.invoke|Command\.\w+)$"
)


def _package(file: str) -> str:
    for needle, name in PACKAGES:
        if needle in file:
            return name
    if "site-packages/" in file:
        return file.split("site-packages/", 1)[1].split("/", 1)[0]
    if "/lib/python3" in file:
        module = file.split("/lib/python3", 1)[1].split("/", 1)[-1]
        return "stdlib " + module.split("/", 1)[0].removesuffix(".py")
    return "other"


def _frames(stack: str) -> list[tuple[str, str]]:
    frames = []
    for part in stack.split(";"):
        match = FRAME.match(part.strip())
        if match:
            frames.append((match["name"], match["file"]))
    return frames


def summarize(raw_path: Path, top: int = 25) -> str:
    """Percent of samples by leaf package, and by inclusive/self function."""
    total = 0
    by_package: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    for line in raw_path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = _frames(stack)
        if not frames:
            continue
        total += count
        name, file = frames[-1]
        waiting = WAITING.search(name) is not None
        by_package["(waiting: select/poll/lock)" if waiting else _package(file)] += (
            count
        )
        leaf[f"{name} ({Path(file).name})"] += count
        for label in {f"{n} ({Path(f).name})" for n, f in frames if not ROOTS.match(n)}:
            inclusive[label] += count
    if not total:
        return "no samples"
    lines = [f"{total} samples (on-CPU, 100 Hz)", "", "leaf frame by package:"]
    lines += [f"  {share(n, total)}  {name}" for name, n in by_package.most_common()]
    lines += ["", f"top {top} inclusive:"]
    lines += [f"  {share(n, total)}  {name}" for name, n in inclusive.most_common(top)]
    lines += ["", f"top {top} self:"]
    lines += [f"  {share(n, total)}  {name}" for name, n in leaf.most_common(top)]
    return "\n".join(lines) + "\n"


def share(count: int, total: int) -> str:
    return f"{100 * count / total:5.1f}%"
