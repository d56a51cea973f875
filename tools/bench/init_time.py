#!/usr/bin/env python3
"""Init-to-ready time of each Lambda binary: from process start to its first request to the Lambda
runtime API (GET /runtime/invocation/next), with a local stand-in for that API. Also prints the sizes.

Usage: python3 tools/bench/init_time.py [target/lambda] [runs]
"""
import http.server
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

root = sys.argv[1] if len(sys.argv) > 1 else "target/lambda"
runs = int(sys.argv[2]) if len(sys.argv) > 2 else 7


class Api(http.server.BaseHTTPRequestHandler):
    first = None

    def do_GET(self):
        if Api.first is None:
            Api.first = time.perf_counter()
        time.sleep(5)  # hold the long poll; the process is killed meanwhile

    def log_message(self, *args):
        pass


def measure(binary):
    Api.first = None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Api)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = dict(
        os.environ,
        AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{server.server_address[1]}",
        AWS_LAMBDA_FUNCTION_NAME="bench",
        AWS_LAMBDA_FUNCTION_MEMORY_SIZE="256",
        AWS_LAMBDA_FUNCTION_VERSION="1",
        AWS_LAMBDA_LOG_STREAM_NAME="bench",
        AWS_LAMBDA_LOG_GROUP_NAME="bench",
        AWS_REGION="eu-west-2",
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        TABLE_NAME="bench",
        BUCKET_NAME="bench",
        TENANT_ID="00000000-0000-0000-0000-000000000000",
        CLIENT_ID="00000000-0000-0000-0000-000000000000",
        CLIENT_SECRET="bench",
        MASTER_KEY="bench-master-key",
        RUST_LOG="error",
    )
    start = time.perf_counter()
    process = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while Api.first is None and time.perf_counter() - start < 5:
        time.sleep(0.0005)
    elapsed = (Api.first - start) * 1000 if Api.first else float("nan")
    process.kill()
    process.wait()
    server.shutdown()
    return elapsed


for name in sorted(os.listdir(root)):
    binary = os.path.join(root, name, "bootstrap")
    if not os.path.exists(binary):
        continue
    times = [measure(binary) for _ in range(runs)]
    size = os.path.getsize(binary) / 1_000_000
    print(f"{name:16} {size:6.1f} MB   init to ready: median {statistics.median(times):5.1f} ms, max {max(times):5.1f} ms ({runs} runs)")
