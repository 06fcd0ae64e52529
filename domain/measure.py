"""What one instance used:  python3 measure.py USAGE_FILE -- COMMAND [ARG...]

Shipped in every bundle beside run_one.sh, which runs each instance's command under it where the
host has a python3 (3.6 or newer): it starts the command, waits for it with wait4 (the rusage
of its whole process tree: every descendant it waited for), writes one line to USAGE_FILE

    wall=SECONDS cpu=SECONDS maxrss=BYTES queue=0.000000

(domain/usage.py's `Usage.to_line`, which reads it back), and then ends the way the command
did: its exit status, or the same signal raised on itself with the default disposition, so the
shell waiting for it sees a signal exactly as it would have seen the command's.

Signals sent to this process alone are passed on to the command; where a whole process group or
session is signalled (scancel, a time limit, `pkill -s`) the command gets its own as well.

Standard library only, and it parses with any Python 3: nothing of Airavata is installed where
it runs. On a Python older than 3.5 it runs the command unmeasured (run_one.sh then records wall
and CPU time itself). Not imported by the package; tests run it as a script.
"""

import contextlib
import os
import resource
import signal
import sys
import time

# Passed on to the command; the rest keep their default action (SIGKILL and SIGSTOP cannot be
# caught, and a stopped or killed wrapper is what its shell sees).
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2, signal.SIGALRM, signal.SIGCONT)
# What Python itself ignores at start-up and a command must not inherit ignored.
RESTORED = (signal.SIGPIPE, signal.SIGXFSZ)
MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB else


def usage_line(wall: float, rusage: "resource.struct_rusage") -> str:
    cpu = rusage.ru_utime + rusage.ru_stime
    rss = int(rusage.ru_maxrss) * MAXRSS_UNIT
    return "wall=%.6f cpu=%.6f maxrss=%d queue=0.000000\n" % (wall, cpu, rss)  # noqa: UP031


def write_usage(path: str, line: str) -> None:
    """Atomically, so a reader never sees half a line; a failure loses the figures only."""
    try:
        with open(path + ".tmp", "w") as out:
            out.write(line)
        os.replace(path + ".tmp", path)
    except OSError as exc:
        sys.stderr.write("measure: cannot write %s: %s\n" % (path, exc))  # noqa: UP031


def end_like(status: int) -> None:
    """Exit the way a child with wait status `status` ended."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        with contextlib.suppress(ValueError, OSError):  # its core, if any, was its own
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        with contextlib.suppress(ValueError, OSError):  # SIGKILL and SIGSTOP keep theirs
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)  # a signal whose default action does not end a process
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)


def main(argv: list) -> None:
    if len(argv) < 3 or argv[1] != "--":
        sys.stderr.write("usage: measure.py USAGE_FILE -- COMMAND [ARG...]\n")
        os._exit(2)
    path, command = argv[0], argv[2:]
    if sys.version_info < (3, 5):  # noqa: UP036  no pthread_sigmask; wait4 is not retried
        os.execvp(command[0], command)
    inherited = {s: signal.getsignal(s) for s in FORWARDED}
    child = 0

    def forward(sig: int, _frame: object) -> None:
        if child:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, sig)

    # Blocked until the child runs and the forwarding is in place: none is lost in between.
    signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    for sig in FORWARDED:
        signal.signal(sig, forward)
    sys.stdout.flush()
    sys.stderr.flush()
    started = time.monotonic()
    child = os.fork()
    if child == 0:  # the command: the dispositions this process was started with
        try:
            for sig, was in inherited.items():
                signal.signal(sig, signal.SIG_IGN if was == signal.SIG_IGN else signal.SIG_DFL)
            for sig in RESTORED:
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
            os.execvp(command[0], command)
        except OSError as exc:
            sys.stderr.write("measure: cannot run %s: %s\n" % (command[0], exc))  # noqa: UP031
        os._exit(127)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
    _, status, rusage = os.wait4(child, 0)  # retried after a forwarded signal (PEP 475)
    write_usage(path, usage_line(time.monotonic() - started, rusage))
    end_like(status)


if __name__ == "__main__":
    main(sys.argv[1:])
