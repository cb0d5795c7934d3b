#!/usr/bin/env python3
"""A stand-in Kubernetes API server for the tests: TokenReview and SubjectAccessReview, answered
as the real API server answers them (the posted object back, with a filled-in status), from a
JSON policy. Every request is logged, one JSON line each, so tests can count what was asked.

usage: kube_standin.py POLICY.json PORT_FILE LOG_FILE

POLICY: {"tokens": {"<token>": {"username": ..., "uid": ..., "groups": [...]}},
         "rules": [{"user": ..., "verbs": [...], "resources": [...], "namespace": "*" | "<ns>",
                    "paths": [...]}]}
A rule with namespace "*" is a ClusterRoleBinding (every namespace, and cluster-wide requests);
any other namespace is a RoleBinding there (never a cluster-wide request).
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

policy = json.load(open(sys.argv[1]))
log = open(sys.argv[3], "a", buffering=1)


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

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        obj = json.loads(self.rfile.read(length) or b"{}")
        path = self.path.split("?")[0]
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


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(sys.argv[2] + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
import os
os.rename(sys.argv[2] + ".tmp", sys.argv[2])
server.serve_forever()
