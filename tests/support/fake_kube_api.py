"""A stand-in for the Kubernetes API server, for leak agent's tests: HTTPS with the given
certificate, answering GET /api/v1/pods?fieldSelector=spec.nodeName%3D<node> with the pod list
in a file, to a request bearing the given token (403 otherwise). Writes its port to a file.

Usage: fake_kube_api.py CERT KEY TOKEN NODE PODS_JSON PORT_FILE
"""
import http.server
import ssl
import sys

cert, key, token, node, pods, port_file = sys.argv[1:7]


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        wanted = "/api/v1/pods?fieldSelector=spec.nodeName%3D" + node
        authorized = self.headers.get("Authorization") == "Bearer " + token
        if authorized and self.path == wanted:
            status, body = 200, open(pods, "rb").read()
        else:
            status, body = 403, b'{"kind":"Status","code":403}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
import os
os.rename(port_file + ".tmp", port_file)
server.serve_forever()
