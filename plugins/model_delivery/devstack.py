"""The single-machine stack of ``make up``: the connection the delivery-metrics DAG reads the REST API with.

``airflow standalone`` uses Airflow's simple auth manager, which keeps its users' passwords in
``$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated`` and generates one for every
user missing there. :func:`api_connection` makes sure ``admin`` has a password in that file
(generating one, as Airflow would, when the file does not name it yet) and returns the http
connection ``model_delivery_airflow_api`` for ``http://127.0.0.1:<api port>`` with that login, as
the JSON of an ``AIRFLOW_CONN_*`` variable. ``scripts/up.sh`` exports it unless one is set.

    python -m model_delivery.devstack api-connection
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any

ADMIN = "admin"


def passwords_file() -> Path:
    """Where the simple auth manager keeps its passwords (its own rule: core.simple_auth_manager_passwords_file)."""
    configured = os.environ.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE")
    if configured:
        return Path(configured)
    home = Path(os.environ.get("AIRFLOW_HOME", Path.home() / "airflow"))
    return home / "simple_auth_manager_passwords.json.generated"


def admin_password(path: Path | None = None) -> str:
    """The password of ``admin`` in the passwords file; one is generated and added when it is missing."""
    path = path or passwords_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as file:
        fcntl.flock(file, fcntl.LOCK_EX)  # Airflow's api-server workers lock the same file
        file.seek(0)
        text = file.read().strip()
        passwords: dict[str, str] = {}
        if text:
            with contextlib.suppress(ValueError):
                passwords = json.loads(text)
            if not isinstance(passwords, dict):
                raise ValueError(f"{path} does not hold a JSON object of user: password. Fix: remove it; "
                                 "airflow standalone writes a new one.")
        if ADMIN not in passwords:
            passwords[ADMIN] = secrets.token_urlsafe(12)
            file.seek(0)
            file.truncate()
            file.write(json.dumps(passwords) + "\n")
        os.chmod(path, 0o600)
        return str(passwords[ADMIN])


def api_connection(path: Path | None = None) -> dict[str, Any]:
    """The http connection to this machine's api-server, logging in as ``admin``."""
    port = int(os.environ.get("AIRFLOW__API__PORT", "8080"))
    return {"conn_type": "http", "host": "127.0.0.1", "port": port, "schema": "http", "login": ADMIN,
            "password": admin_password(path)}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args != ["api-connection"]:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(api_connection()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
