#!/usr/bin/env python3
"""An independent OTLP receiver for the end-to-end tests: the OTLP/gRPC LogsService and
TraceService (grpcio + the opentelemetry-proto package's generated stubs) and OTLP/HTTP
protobuf (/v1/logs, /v1/traces, gzip or not). Every received resource is appended to --out as
one JSON line. --mode-file, read at every request, makes it misbehave: `ok` (or no file),
`unavailable` (gRPC UNAVAILABLE / HTTP 503) or `hang` (no answer while the file says so).
Prints `READY grpc=<port> http=<port>` once both listen."""

import argparse
import gzip
import json
import os
import ssl
import sys
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

LOCK = threading.Lock()
ARGS = None


def mode():
    try:
        with open(ARGS.mode_file) as f:
            return f.read().strip() or "ok"
    except OSError:
        return "ok"


def wait_while_hanging():
    deadline = time.monotonic() + 600
    while mode() == "hang" and time.monotonic() < deadline:
        time.sleep(0.05)


def value(v):
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "kvlist_value":
        return {kv.key: value(kv.value) for kv in v.kvlist_value.values}
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind)


def attrs(kvs):
    return {kv.key: value(kv.value) for kv in kvs}


COUNTS = {"logs": 0, "span_events": 0, "spans": 0, "requests": 0}


def count(logs=0, span_events=0, spans=0):
    """--count-only: totals only (the export benchmark), rewritten after every request."""
    with LOCK:
        COUNTS["logs"] += logs
        COUNTS["span_events"] += span_events
        COUNTS["spans"] += spans
        COUNTS["requests"] += 1
        with open(ARGS.out + ".tmp", "w") as f:
            json.dump(COUNTS, f)
        os.replace(ARGS.out + ".tmp", ARGS.out)


def record_logs(req, protocol):
    if ARGS.count_only:
        return count(logs=sum(len(sl.log_records) for rl in req.resource_logs for sl in rl.scope_logs))
    lines = []
    for rl in req.resource_logs:
        records = []
        for sl in rl.scope_logs:
            for r in sl.log_records:
                records.append({
                    "time": r.time_unix_nano,
                    "observed": r.observed_time_unix_nano,
                    "event_name": r.event_name,
                    "trace_id": r.trace_id.hex(),
                    "span_id": r.span_id.hex(),
                    "attributes": attrs(r.attributes),
                    "body": value(r.body),
                    "scope": sl.scope.name,
                })
        lines.append({"signal": "logs", "protocol": protocol,
                      "resource": attrs(rl.resource.attributes), "records": records})
    write(lines)


def record_traces(req, protocol):
    if ARGS.count_only:
        spans = [s for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]
        return count(span_events=sum(len(s.events) for s in spans), spans=len(spans))
    lines = []
    for rs in req.resource_spans:
        spans = []
        for ss in rs.scope_spans:
            for s in ss.spans:
                spans.append({
                    "trace_id": s.trace_id.hex(),
                    "span_id": s.span_id.hex(),
                    "parent_span_id": s.parent_span_id.hex(),
                    "name": s.name,
                    "start": s.start_time_unix_nano,
                    "end": s.end_time_unix_nano,
                    "attributes": attrs(s.attributes),
                    "status_code": s.status.code,
                    "status_message": s.status.message,
                    "events": [{"time": e.time_unix_nano, "name": e.name, "attributes": attrs(e.attributes)}
                               for e in s.events],
                })
        lines.append({"signal": "traces", "protocol": protocol,
                      "resource": attrs(rs.resource.attributes), "spans": spans})
    write(lines)


def write(lines):
    with LOCK:
        with open(ARGS.out, "a") as f:
            for line in lines:
                f.write(json.dumps(line) + "\n")


def grpc_mode(context):
    """Misbehaves as the mode file says, before a gRPC request is recorded."""
    m = mode()
    if m == "unavailable":
        context.abort(grpc.StatusCode.UNAVAILABLE, "receiver told to be unavailable")
    if m == "hang":
        wait_while_hanging()


class Logs(logs_service_pb2_grpc.LogsServiceServicer):
    def Export(self, request, context):
        grpc_mode(context)
        record_logs(request, "grpc")
        return logs_service_pb2.ExportLogsServiceResponse()


class Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request, context):
        grpc_mode(context)
        record_traces(request, "grpc")
        return trace_service_pb2.ExportTraceServiceResponse()


class Http(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body=b"", ctype="application/x-protobuf"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        m = mode()
        if m == "unavailable":
            return self.answer(503, b"unavailable", "text/plain")
        if m == "hang":
            wait_while_hanging()
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        if self.headers.get("Content-Type") != "application/x-protobuf":
            return self.answer(415, b"protobuf only", "text/plain")
        if self.path == "/v1/logs":
            req = logs_service_pb2.ExportLogsServiceRequest()
            req.ParseFromString(body)
            record_logs(req, "http")
            return self.answer(200, logs_service_pb2.ExportLogsServiceResponse().SerializeToString())
        if self.path == "/v1/traces":
            req = trace_service_pb2.ExportTraceServiceRequest()
            req.ParseFromString(body)
            record_traces(req, "http")
            return self.answer(200, trace_service_pb2.ExportTraceServiceResponse().SerializeToString())
        return self.answer(404, b"no such path", "text/plain")


def main():
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--mode-file", required=True)
    p.add_argument("--grpc-port", type=int, default=0)
    p.add_argument("--http-port", type=int, default=0)
    p.add_argument("--count-only", action="store_true")
    p.add_argument("--tls-cert", help="serve both protocols over TLS with this certificate (PEM)")
    p.add_argument("--tls-key")
    ARGS = p.parse_args()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8),
                         options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(Logs(), server)
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), server)
    if ARGS.tls_cert:
        with open(ARGS.tls_key, "rb") as k, open(ARGS.tls_cert, "rb") as c:
            creds = grpc.ssl_server_credentials([(k.read(), c.read())])
        grpc_port = server.add_secure_port(f"127.0.0.1:{ARGS.grpc_port}", creds)
    else:
        grpc_port = server.add_insecure_port(f"127.0.0.1:{ARGS.grpc_port}")
    server.start()
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.allow_reuse_address = True
    http = ThreadingHTTPServer(("127.0.0.1", ARGS.http_port), Http)
    if ARGS.tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(ARGS.tls_cert, ARGS.tls_key)
        http.socket = ctx.wrap_socket(http.socket, server_side=True)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    print(f"READY grpc={grpc_port} http={http.server_address[1]}", flush=True)
    try:
        sys.stdin.read()  # runs until the test closes stdin or kills it
    finally:
        server.stop(0)
        http.shutdown()


if __name__ == "__main__":
    main()
