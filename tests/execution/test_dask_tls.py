"""A study on a TLS-secured dask cluster: a real `dask scheduler --protocol tls` and `dask
worker` on localhost with certificates made here, which refuse clients without them."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import exact_study, stop_processes

import sbc
from sbc.errors import SBCError

pytest.importorskip("distributed")
pytestmark = pytest.mark.dask


def _self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    """A key and a self-signed certificate (its own CA), as `Security.temporary()` makes them
    in memory; written as PEM files (certificate, key)."""
    crypto = pytest.importorskip("cryptography")
    del crypto
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / f"{name}.crt", folder / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    """(tls:// address, certificate, key): one scheduler and one worker, each started the way a
    user would, trusting only the certificate made here."""
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = _self_signed(tmp, "cluster")
    tls = ["--tls-ca-file", str(cert), "--tls-cert", str(cert), "--tls-key", str(key)]
    dask = str(Path(sys.executable).with_name("dask"))
    file = tmp / "scheduler.json"
    common = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "cwd": tmp}
    scheduler = [dask, "scheduler", "--protocol", "tls", "--host", "127.0.0.1", "--port", "0"]
    scheduler += ["--dashboard-address", ":0", "--scheduler-file", str(file), *tls]
    worker = [dask, "worker", "--scheduler-file", str(file), "--nworkers", "1", "--nthreads", "1"]
    procs = [subprocess.Popen(scheduler, **common)]
    try:
        deadline = time.monotonic() + 60
        while not file.is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        procs.append(subprocess.Popen([*worker, *tls], **common))
        from distributed import Client, Security

        security = Security(tls_ca_file=str(cert), tls_client_cert=str(cert),
                            tls_client_key=str(key), require_encryption=True)  # fmt: skip
        with Client(scheduler_file=str(file), security=security, timeout=30) as client:
            client.wait_for_workers(1, timeout=60)
            address = client.scheduler.address
        assert address.startswith("tls://127.0.0.1:")
        yield address, cert, key
    finally:
        stop_processes(procs)


def _ranks(folder) -> pd.DataFrame:
    r = sbc.load(folder).ranks
    return r.sort_values(["sim", "quantity"]).reset_index(drop=True)


def test_a_study_runs_on_a_tls_scheduler(tmp_path, tls_cluster):
    """Certificates from the study file (relative paths), then from dask's own config."""
    address, cert, key = tls_cluster
    reference = sbc.run(exact_study(tmp_path, "pool", sims=12), progress=False)
    path = exact_study(tmp_path, "tls", sims=12)
    os.symlink(cert, tmp_path / "ca.pem")
    path.write_text(
        path.read_text()
        + f'[parallel]\nscheduler = "{address}"\ntls_ca_file = "ca.pem"\n'
        + f'tls_cert = "{cert}"\ntls_key = "{key}"\n'
    )
    proc = subprocess.run([sys.executable, "-m", "sbc.cli", "run", str(path), "--quiet"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    on_tls = tmp_path / "results" / "tls"
    assert (sbc.load(on_tls).simulations["status"] == "ok").all()
    pd.testing.assert_frame_equal(_ranks(reference), _ranks(on_tls))

    import dask

    tls_config = {
        "distributed.comm.tls.ca-file": str(cert),
        "distributed.comm.tls.client.cert": str(cert),
        "distributed.comm.tls.client.key": str(key),
    }
    with dask.config.set(tls_config):
        by_config = sbc.run(exact_study(tmp_path, "config", sims=12), scheduler=address,
                            progress=False)  # fmt: skip
    pd.testing.assert_frame_equal(_ranks(reference), _ranks(by_config))


def test_the_tls_scheduler_refuses_plain_tcp_and_strangers(tmp_path, tls_cluster, monkeypatch):
    import sbc.execution.pools.dask as sbc_dask

    monkeypatch.setattr(sbc_dask, "CONNECT_TIMEOUT", 2)
    address, cert, key = tls_cluster
    from distributed import Client

    plain = address.replace("tls://", "tcp://")
    with pytest.raises((OSError, TimeoutError)):
        Client(plain, timeout=2)  # dask's own client, without TLS: refused
    path = exact_study(tmp_path, "plain", sims=4)
    with pytest.raises(SBCError, match=rf"^{plain}: (no dask scheduler answered within 2 s|"
                       r"cannot talk to a dask scheduler there)"):  # fmt: skip
        sbc.run(path, scheduler=plain, progress=False)

    stranger, stranger_key = _self_signed(tmp_path, "stranger")  # signed by no one it trusts
    files = {"tls_ca_file": cert, "tls_cert": stranger, "tls_key": stranger_key}
    with pytest.raises(SBCError, match=rf"^{address}: no dask scheduler answered over TLS \(or "
                       r"it refused our certificate\) within 2 s$"):  # fmt: skip
        sbc.run(path, scheduler=address, tls=files, progress=False)

    path = exact_study(tmp_path, "refused", sims=4)  # refused before anything is written
    with pytest.raises(SBCError, match=rf"^{address}: a tls:// scheduler needs tls_ca_file and "
                       r"tls_client_cert: \[parallel\] tls_ca_file"):  # fmt: skip
        sbc.run(path, scheduler=address, progress=False)
    own = {"tls_ca_file": cert, "tls_cert": cert, "tls_key": key}
    with pytest.raises(SBCError, match=r"^tcp://127\.0\.0\.1:1: TLS certificates are given but "
                       r"the scheduler address is tcp:// \(unencrypted\): use its tls:// "
                       r"address$"):  # fmt: skip
        sbc.run(path, scheduler="tcp://127.0.0.1:1", tls=own, progress=False)
    assert not (tmp_path / "results" / "refused").exists()
