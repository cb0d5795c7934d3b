#!/usr/bin/env python3
"""Applies an AdmissionReview response's patch to the pod it was for, with an independent RFC 6902
implementation (PyPI jsonpatch), and prints the patched pod.

usage: apply_patch.py POD.json PATCH_BASE64
"""
import base64
import json
import sys

import jsonpatch

pod = json.load(open(sys.argv[1]))
patch = json.loads(base64.b64decode(sys.argv[2]))
print(json.dumps(jsonpatch.apply_patch(pod, patch)))
