"""The Alertmanager configuration tuneloop ships, with the adapter's webhook filled in.

``monitoring/alertmanager/alertmanager.yml`` names the adapter's webhook and its bearer token by variables
(``${TUNELOOP_ALERT_WEBHOOK_URL}``, ``${TUNELOOP_ALERT_WEBHOOK_TOKEN_FILE}``), never by an address that
fits one deployment only. Alertmanager 0.25 reads no environment variables (and has no ``url_file``), so
``tuneloop alertmanager-config`` renders the file with them; on Kubernetes an ``AlertmanagerConfig``
resource plays the same part.
"""

from __future__ import annotations

import string
from pathlib import Path
from urllib.parse import urlsplit

from monitoring.errors import MonitorError

TEMPLATE = Path(__file__).parent / "alertmanager" / "alertmanager.yml"
WEBHOOK_URL = "TUNELOOP_ALERT_WEBHOOK_URL"
TOKEN_FILE = "TUNELOOP_ALERT_WEBHOOK_TOKEN_FILE"


def render_alertmanager_config(webhook_url: str, token_file: str | Path, template: Path = TEMPLATE) -> str:
    """The configuration with the adapter's webhook URL and the file Alertmanager reads its bearer token from
    (Alertmanager sends ``Authorization: Bearer <the file's content>``)."""
    parts = urlsplit(webhook_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise MonitorError(f"the alert webhook URL must be http(s)://host[:port]/path, got {webhook_url!r}")
    try:
        return string.Template(template.read_text()).substitute(
            {WEBHOOK_URL: webhook_url, TOKEN_FILE: str(Path(token_file).absolute())})
    except KeyError as exc:  # the template names a variable this function does not fill
        raise MonitorError(f"{template} names ${{{exc.args[0]}}}, which nothing fills in") from None
