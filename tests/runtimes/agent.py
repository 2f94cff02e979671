"""A small Python agent of the kind keyturn holds: it plans, then hands a tool call (sending
its report to a collector) to a thread started late, to a pool worker, or to a coroutine.

Usage: agent.py late-thread|pool|asyncio HOST PORT REPORT

The thread that connects prints `acting PID TID` (from /proc/thread-self, in that very
thread) just before it connects; the agent prints `sent N` once the report is out.
"""

import asyncio
import concurrent.futures
import hashlib
import os
import socket
import sys
import threading
import time


def say(line):
    """Prints a line with one write(2): lines from different threads never mix."""
    os.write(1, f"{line}\n".encode())


def acting():
    """Says which process and thread is about to act: /proc/thread-self is PID/task/TID."""
    pid, _, tid = os.readlink("/proc/thread-self").split("/")
    say(f"acting {pid} {tid}")


def send_report(host, port, report):
    """The tool call: one TCP connection to the collector, the report, then close."""
    acting()
    with socket.create_connection((host, port)) as conn:
        conn.sendall(report.encode())
    return len(report)


def late_thread(host, port, report):
    # The model "thinks" first: the tool thread starts well after the process did, so its
    # start time is its own, not its process's.
    time.sleep(0.3)
    outcome = {}

    def tool():
        outcome["sent"] = send_report(host, port, report)

    worker = threading.Thread(target=tool, name="tool-call")
    worker.start()
    worker.join()
    return outcome["sent"]


def pool(host, port, report):
    # Tool calls run side by side in a pool, as agent frameworks run them: a local one
    # (a digest of the report, for the log) and the upload.
    with concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="tool") as tools:
        digest = tools.submit(lambda: hashlib.sha256(report.encode()).hexdigest())
        upload = tools.submit(send_report, host, port, report)
        say(f"digest {digest.result()[:16]}")
        return upload.result()


async def upload(host, port, report):
    acting()
    _, writer = await asyncio.open_connection(host, port)
    writer.write(report.encode())
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    return len(report)


async def event_loop_agent(host, port, report):
    # A heartbeat keeps the loop busy while the upload runs on the same (main) thread.
    async def heartbeat():
        while True:
            await asyncio.sleep(0.05)

    beating = asyncio.create_task(heartbeat())
    try:
        return await upload(host, port, report)
    finally:
        beating.cancel()


PATTERNS = {
    "late-thread": late_thread,
    "pool": pool,
    "asyncio": lambda *args: asyncio.run(event_loop_agent(*args)),
}


def main():
    pattern, host, port, report = sys.argv[1:]
    sent = PATTERNS[pattern](host, int(port), report)
    say(f"sent {sent}")


if __name__ == "__main__":
    main()
