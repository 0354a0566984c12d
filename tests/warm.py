"""`python -m convlens ARGS` in a process forked from a warm interpreter.

Starting a fresh interpreter costs a train command about 4 s of CPU on the 2-core CI machine
(torch, torch._dynamo and sklearn.datasets import in ~8 s under load here, and tearing them
down at exit takes 2 s more), more than most test commands themselves. A zygote process
imports those modules once, touches no torch op (so no OpenMP pool is there to break in a
fork), and forks one child per command. The child takes the command's environment, working
folder and arguments, points fds 0/1/2 at /dev/null and two capture files, and runs
`convlens.__main__` as `python -m` would; it then exits as the interpreter does (non-daemon
threads joined, atexit handlers run, garbage collected, stdout and stderr flushed), so exit
codes, stdout, stderr and tracebacks are those of a fresh `python -m convlens` (what the
imports printed, warnings say, is repeated at the start of each command's stderr). It skips
only the module teardown that follows (os._exit), which writes nothing a command made, bar
what a finalizer of a module-level object might print. What it does not repeat is the cold
import itself: tests about import-time behaviour (lazy imports, a sitecustomize, interpreter
options), commands run side by side, and servers keep using tests.helpers.convlens.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile

# The modules a train, evaluate or predict command imports before it does any work.
PRELOAD = ("torch", "torch._dynamo", "sklearn.datasets", "convlens.cli", "convlens.api.train",
           "convlens.api.evaluate", "convlens.predict")  # fmt: skip

ZYGOTE = r"""
import importlib, json, os, sys, tempfile
saved, log = os.dup(2), tempfile.TemporaryFile()
os.dup2(log.fileno(), 2)  # what importing prints (warnings), to repeat in every command's stderr
for name in sys.argv[1:]:
    importlib.import_module(name)
sys.stderr.flush()
os.dup2(saved, 2)
log.seek(0)
said_on_import = log.read()
requests, replies = sys.stdin.buffer, sys.stdout.buffer

def serve():
    for line in requests:
        pid = os.fork()
        if pid == 0:
            return json.loads(line)  # the child leaves the loop and runs the command
        replies.write(b"%d\n" % pid)
        replies.flush()
        _, status = os.waitpid(pid, 0)
        replies.write(b"%d\n" % os.waitstatus_to_exitcode(status))
        replies.flush()
    return None

job = serve()
if job is None:
    sys.exit(0)
for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, job["stdout"], os.O_WRONLY),
                        (2, job["stderr"], os.O_WRONLY)):
    opened = os.open(path, flags)
    os.dup2(opened, fd)
    os.close(opened)
os.write(2, said_on_import)
os.chdir(job["cwd"])
os.environ.clear()
os.environ.update(job["env"])
sys.path[0] = os.getcwd()  # as `python -m` sets it
sys.argv = [sys.argv[0], *job["args"]]
del job, serve, requests, replies
import atexit, gc, runpy, signal, threading
try:
    runpy.run_module("convlens", run_name="__main__", alter_sys=True)
    code = 0
except SystemExit as stop:  # as the interpreter reads sys.exit's argument
    code = stop.code
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
except KeyboardInterrupt:
    sys.excepthook(*sys.exc_info())
    code = -signal.SIGINT
except BaseException:
    sys.excepthook(*sys.exc_info())
    code = 1
# The interpreter's exit as a command sees it, in its order: threads joined, atexit run, stdout
# and stderr flushed; then out without tearing the modules down (2 s with torch loaded here).
threading._shutdown()
atexit._run_exitfuncs()
gc.collect()
for stream in (sys.stdout, sys.stderr):
    stream.flush()
if code == -signal.SIGINT:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)
os._exit(code & 0xFF)
"""

_BASE_ENV = dict(os.environ)  # before any test changes it: the zygote's own imports see this
_zygote: subprocess.Popen | None = None
_running: Process | None = None  # the zygote's child now (it waits for one at a time)


def _start() -> subprocess.Popen:
    global _zygote
    if _zygote is None or _zygote.poll() is not None:
        _zygote = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE, *PRELOAD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,  # the replies are read line by line with select: nothing read ahead
            env=_BASE_ENV,
        )
        atexit.register(_stop, _zygote)
    return _zygote


def _stop(zygote: subprocess.Popen) -> None:
    if zygote.poll() is None:
        zygote.stdin.close()
        zygote.wait(timeout=30)


def _reply(zygote: subprocess.Popen, timeout: float | None) -> int | None:
    """The zygote's next line as an int; None when `timeout` seconds pass first."""
    if timeout is not None:
        ready, _, _ = select.select([zygote.stdout], [], [], max(timeout, 0))
        if not ready:
            return None
    line = zygote.stdout.readline()
    if not line:
        raise RuntimeError("the warm convlens interpreter died")
    return int(line)


class Process:
    """A convlens command running in a child of the zygote (the zygote waits for it, so one
    runs at a time): pid, poll(), wait() and returncode as subprocess.Popen has them."""

    def __init__(self, args: list[str], env: dict, cwd: str | os.PathLike | None = None):
        self.args = [sys.executable, "-m", "convlens", *args]
        global _running
        if _running is not None and _running.poll() is None:
            raise RuntimeError("the warm convlens interpreter runs one command at a time")
        self.returncode: int | None = None
        self._zygote = _start()
        self._tmp = tempfile.TemporaryDirectory(prefix="convlens-warm-")
        self._out, self._err = (os.path.join(self._tmp.name, n) for n in ("stdout", "stderr"))
        for path in (self._out, self._err):
            open(path, "w").close()
        job = {"args": args, "env": env, "cwd": os.fspath(cwd or os.getcwd()),
               "stdout": self._out, "stderr": self._err}  # fmt: skip
        request = memoryview(json.dumps(job).encode() + b"\n")
        while request:  # an unbuffered pipe may take part of it at a time
            request = request[self._zygote.stdin.write(request) :]
        self.pid = _reply(self._zygote, None)
        _running = self

    def poll(self) -> int | None:
        return self.wait(timeout=0) if self.returncode is None else self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit code (minus the signal that killed it); None if `timeout` s pass first."""
        if self.returncode is None:
            self.returncode = _reply(self._zygote, timeout)
        return self.returncode

    def output(self) -> tuple[str, str]:
        """(stdout, stderr) of the finished command; the capture files are removed."""
        with open(self._out) as f, open(self._err) as g:
            both = f.read(), g.read()
        self._tmp.cleanup()
        return both


def run(
    args: list[str], env: dict, timeout: float | None = None, cwd: str | os.PathLike | None = None
) -> subprocess.CompletedProcess:
    """Like subprocess.run([python, -m, convlens, *args], capture_output=True, text=True)."""
    proc = Process(args, env, cwd)
    if proc.wait(timeout) is None:  # past the timeout: kill it as subprocess.run would
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        raise subprocess.TimeoutExpired(proc.args, timeout, *proc.output())
    return subprocess.CompletedProcess(proc.args, proc.returncode, *proc.output())
