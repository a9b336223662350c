"""Webhook sink: POST a JSON batch; any 2xx is the acknowledgement."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

from decider.export.exporter import SendFailed

__all__ = ["WebhookSink"]


class WebhookSink:
    """Body: `{"decisions": [line, …], "first_seq": N, "last_seq": M}` — lines as `decider log
    --follow` prints them. A receiver deduplicates a resent batch by `seq` (or `decision_id` +
    `change`)."""

    def __init__(self, url: str, headers: Mapping[str, str] | None = None, timeout_s: float = 10.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"--url: not an http(s) URL: {url!r}")
        self.url = url
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self.timeout_s = timeout_s

    def send(self, lines: Sequence[dict[str, Any]]) -> None:
        body = json.dumps({"decisions": list(lines), "first_seq": lines[0]["seq"], "last_seq": lines[-1]["seq"]},
                          separators=(",", ":")).encode()
        post(self.url, body, self.headers, self.timeout_s)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is not an acknowledgement: urllib would re-send a 302'd POST as a GET to wherever
    it points and take that answer's 200 as the batch's, moving the cursor past records never
    delivered. Returning None makes the 3xx an HTTPError, so the batch is sent again."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirects)


def post(url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> None:
    req = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
    try:
        # Only the status counts; the body is never read (a receiver could send gigabytes).
        with _opener.open(req, timeout=timeout_s) as resp:
            if not 200 <= resp.status < 300:
                raise SendFailed(f"HTTP {resp.status}")
    except urllib.error.HTTPError as exc:
        if 300 <= exc.code < 400:
            raise SendFailed(f"HTTP {exc.code}: redirect not followed (the receiver must answer 2xx itself)") \
                from None
        raise SendFailed(f"HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise SendFailed(str(getattr(exc, "reason", exc))) from None
