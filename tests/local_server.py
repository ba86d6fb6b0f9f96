"""Files served over HTTP on 127.0.0.1 inside a test: published weights without the network."""

import http.server
import os
import shutil
import threading


class Server:
    """Files by path on 127.0.0.1 (bytes, or a file's path, streamed); ``cut``: send half of each file and
    close; ``delay``: seconds before answering. Counts the GETs of each path."""

    def __init__(self, files, cut=False, delay=0.0):
        self.files, self.cut, self.delay, self.gets = dict(files), cut, delay, {}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.gets[self.path] = server.gets.get(self.path, 0) + 1
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                threading.Event().wait(server.delay)
                self.send_response(200)
                size = len(data) if isinstance(data, bytes) else os.path.getsize(data)
                self.send_header("Content-Length", str(size))
                self.end_headers()
                if isinstance(data, bytes):
                    self.wfile.write(data[: size // 2] if server.cut else data)
                else:  # a file's path: streamed, never held whole
                    with open(data, "rb") as handle:
                        shutil.copyfileobj(handle, self.wfile, 1 << 20)
                self.wfile.flush()
                if server.cut:
                    self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
