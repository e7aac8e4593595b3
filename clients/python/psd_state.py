"""A psd worker's session state, over the state API (plain HTTP, urllib).

psd gives every worker PSD_STATE_URL (its session's values) and
PSD_SHARED_URL (its application's, shared by all sessions); both stop
working when the worker stops.

    from psd_state import State
    state = State()                      # None-like (falsy) when not under psd
    count = int(state.get("count") or 0)
    state.put("count", str(count + 1))   # durable once it returns
    hits = State.shared().add("hits", 1)
"""
import os
import urllib.error
import urllib.request


class State:
    def __init__(self, url=None):
        url = url if url is not None else os.environ.get("PSD_STATE_URL", "")
        self.url = url if not url or url.endswith("/") else url + "/"

    def __bool__(self):
        return bool(self.url)

    @classmethod
    def shared(cls):
        return cls(os.environ.get("PSD_SHARED_URL", ""))

    def _call(self, method, key, data=None, headers=None):
        request = urllib.request.Request(self.url + key, data=data, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read(), response.headers.get("ETag")
        except urllib.error.HTTPError as e:
            return e.code, e.read(), None

    def get(self, key, with_etag=False):
        """The value (bytes) under key, or None; with_etag: (value, etag)."""
        status, body, etag = self._call("GET", key)
        if status == 404:
            body, etag = None, None
        elif status != 200:
            raise RuntimeError(f"psd state GET {key}: {status}")
        return (body, etag) if with_etag else body

    def put(self, key, value, etag=None):
        """Stores value (str or bytes); with etag, only if unchanged. False when another writer came first."""
        data = value.encode() if isinstance(value, str) else value
        status, _, _ = self._call("PUT", key, data, {"If-Match": etag} if etag else None)
        if status == 412:
            return False
        if status not in (201, 204):
            raise RuntimeError(f"psd state PUT {key}: {status}")
        return True

    def delete(self, key):
        status, _, _ = self._call("DELETE", key)
        if status not in (204, 404):
            raise RuntimeError(f"psd state DELETE {key}: {status}")
        return status == 204

    def add(self, key, n=1):
        """Adds n to the integer under key, atomically; the new value."""
        status, body, _ = self._call("POST", f"{key}?add={n}", b"")
        if status != 200:
            raise RuntimeError(f"psd state POST {key}: {status}")
        return int(body)
