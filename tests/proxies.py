"""A real nginx for the tests, running the repository's own deploy/nginx/sse-gateway.conf on free ports."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import httpx

from tests.servers import free_port, wait_until

SHIPPED_CONFIG = Path(__file__).parent.parent / "deploy" / "nginx" / "sse-gateway.conf"


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if found is None:
        raise RuntimeError("these tests need nginx (Debian package nginx)")
    return found


class NginxProcess:
    """nginx in the foreground with the shipped server block, its upstream lines pointed at ``backends``."""

    def __init__(self, backends: list[int]) -> None:
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="sse-test-nginx-"))
        shipped = SHIPPED_CONFIG.read_text()
        servers = "".join(f"    server 127.0.0.1:{port} max_fails=1 fail_timeout=5s;\n" for port in backends)
        rendered, count = re.subn(r"(?m)^    server 127\.0\.0\.1:\d+ .*\n", "", shipped)
        assert count >= 1, "the shipped config lists its gateways as 'server 127.0.0.1:PORT ...' lines"
        rendered = rendered.replace("upstream sse_gateways {\n", "upstream sse_gateways {\n" + servers, 1)
        rendered, count = re.subn(r"listen 8000;", f"listen 127.0.0.1:{self.port};", rendered)
        assert count == 1
        (self.directory / "sse-gateway.conf").write_text(rendered)
        temp = self.directory / "temp"
        temp.mkdir()
        (self.directory / "nginx.conf").write_text(
            f"daemon off;\nworker_processes 1;\npid {self.directory}/nginx.pid;\n"
            f"error_log {self.directory}/error.log warn;\nevents {{ worker_connections 1024; }}\n"
            f"http {{\n  access_log off;\n  client_body_temp_path {temp}/body;\n  proxy_temp_path {temp}/proxy;\n"
            f"  fastcgi_temp_path {temp}/fastcgi;\n  uwsgi_temp_path {temp}/uwsgi;\n  scgi_temp_path {temp}/scgi;\n"
            f"  include {self.directory}/sse-gateway.conf;\n}}\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> NginxProcess:
        command = [nginx_binary(), "-p", str(self.directory), "-c", str(self.directory / "nginx.conf")]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_until(self._answers, what="nginx", process=self.process)
        return self

    def _answers(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        shutil.rmtree(self.directory, ignore_errors=True)
