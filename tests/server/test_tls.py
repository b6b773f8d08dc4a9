"""TLS and mutual TLS from configuration, with certificates made for the test."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.serving import RunningServer
from vaeserve.api.v1 import vae_pb2 as pb
from vaeserve.api.v1 import vae_pb2_grpc


def _issue(
    name: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None, *, ca: bool
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256()), key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pki")
    ca = _issue("test-ca", None, ca=True)
    files: dict[str, Path] = {}
    for name, (cert, key) in {
        "ca": ca,
        "server": _issue("localhost", ca, ca=False),
        "client": _issue("client", ca, ca=False),
    }.items():
        files[f"{name}.crt"] = root / f"{name}.crt"
        files[f"{name}.crt"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[f"{name}.key"] = root / f"{name}.key"
        files[f"{name}.key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return files


def _info(address: str, credentials: grpc.ChannelCredentials) -> pb.GetModelInfoResponse:
    with grpc.secure_channel(address, credentials) as channel:
        return vae_pb2_grpc.VaeServiceStub(channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=10)


def test_tls(serve: Callable[..., RunningServer], worse_bundle: Path, pki: dict[str, Path]) -> None:
    server = serve(worse_bundle, tls_cert=pki["server.crt"], tls_key=pki["server.key"])
    trusted = grpc.ssl_channel_credentials(root_certificates=pki["ca.crt"].read_bytes())
    assert _info(f"localhost:{server.app.port}", trusted).latent_dim == 3
    with grpc.insecure_channel(server.address) as channel, pytest.raises(grpc.RpcError) as info:
        vae_pb2_grpc.VaeServiceStub(channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # plaintext to a TLS port


def test_mutual_tls_requires_a_client_certificate(
    serve: Callable[..., RunningServer], worse_bundle: Path, pki: dict[str, Path]
) -> None:
    server = serve(
        worse_bundle,
        tls_cert=pki["server.crt"],
        tls_key=pki["server.key"],
        tls_client_ca=pki["ca.crt"],
        require_client_cert=True,
    )
    address = f"localhost:{server.app.port}"
    with_cert = grpc.ssl_channel_credentials(
        pki["ca.crt"].read_bytes(), pki["client.key"].read_bytes(), pki["client.crt"].read_bytes()
    )
    assert _info(address, with_cert).latent_dim == 3
    without = grpc.ssl_channel_credentials(root_certificates=pki["ca.crt"].read_bytes())
    with pytest.raises(grpc.RpcError) as info:
        _info(address, without)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
