"""The bearer token of model servers: read from an Airflow connection, handed to servers and clients.

A spec turns authentication on by naming a connection (its password field is the token). The
targets hand the token to the servers they start in the runtime's environment variable
(``Runtime.token_env``, never on a command line), and the smoke test, readiness checks and
``verify`` send it as ``Authorization: Bearer <token>``. The token is never logged, returned,
pushed to XCom or saved in the ledger.
"""

from __future__ import annotations

DEFAULT_CONN_ID = "model_delivery_serving_token"
"""The connection the docs suggest; a spec names its own (``serving.token_conn_id``)."""


def serving_token(conn_id: str | None) -> str | None:
    """The token in the password field of the Airflow connection ``conn_id``; None when ``conn_id`` is None.

    :param conn_id: the connection, or None for servers without authentication.
    :raises DeployFailed: the connection is not defined or has no password (authentication was asked for:
        never serve without it).
    """
    if conn_id is None:
        return None
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    from model_delivery.exceptions import DeployFailed

    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        conn = None
    token = (conn.password or "").strip() if conn is not None else ""
    if not token:
        raise DeployFailed(
            f"the model servers' token connection {conn_id!r} is not defined or has an empty password. Fix: create "
            f"it with the token as its password (e.g. AIRFLOW_CONN_{conn_id.upper()}='{{\"conn_type\": \"generic\", "
            "\"password\": \"...\"}'), or unset serving.token_conn_id to serve without authentication."
        )
    return token


def auth_headers(token: str | None) -> dict[str, str]:
    """The request headers that carry ``token`` (none without one)."""
    return {"Authorization": f"Bearer {token}"} if token else {}
