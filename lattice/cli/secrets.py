"""`lattice secret`: TLS certificates and keys the control plane keeps for gateways.

`lattice secret create tls NAME --cert FILE --key FILE [--ca FILE]` is Istio's
`kubectl create secret tls` / `generic --from-file=tls.crt,tls.key,ca.crt`: a Gateway server's
`credentialName: NAME` then serves it (from a gateway in the secret's namespace). Reads show the
certificate, never the key; the key travels only in the request body, never on a command line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from lattice.cli.client import ServerOpt, call, connect
from lattice.cli.output import Format, OutputOpt, emit, fail

app = typer.Typer(
    help="TLS secrets for gateways (a Gateway's credentialName, a Gateway API listener's certificateRefs).",
    no_args_is_help=True,
)
create_app = typer.Typer(help="Keep a new secret.", no_args_is_help=True)
update_app = typer.Typer(help="Replace a secret: gateways serve the new one to new connections.", no_args_is_help=True)
app.add_typer(create_app, name="create")
app.add_typer(update_app, name="update")

_Namespace = typer.Option("default", "-n", "--namespace", help="The namespace of the gateway that serves it.")
_Cert = typer.Option(..., "--cert", help="PEM certificate chain (leaf first), Istio's tls.crt.")
_Key = typer.Option(..., "--key", help="PEM private key of the certificate, unencrypted (tls.key); never echoed.")
_Ca = typer.Option(
    None, "--ca", help="PEM CA certificates that client certificates must chain to (ca.crt), for MUTUAL."
)


@create_app.command("tls")
def create_tls(
    name: str = typer.Argument(..., help="The secret's name: what a Gateway's credentialName says."),
    cert: Path = _Cert,
    key: Path = _Key,
    ca: Optional[Path] = _Ca,
    namespace: str = _Namespace,
    server: Optional[str] = ServerOpt,
    output: Format = OutputOpt,
) -> None:
    """Keep a TLS certificate and key (and client CAs) as secret NAME; refused if it exists."""
    _put("create", name, cert, key, ca, namespace, server, output)


@update_app.command("tls")
def update_tls(
    name: str = typer.Argument(..., help="The secret to replace."),
    cert: Path = _Cert,
    key: Path = _Key,
    ca: Optional[Path] = _Ca,
    namespace: str = _Namespace,
    server: Optional[str] = ServerOpt,
    output: Format = OutputOpt,
) -> None:
    """Replace secret NAME (rotation): new connections get the new certificate, no restart."""
    _put("update", name, cert, key, ca, namespace, server, output)


@app.command("list")
def list_secrets(
    namespace: Optional[str] = typer.Option(None, "-n", "--namespace", help="Only this namespace."),
    server: Optional[str] = ServerOpt,
    output: Format = OutputOpt,
) -> None:
    """Secrets the control plane keeps: the certificate's names and expiry, never the key."""
    items = call(connect(server).get, "/api/v1/secrets", namespace=namespace)["items"]
    rows = [
        [
            s["namespace"],
            s["name"],
            s["type"],
            ", ".join(s["dns_names"]) or s["subject"],
            s["not_after"],
            "yes" if s["has_ca"] else "no",
            s.get("error", ""),
        ]
        for s in items
    ]
    emit({"items": items}, output, ["NAMESPACE", "NAME", "TYPE", "NAMES", "EXPIRES", "CLIENT CA", "PROBLEM"], rows)


@app.command("get")
def get_secret(
    name: str = typer.Argument(...),
    namespace: str = _Namespace,
    server: Optional[str] = ServerOpt,
    output: Format = OutputOpt,
) -> None:
    """One secret's certificate: subject, issuer, names, validity, fingerprint (never the key)."""
    found = call(connect(server).get, f"/api/v1/secrets/{namespace}/{name}")
    rows = [[k, ", ".join(v) if isinstance(v, list) else v] for k, v in found.items()]
    emit(found, output, ["FIELD", "VALUE"], rows)


@app.command("delete")
def delete_secret(
    name: str = typer.Argument(...),
    namespace: str = _Namespace,
    server: Optional[str] = ServerOpt,
    output: Format = OutputOpt,
) -> None:
    """Forget a secret: gateway servers that name it stop serving (lattice status says why)."""
    result = call(connect(server).request, "DELETE", f"/api/v1/secrets/{namespace}/{name}")
    if output is not Format.table:
        return emit(result, output, [], [])
    typer.echo(f"secret {namespace}/{name} deleted")


def _put(mode, name, cert, key, ca, namespace, server, output) -> None:
    body = {"type": "tls", "mode": mode, "namespace": namespace, "name": name}
    body |= {"cert": _read(cert, "--cert"), "key": _read(key, "--key"), "ca": _read(ca, "--ca") if ca else ""}
    result = call(
        connect(server).request, "POST", "/api/v1/secrets", json.dumps(body).encode(), content_type="application/json"
    )
    if output is not Format.table:
        return emit(result, output, [], [])
    names = ", ".join(result["dns_names"]) or result["subject"]
    typer.echo(f"secret {namespace}/{name} {result['action']}: {names}, expires {result['not_after']}")


def _read(path: Path, flag: str) -> str:
    try:
        return path.read_text()
    except OSError as e:
        fail(f"cannot read {flag} {path}: {e.strerror}")
    except UnicodeDecodeError:
        fail(f"{flag} {path} is not a PEM text file (DER? convert it: openssl x509 -in F -inform der -out F.pem)")
