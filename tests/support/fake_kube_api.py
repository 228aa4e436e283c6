"""A stand-in for the Kubernetes API server, for leak agent's tests: HTTPS with the given
certificate, answering a request bearing the given token (403 otherwise): GET
/api/v1/pods?fieldSelector=spec.nodeName%3D<node> with OBJECTS/pods.json, any other GET /PATH
with OBJECTS/PATH.json if there is one (a ReplicaSet, a Job), 404 else; POST
/api/v1/namespaces/NS/events appends the Event (one JSON line, its namespace checked against
the path's) to OBJECTS/events.jsonl and answers 201 as the API server does. Each request's
path is appended to OBJECTS/requests.log. Writes its port to a file.

Usage: fake_kube_api.py CERT KEY TOKEN NODE OBJECTS PORT_FILE
"""
import http.server
import json
import ssl
import sys

cert, key, token, node, objects, port_file = sys.argv[1:7]
import os


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        wanted = "/api/v1/pods?fieldSelector=spec.nodeName%3D" + node
        authorized = self.headers.get("Authorization") == "Bearer " + token
        with open(os.path.join(objects, "requests.log"), "a") as log:
            log.write(self.path + "\n")
        obj = os.path.join(objects, self.path.lstrip("/") + ".json")
        if not authorized:
            status, body = 403, b'{"kind":"Status","code":403}'
        elif self.path == wanted:
            status, body = 200, open(os.path.join(objects, "pods.json"), "rb").read()
        elif ".." not in self.path and "?" not in self.path and os.path.isfile(obj):
            status, body = 200, open(obj, "rb").read()
        else:
            status, body = 404, b'{"kind":"Status","code":404}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        authorized = self.headers.get("Authorization") == "Bearer " + token
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with open(os.path.join(objects, "requests.log"), "a") as log:
            log.write("POST " + self.path + "\n")
        parts = self.path.strip("/").split("/")
        status, answer = 404, b'{"kind":"Status","code":404}'
        if not authorized:
            status, answer = 403, b'{"kind":"Status","code":403}'
        elif len(parts) == 5 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "events":
            try:
                event = json.loads(body)
            except ValueError:
                event = None
            if not isinstance(event, dict) or event.get("metadata", {}).get("namespace") != parts[3]:
                status, answer = 400, b'{"kind":"Status","code":400}'
            else:
                with open(os.path.join(objects, "events.jsonl"), "a") as f:
                    f.write(json.dumps(event) + "\n")
                status, answer = 201, body
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(port_file + ".tmp", port_file)
server.serve_forever()
