#!/usr/bin/env python3
"""Types lines into an interactive shell through a pseudo-terminal.

usage: pty_shell.py SHELL

Starts SHELL interactively (without rc files) on a new pseudo-terminal,
prints "started PID" once its first prompt shows, then types each line read
from stdin once the shell prompts for it (PS1 or PS2). When stdin ends it
waits for the shell to exit (the lines should end with `exit`) and exits
with the shell's status. Every wait is bounded.
"""
import os
import pty
import select
import signal
import sys
import time

PROMPTS = (b"ecapture-test$ ", b"more> ")
PROMPT_TIMEOUT = 15.0


def main():
    shell = sys.argv[1]
    if os.path.basename(shell) == "zsh":
        argv = [shell, "-f", "-i"]
    else:
        argv = [shell, "--norc", "--noprofile", "-i"]
    env = dict(os.environ, PS1=PROMPTS[0].decode(), PS2=PROMPTS[1].decode(), HOME="/tmp", TERM="xterm")
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(shell, argv, env)
    pending = b""

    def wait_for_prompt():
        nonlocal pending
        deadline = time.monotonic() + PROMPT_TIMEOUT
        while True:
            found = [pending.find(p) for p in PROMPTS]
            hits = [(at, p) for at, p in zip(found, PROMPTS) if at >= 0]
            if hits:
                at, prompt = min(hits)
                pending = pending[at + len(prompt):]
                return
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                sys.exit(f"pty_shell: no prompt from {shell} within {PROMPT_TIMEOUT} s; output: {pending[-500:]!r}")
            if select.select([fd], [], [], left)[0]:
                try:
                    pending += os.read(fd, 65536)
                except OSError:
                    sys.exit(f"pty_shell: {shell} closed its terminal while a prompt was awaited")

    wait_for_prompt()
    print(f"started {pid}", flush=True)
    lines = sys.stdin.buffer.read().splitlines()
    for index, line in enumerate(lines):
        os.write(fd, line + b"\n")
        if index + 1 < len(lines):
            wait_for_prompt()
    deadline = time.monotonic() + PROMPT_TIMEOUT
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            sys.exit(os.waitstatus_to_exitcode(status))
        # Keep the terminal drained so the shell never blocks writing to it.
        if select.select([fd], [], [], 0.05)[0]:
            try:
                os.read(fd, 65536)
            except OSError:
                pass
    os.kill(pid, signal.SIGKILL)
    sys.exit(f"pty_shell: {shell} did not exit within {PROMPT_TIMEOUT} s")


main()
