"""``amodal keys generate DIR [--name NAME]``: a CURVE key pair for an engine or a client (README, "Security")."""
from __future__ import annotations

import argparse

from amodal.security import generate_keys


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="amodal keys", description=__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    gen = sub.add_parser("generate", help="write NAME.key (public) and NAME.key_secret (secret, mode 0600)")
    gen.add_argument("directory")
    gen.add_argument("--name", default="server", help="certificate name (default: server)")
    args = parser.parse_args(argv)
    public, secret = generate_keys(args.directory, args.name)
    print(f"public key: {public}\nsecret key: {secret}")
    print("engine: security: {server_secret_key: <server>.key_secret, authorized_clients: <dir of client .key files>};"
          " clients: --server-key <server>.key --client-cert <client>.key_secret")
    return 0
