"""wss:// with ``tornws serve --certfile --keyfile``; certificates made by trustme."""

from __future__ import annotations

import ssl
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets.asyncio.client

from conftest import Server, free_port
from processes import run, tornws_command

trustme = pytest.importorskip("trustme", reason="pip install trustme")


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_server(ca: trustme.CA, tmp_path: Path) -> Iterator[Server]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_pem.write_to_path(str(keyfile))
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(certfile), append=True)
    port = free_port()
    args = [sys.executable, "-m", "tornws", "serve", "--port", str(port)]
    server = Server([*args, "--certfile", str(certfile), "--keyfile", str(keyfile)], port)
    yield server
    server.stop()


@pytest.mark.gen_test(timeout=30)
async def test_wss_echo_with_the_websockets_client(ca: trustme.CA, tls_server: Server) -> None:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    url = f"wss://127.0.0.1:{tls_server.port}/echo"
    async with websockets.asyncio.client.connect(url, ssl=context) as client:
        await client.send("over TLS")
        assert await client.recv() == "over TLS"
        await client.send(b"\x00\xff")
        assert await client.recv() == b"\x00\xff"
    assert "listening on https://127.0.0.1" in tls_server.output


@pytest.mark.gen_test(timeout=30)
async def test_wss_refuses_a_client_that_does_not_trust_the_certificate(tls_server: Server) -> None:
    url = f"wss://127.0.0.1:{tls_server.port}/echo"
    with pytest.raises(ssl.SSLCertVerificationError):
        async with websockets.asyncio.client.connect(url, ssl=ssl.create_default_context()):
            pass


def test_tornws_client_with_cafile(ca: trustme.CA, tls_server: Server, tmp_path: Path) -> None:
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    url = f"wss://127.0.0.1:{tls_server.port}/echo"
    trusted = run(tornws_command("client", "--cafile", str(cafile), url), stdin="secure\n")
    assert trusted.returncode == 0, trusted.stderr
    assert trusted.stdout.strip() == "secure"
    untrusted = run(tornws_command("client", url), stdin="secure\n")
    assert untrusted.returncode == 1
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
    assert "Traceback" not in untrusted.stderr


def test_serve_refuses_a_missing_certificate(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    result = run(tornws_command("serve", "--port", "0", "--certfile", str(missing)))
    assert result.returncode == 2
    assert "cannot load --certfile/--keyfile" in result.stderr
    result = run(tornws_command("serve", "--port", "0", "--keyfile", str(missing)))
    assert result.returncode == 2 and "--keyfile needs --certfile" in result.stderr
