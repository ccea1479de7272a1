"""Helpers of the trio-serve tests: a real `python -m trio_edge.cli.serve` subprocess on a free port, request
bodies, and readers for metrics and server-sent events."""

from __future__ import annotations

import base64
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

SAMPLES = Path(__file__).resolve().parents[2] / "trio_edge" / "assets" / "samples"
STARTUP_S = 240  # imports and graph loading on a busy 2-core machine


def free_port() -> int:
    """A free port below Linux's ephemeral range (32768 and up), at random: an outgoing connection of any process
    (Ray starts many) can take a port from that range between this probe and the server's bind."""
    while True:
        port = random.randrange(20000, 32768)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
                return port
            except OSError:  # in use: try another
                pass


class ServerProcess:
    """One trio-serve process; `.url` answers once /health says ready."""

    def __init__(self, source, *args: str, log_dir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"trio-serve-{self.port}.log"
        command = [sys.executable, "-m", "trio_edge.cli.serve", str(source), "--port", str(self.port),
                   "--log-level", "warning", *args]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))

    def wait_ready(self) -> "ServerProcess":
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"trio-serve exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"trio-serve not ready within {STARTUP_S} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig=signal.SIGTERM, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"trio-serve did not exit within {timeout} s of {sig!r}:\n{self.log()}") from None


def data_url(image, mime: str = "image/png", fmt: str = "PNG") -> str:
    """A data URL of a file path, raw bytes or a PIL image."""
    if isinstance(image, (str, Path)):
        data = Path(image).read_bytes()
    elif isinstance(image, bytes):
        data = image
    else:
        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
        data = buffer.getvalue()
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def user_message(question: str, *images: str) -> dict:
    """One user message: the question, then the image parts (the order OpenAI's examples use)."""
    return {"role": "user", "content": [{"type": "text", "text": question},
                                        *({"type": "image_url", "image_url": {"url": url}} for url in images)]}


def metric(text: str, name: str, **labels) -> float:
    """A sample's value from a Prometheus exposition (0 when absent)."""
    wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    return 0.0


def sse_events(response: httpx.Response):
    """The `data:` payloads of a server-sent-event response as they arrive: parsed JSON, or '[DONE]'."""
    for line in response.iter_lines():
        if line.startswith("data: "):
            payload = line[len("data: "):]
            yield payload if payload == "[DONE]" else json.loads(payload)
