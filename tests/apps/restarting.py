"""A test app that can stop listening on demand, as an app does while it restarts.

Serves 200 on $PORT. SIGUSR1 closes its listening socket (new connections are refused), SIGUSR2
opens it again. Its sidecar's health probe notices within half a second; a request that arrives
before that meets a refused connection at the sidecar, which `lattice why` must explain.
"""

from __future__ import annotations

import os
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(os.environ["PORT"])


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = b"ok\n"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


class App:
    def __init__(self) -> None:
        self.server: ThreadingHTTPServer | None = None
        self.lock = threading.Lock()
        self.open()

    def open(self, *_) -> None:
        with self.lock:
            if self.server is None:
                self.server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
                threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self, *_) -> None:
        with self.lock:
            server, self.server = self.server, None
        if server is not None:
            threading.Thread(target=lambda: (server.shutdown(), server.server_close()), daemon=True).start()


if __name__ == "__main__":
    # The signals are blocked before any thread starts (each inherits the mask) and taken by the
    # main thread with sigwait. With handlers and signal.pause(), the kernel may hand a signal to a
    # server thread: its handler then waits for the main thread, which pause() never wakes, and the
    # app keeps listening after SIGUSR1 (a test waiting for it to stop timed out under load).
    wanted = {signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, wanted)
    app = App()
    while (received := signal.sigwait(wanted)) != signal.SIGTERM:
        if received == signal.SIGUSR1:
            app.close()
        else:
            app.open()
    os._exit(0)
