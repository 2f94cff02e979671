// A small Node agent of the kind keyturn holds: it sends its report to a collector with
// net.connect, from the main thread's event loop (main) or from a worker_threads Worker,
// its tool sandbox (worker), while the main thread's loop keeps ticking.
//
// Usage: node agent.mjs main|worker HOST PORT REPORT
//
// The thread that connects prints "acting PID TID" just before it connects; the agent
// prints "sent N" once the report is out.

import { readlinkSync, writeSync } from "node:fs";
import net from "node:net";
import { Worker, isMainThread, parentPort, workerData } from "node:worker_threads";

// Written at once by the calling thread (a worker's console.log is relayed through the
// main thread, later).
function say(line) {
  writeSync(1, `${line}\n`);
}

// Which process and thread is about to act: /proc/thread-self is PID/task/TID.
function acting() {
  const [pid, , tid] = readlinkSync("/proc/thread-self").split("/");
  say(`acting ${pid} ${tid}`);
}

// The tool call: one TCP connection to the collector, the report, then close.
function sendReport({ host, port, report }) {
  return new Promise((resolve, reject) => {
    acting();
    const socket = net.connect({ host, port: Number(port) }, () => socket.end(report));
    socket.on("error", reject);
    socket.on("close", (failed) => (failed ? reject(new Error("connection failed")) : resolve(report.length)));
  });
}

async function main() {
  const [pattern, host, port, report] = process.argv.slice(2);
  const job = { host, port, report };
  const heartbeat = setInterval(() => {}, 50);
  try {
    let sent;
    if (pattern === "main") {
      sent = await sendReport(job);
    } else if (pattern === "worker") {
      sent = await new Promise((resolve, reject) => {
        const worker = new Worker(new URL(import.meta.url), { workerData: job });
        worker.once("message", resolve);
        worker.once("error", reject);
      });
    } else {
      throw new Error("usage: agent.mjs main|worker HOST PORT REPORT");
    }
    say(`sent ${sent}`);
  } finally {
    clearInterval(heartbeat);
  }
}

if (isMainThread) {
  main().catch((error) => {
    process.stderr.write(`agent: ${error.message}\n`);
    process.exit(1);
  });
} else {
  parentPort.postMessage(await sendReport(workerData));
}
