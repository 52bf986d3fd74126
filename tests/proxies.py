"""Real proxies for the tests, each running one of the repository's own deploy/ files on free ports: nginx as the
load balancer (deploy/nginx/sse-gateway.conf), nginx and Caddy as TLS proxies speaking HTTP/2 to browsers
(deploy/nginx/sse-gateway-tls.conf, deploy/caddy/Caddyfile), and the self-signed certificate the TLS ones serve."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Self

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.processes import stop_process
from tests.servers import free_port, wait_until

DEPLOY = Path(__file__).parent.parent / "deploy"
SHIPPED_CONFIG = DEPLOY / "nginx" / "sse-gateway.conf"
SHIPPED_TLS_CONFIG = DEPLOY / "nginx" / "sse-gateway-tls.conf"
SHIPPED_CADDYFILE = DEPLOY / "caddy" / "Caddyfile"


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if found is None:
        raise RuntimeError("these tests need nginx (Debian package nginx)")
    return found


def caddy_binary() -> str:
    found = shutil.which("caddy")
    if found is None:
        raise RuntimeError("these tests need caddy (Debian package caddy)")
    return found


def render(shipped: str, replacements: list[tuple[str, str]]) -> str:
    """``shipped`` with each pattern replaced exactly once, so a test runs the shipped file, not a copy that drifted."""
    for pattern, replacement in replacements:
        shipped, count = re.subn(pattern, lambda _, text=replacement: text, shipped)
        assert count == 1, f"the shipped file has {count} matches of {pattern!r}, where the tests expect one"
    return shipped


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key, as PEM files in ``directory``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


class _Nginx:
    """nginx in the foreground, in a directory of its own, with one server block (``_configure``)."""

    scheme = "http"

    def __init__(self) -> None:
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="sse-test-nginx-"))
        self.process: subprocess.Popen[bytes] | None = None

    def _configure(self, server_block: str, *, http_lines: str = "access_log off;") -> None:
        (self.directory / "sse-gateway.conf").write_text(server_block)
        temp = self.directory / "temp"
        temp.mkdir()
        (self.directory / "nginx.conf").write_text(
            f"daemon off;\nworker_processes 1;\npid {self.directory}/nginx.pid;\n"
            f"error_log {self.directory}/error.log warn;\nevents {{ worker_connections 1024; }}\n"
            f"http {{\n  {http_lines}\n  client_body_temp_path {temp}/body;\n  proxy_temp_path {temp}/proxy;\n"
            f"  fastcgi_temp_path {temp}/fastcgi;\n  uwsgi_temp_path {temp}/uwsgi;\n  scgi_temp_path {temp}/scgi;\n"
            f"  include {self.directory}/sse-gateway.conf;\n}}\n"
        )

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self) -> Self:
        command = [nginx_binary(), "-p", str(self.directory), "-c", str(self.directory / "nginx.conf")]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_until(lambda: _answers(self.url), what="nginx", process=self.process)
        return self

    def stop(self) -> None:
        stop_process(self.process)
        shutil.rmtree(self.directory, ignore_errors=True)


class NginxProcess(_Nginx):
    """nginx with the shipped load-balancer block, its upstream lines pointed at ``backends``."""

    def __init__(self, backends: list[int]) -> None:
        super().__init__()
        shipped = SHIPPED_CONFIG.read_text()
        servers = "".join(f"    server 127.0.0.1:{port} max_fails=1 fail_timeout=5s;\n" for port in backends)
        rendered, count = re.subn(r"(?m)^    server 127\.0\.0\.1:\d+ .*\n", "", shipped)
        assert count >= 1, "the shipped config lists its gateways as 'server 127.0.0.1:PORT ...' lines"
        rendered = rendered.replace("upstream sse_gateways {\n", "upstream sse_gateways {\n" + servers, 1)
        self._configure(render(rendered, [(r"listen 8000;", f"listen 127.0.0.1:{self.port};")]))


# What the TLS proxies' access logs say of each finished request: its HTTP version, seen from the browser.
LOG_FORMAT = "log_format protocols '$server_protocol $request_uri';"


class TlsNginxProcess(_Nginx):
    """nginx with the shipped TLS block, in front of one gateway, connecting to it from ``bind``.

    Its http block compresses what a production one might (HTML, JSON, event streams), so that the shipped block's
    own ``gzip off`` is what keeps the streams uncompressed.
    """

    scheme = "https"

    def __init__(self, backend: int, certificate: tuple[Path, Path], *, bind: str) -> None:
        super().__init__()
        cert, key = certificate
        rendered = render(
            SHIPPED_TLS_CONFIG.read_text(),
            [
                (r"server 127\.0\.0\.1:8000;", f"server 127.0.0.1:{backend};"),
                (r"listen 443 ", f"listen 127.0.0.1:{self.port} "),  # the rest of the line as shipped
                (r"ssl_certificate \S+;", f"ssl_certificate {cert};"),
                (r"ssl_certificate_key \S+;", f"ssl_certificate_key {key};"),
                (r"# proxy_bind \S+;", f"proxy_bind {bind};"),
            ],
        )
        compress = "gzip on;\n  gzip_types text/event-stream application/json;"
        self._configure(
            rendered, http_lines=f"{LOG_FORMAT}\n  access_log {self.directory}/access.log protocols;\n  {compress}"
        )

    def protocols(self, prefix: str) -> list[str]:
        """The HTTP version of each finished request whose target starts with ``prefix``."""
        requests = [line.split(" ", 1) for line in _finished_lines(self.directory / "access.log")]
        return [protocol for protocol, target in requests if target.startswith(prefix)]


class CaddyProcess:
    """Caddy 2 in the foreground with the shipped Caddyfile, in front of one gateway, with the given certificate.

    The rendered copy adds only what a test needs around the shipped site: no admin endpoint, no redirect server on
    port 80, nothing kept in the home directory, and an access log.
    """

    scheme = "https"

    def __init__(self, backend: int, certificate: tuple[Path, Path]) -> None:
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="sse-test-caddy-"))
        cert, key = certificate
        site = (
            f"https://127.0.0.1:{self.port} {{\n\tbind 127.0.0.1\n"
            f"\tlog {{\n\t\toutput file {self.directory}/access.log\n\t\tformat json\n\t}}\n"
        )
        rendered = render(
            SHIPPED_CADDYFILE.read_text(),
            [
                (r"(?m)^sse\.example\.com \{\n", site),
                (r"# tls \S+ \S+\n", f"tls {cert} {key}\n"),
                (r"reverse_proxy 127\.0\.0\.1:8000 \{", f"reverse_proxy 127.0.0.1:{backend} {{"),
            ],
        )
        options = "{\n\tadmin off\n\tauto_https disable_redirects\n}\n\n"
        self.config = self.directory / "Caddyfile"
        self.config.write_text(options + rendered)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> CaddyProcess:
        home = str(self.directory / "home")
        env = {**os.environ, "HOME": home, "XDG_DATA_HOME": home, "XDG_CONFIG_HOME": home}
        command = [caddy_binary(), "run", "--config", str(self.config), "--adapter", "caddyfile"]
        with open(self.directory / "caddy.log", "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        wait_until(lambda: _answers(self.url), what=f"caddy (log: {self.directory}/caddy.log)", process=self.process)
        return self

    def protocols(self, prefix: str) -> list[str]:
        """The HTTP version of each finished request whose path starts with ``prefix``."""
        requests = [json.loads(line)["request"] for line in _finished_lines(self.directory / "access.log")]
        return [request["proto"] for request in requests if request["uri"].startswith(prefix)]

    def stop(self) -> None:
        stop_process(self.process)
        shutil.rmtree(self.directory, ignore_errors=True)


def _finished_lines(path: Path) -> list[str]:
    """The lines of a log another process is writing, the one it is in the middle of left out."""
    text = path.read_text() if path.exists() else ""
    return text[: text.rfind("\n") + 1].splitlines()


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1, verify=False).status_code == 200
    except httpx.HTTPError:
        return False
