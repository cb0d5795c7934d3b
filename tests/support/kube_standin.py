#!/usr/bin/env python3
"""A stand-in Kubernetes API server for the tests: TokenReview and SubjectAccessReview, answered
as the real API server answers them (the posted object back, with a filled-in status), from a
JSON policy; and EndpointSlices, listed and watched with the real protocol (a list is an
EndpointSliceList with metadata.resourceVersion; `?watch=true&resourceVersion=N` streams one
JSON event per line, ADDED/MODIFIED/DELETED, until timeoutSeconds or until the test breaks it;
a watch from a version older than the last "expire" gets a 410 ERROR event, as from a compacted
etcd, which forces a re-list). Every request is logged, one JSON line each, so tests can count
what was asked.

Test controls (not Kubernetes API): POST /_standin/endpointslices {"type": "ADDED"|"MODIFIED"|
"DELETED", "object": {...}}; POST /_standin/break (ends every open watch); POST /_standin/expire
(ends every open watch, and watches from before now get 410).

usage: kube_standin.py POLICY.json PORT_FILE LOG_FILE

POLICY: {"tokens": {"<token>": {"username": ..., "uid": ..., "groups": [...]}},
         "rules": [{"user": ..., "verbs": [...], "resources": [...], "namespace": "*" | "<ns>",
                    "paths": [...]}]}
A rule with namespace "*" is a ClusterRoleBinding (every namespace, and cluster-wide requests);
any other namespace is a RoleBinding there (never a cluster-wide request).
"""
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

policy = json.load(open(sys.argv[1]))
log = open(sys.argv[3], "a", buffering=1)


cond = threading.Condition()
slices = {}  # (namespace, name) -> object
history = []  # (resourceVersion, type, object)
state = {"rv": 100, "generation": 0, "expired_below": 0}


def selected(obj, namespace, selector):
    if obj["metadata"].get("namespace") != namespace:
        return False
    labels = obj["metadata"].get("labels", {})
    for term in filter(None, (selector or "").split(",")):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


def change(kind, obj):
    with cond:
        state["rv"] += 1
        obj = json.loads(json.dumps(obj))
        obj.setdefault("apiVersion", "discovery.k8s.io/v1")
        obj.setdefault("kind", "EndpointSlice")
        obj["metadata"]["resourceVersion"] = str(state["rv"])
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        if kind == "DELETED":
            slices.pop(key, None)
        else:
            slices[key] = obj
        history.append((state["rv"], kind, obj))
        cond.notify_all()


def allowed(spec):
    user = spec.get("user", "")
    res = spec.get("resourceAttributes")
    nonres = spec.get("nonResourceAttributes")
    for rule in policy["rules"]:
        if rule["user"] != user:
            continue
        if res is not None:
            if res.get("group") != "container-tracer.io":
                continue
            name = res.get("resource", "") + ("/" + res["subresource"] if res.get("subresource") else "")
            verb_ok = res.get("verb") in rule.get("verbs", []) or "*" in rule.get("verbs", [])
            res_ok = name in rule.get("resources", []) or "*" in rule.get("resources", [])
            ns = res.get("namespace") or ""
            ns_ok = rule.get("namespace") == "*" or (ns != "" and ns == rule.get("namespace"))
            if verb_ok and res_ok and ns_ok:
                return True
        elif nonres is not None:
            if nonres.get("path") in rule.get("paths", []) and nonres.get("verb") in rule.get("verbs", []):
                return True
    return False


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out as two writes: with Nagle on, the body waited for the client's
    # delayed ACK (40 ms a request), which is the stand-in's cost, not the daemon's.
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def answer(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        log.write(json.dumps({"method": "GET", "path": url.path, "query": query,
                              "auth": self.headers.get("Authorization", "")}) + "\n")
        parts = url.path.strip("/").split("/")
        # /apis/discovery.k8s.io/v1/namespaces/<ns>/endpointslices
        if len(parts) != 6 or parts[:3] != ["apis", "discovery.k8s.io", "v1"] or parts[5] != "endpointslices":
            return self.answer(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound"})
        namespace, selector = parts[4], query.get("labelSelector", "")
        if query.get("watch") not in ("true", "1"):
            with cond:
                items = [o for o in slices.values() if selected(o, namespace, selector)]
                body = {"kind": "EndpointSliceList", "apiVersion": "discovery.k8s.io/v1",
                        "metadata": {"resourceVersion": str(state["rv"])}, "items": items}
            return self.answer(200, body)
        since = int(query.get("resourceVersion") or 0)
        deadline = time.time() + int(query.get("timeoutSeconds") or 300)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        with cond:
            if since < state["expired_below"]:
                gone = {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                                   "message": "too old resource version", "reason": "Expired", "code": 410}}
                self.wfile.write((json.dumps(gone) + "\n").encode())
                return
            generation = state["generation"]
            while time.time() < deadline:
                pending = [(rv, t, o) for rv, t, o in history if rv > since and selected(o, namespace, selector)]
                for rv, t, o in pending:
                    self.wfile.write((json.dumps({"type": t, "object": o}) + "\n").encode())
                    since = rv
                self.wfile.flush()
                if state["generation"] != generation:
                    return
                cond.wait(timeout=0.5)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        obj = json.loads(self.rfile.read(length) or b"{}")
        path = self.path.split("?")[0]
        if path == "/_standin/endpointslices":
            change(obj["type"], obj["object"])
            return self.answer(200, {})
        if path in ("/_standin/break", "/_standin/expire"):
            with cond:
                state["generation"] += 1
                if path == "/_standin/expire":
                    # Every version before this one is compacted away; a re-list gets this one.
                    state["rv"] += 1
                    state["expired_below"] = state["rv"]
                cond.notify_all()
            return self.answer(200, {})
        log.write(json.dumps({"path": path, "auth": self.headers.get("Authorization", ""), "body": obj}) + "\n")
        if path == "/apis/authentication.k8s.io/v1/tokenreviews":
            user = policy["tokens"].get(obj.get("spec", {}).get("token", ""))
            obj["status"] = {"authenticated": True, "user": user} if user else {"authenticated": False, "error": "invalid token"}
            return self.answer(201, obj)
        if path == "/apis/authorization.k8s.io/v1/subjectaccessreviews":
            ok = allowed(obj.get("spec", {}))
            obj["status"] = {"allowed": ok, "reason": "stand-in RBAC" if ok else "no rule grants it"}
            return self.answer(201, obj)
        self.answer(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound"})


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A client that hangs up (a watch it stopped, a test's client killed) is not a fault.
        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)


server = Server(("127.0.0.1", 0), Handler)
with open(sys.argv[2] + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
import os
os.rename(sys.argv[2] + ".tmp", sys.argv[2])
server.serve_forever()
