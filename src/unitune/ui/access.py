"""Who may drive the UI: an ASGI guard in front of every route of Gradio's app (the page, its API, the queue's event
stream, files, uploads). The UI runs code and touches files as the user who started it, and every local user, and
any web page by DNS rebinding, can reach 127.0.0.1, so, as Jupyter does:
- a request needs the secret token (``?token=`` once, then an HttpOnly cookie), or Gradio's login with ``--auth``;
- on a loopback bind the ``Host`` header must name a loopback address (DNS rebinding sends the attacker's name);
- a request whose ``Origin`` is another site is refused (a cross-site form post carries the browser's cookie);
- wrong tokens and passwords from one address are rate-limited.
Each refusal is a one-line text body."""

from __future__ import annotations

import hmac
import ipaddress
import threading
import time
from urllib.parse import parse_qsl, urlencode, urlsplit

from ..config.commands import LOOPBACK_HOSTS, is_loopback

FAILURES = 5  # wrong tokens or passwords one address may send within WINDOW seconds...
WINDOW = 60.0
BLOCK = 60.0  # ...before it gets 429 for this long
# What Gradio's login page loads before the password is given (--auth only); the rest needs its login cookie.
PUBLIC = ("/", "/login", "/login/", "/theme.css", "/favicon.ico", "/manifest.json", "/robots.txt",
          "/gradio_api/theme.css", "/gradio_api/login_check", "/gradio_api/login_check/")
PUBLIC_TREES = ("/assets/", "/static/", "/svelte/", "/pwa_icon")


class Limiter:
    """Counts the distinct wrong secrets each address sent in the last ``window`` seconds (a browser re-sending one
    stale cookie with every asset counts once) and blocks the address for ``block`` seconds at ``failures``."""

    def __init__(self, failures: int = FAILURES, window: float = WINDOW, block: float = BLOCK, clock=time.monotonic):
        self.failures, self.window, self.block, self.clock = failures, window, block, clock
        self._wrong: dict[str, dict[object, float]] = {}
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def blocked(self, client: str) -> bool:
        with self._lock:
            return self._until.get(client, 0.0) > self.clock()

    def failed(self, client: str, secret: object) -> None:
        now = self.clock()
        with self._lock:
            if len(self._wrong) + len(self._until) > 4096:  # forget the addresses that are done, however many come
                self._wrong = {c: w for c, w in self._wrong.items() if any(now - t < self.window for t in w.values())}
                self._until = {c: t for c, t in self._until.items() if t > now}
            wrong = {k: t for k, t in self._wrong.get(client, {}).items() if now - t < self.window}
            wrong[secret] = now
            self._wrong[client] = wrong
            if len(wrong) >= self.failures:
                self._until[client], self._wrong[client] = now + self.block, {}

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._wrong.pop(client, None)


def address(host: str, port: int) -> str:
    """The URL to open for a bind address (an any-address bind is opened on this machine at 127.0.0.1)."""
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def same(given: str, secret: str) -> bool:
    """A comparison that takes as long whatever ``given`` holds (bytes: compare_digest refuses non-ASCII str)."""
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), secret.encode())


def cookies_of(headers: dict[str, str]) -> dict[str, str]:
    from starlette.requests import cookie_parser

    return cookie_parser(headers.get("cookie", ""))


def netloc(url: str) -> str | None:
    """The host:port of a URL; None for one that does not parse ("http://[" would raise in urlsplit)."""
    try:
        return urlsplit(url).netloc.lower()
    except ValueError:
        return None


def loopback_host(value: str, port: int, names: tuple[str, ...]) -> bool:
    """Whether a Host header names this machine's loopback at this port: a loopback address, or one of ``names``
    (never a name resolved now: a DNS-rebinding name resolves to 127.0.0.1 too)."""
    try:
        where = urlsplit(f"//{value}")
        if where.port != port or where.hostname is None:
            return False
    except ValueError:  # a port that is not a number
        return False
    if where.hostname in names:
        return True
    try:
        return ipaddress.ip_address(where.hostname).is_loopback
    except ValueError:
        return False


class Guard:
    """ASGI middleware: the checks above, then the app. ``token``: the secret of the printed URL (None: none needed);
    ``signed_in``: with --auth, whether a request's cookies hold a Gradio login (its /login is rate-limited here)."""

    def __init__(self, app, host: str, port: int, token: str | None = None, signed_in=None,
                 limiter: Limiter | None = None):
        self.app, self.port, self.token, self.signed_in = app, port, token, signed_in
        self.limiter = limiter or Limiter()
        self.cookie = f"unitune-ui-{port}"  # cookies ignore ports: two UIs on one machine each keep their own
        self.shown = address(host, port)
        # A bind on 0.0.0.0, :: or another machine-facing address answers at every name and address of the machine,
        # which we cannot list, so the Host check is for loopback binds; there the token or password is always asked
        # for, and a page rebound to the machine comes under its own name, whose cookies hold no token.
        self.names = (*LOOPBACK_HOSTS, host.strip("[]")) if is_loopback(host) else None

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):  # lifespan
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        client = (scope.get("client") or ("?",))[0]
        host = headers.get("host", "")
        if self.names is not None and not loopback_host(host, self.port, self.names):
            return await refuse(scope, send, 403, f"refused: Host '{host}' is not this UI's address (a guard against "
                                                  f"DNS rebinding); open {self.shown}")
        origin = headers.get("origin")
        if origin is not None and netloc(origin) != host.lower():
            return await refuse(scope, send, 403, f"refused: a request from another site ({origin})")
        if self.signed_in is not None:
            return await self.login(scope, receive, send, headers, client)
        if self.token is None:  # --no_token, on loopback
            return await self.app(scope, receive, send)
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))
        cookie = cookies_of(headers).get(self.cookie)
        if cookie is not None and same(cookie, self.token):
            return await self.app(scope, receive, send)
        given = query.get("token", cookie)
        if given is None:
            return await refuse(scope, send, 403, "refused: open the URL `unitune ui` printed (it carries the token)")
        right = same(given, self.token)  # first: local users share 127.0.0.1, and guesses must not lock the owner out
        if not right and self.limiter.blocked(client):
            return await refuse(scope, send, 429, f"refused: too many wrong tokens from {client}; wait a minute")
        if not right:
            self.limiter.failed(client, given)
            return await refuse(scope, send, 403, "refused: a wrong or old token; open the URL `unitune ui` printed")
        self.limiter.succeeded(client)
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):  # the token leaves the address bar
            rest = urlencode([(k, v) for k, v in query.items() if k != "token"])
            path = scope.get("raw_path") or scope["path"].encode()
            where = b"/" + path.lstrip(b"/") + (f"?{rest}".encode() if rest else b"")  # "//x" would leave the site
            return await respond(send, 303, "signed in\n", [
                (b"location", where),
                (b"set-cookie", f"{self.cookie}={self.token}; Path=/; HttpOnly; SameSite=Strict".encode())])
        return await self.app(scope, receive, send)

    async def login(self, scope, receive, send, headers: dict[str, str], client: str):
        """--auth: Gradio's login page and /login are open (/login rate-limited); the rest needs its login."""
        path = scope["path"]
        if scope["type"] == "http" and scope["method"] == "POST" and path.rstrip("/") == "/login":
            if self.limiter.blocked(client):
                return await refuse(scope, send, 429, f"refused: too many wrong passwords from {client}; wait a minute")

            async def watch(message):
                if message["type"] == "http.response.start":
                    if message["status"] == 200:
                        self.limiter.succeeded(client)
                    elif message["status"] in (400, 401):  # Gradio's "Incorrect credentials."
                        self.limiter.failed(client, object())
                await send(message)
            return await self.app(scope, receive, watch)
        if path in PUBLIC or path.startswith(PUBLIC_TREES) or self.signed_in(cookies_of(headers)):
            return await self.app(scope, receive, send)
        return await refuse(scope, send, 403, f"refused: sign in first at {self.shown}")


async def respond(send, status: int, text: str, extra: list[tuple[bytes, bytes]] = ()) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()), *extra]})
    await send({"type": "http.response.body", "body": body})


async def refuse(scope, send, status: int, line: str) -> None:
    if scope["type"] == "websocket":  # closed before it is accepted: the server answers 403
        return await send({"type": "websocket.close", "code": 1008})
    await respond(send, status, line + "\n")


__all__ = ["BLOCK", "FAILURES", "Guard", "Limiter", "WINDOW", "address", "loopback_host"]
