#!/usr/bin/env python3
"""A backend behind wxgate: Python 3.11+, the standard library, and PyJWT to verify.

wxgate logs the mini program's users in and forwards each request with headers
saying who is calling: x-wx-openid, x-wx-appid, x-wx-unionid (when WeChat gave
one) and, on the phone route, x-wx-phone-number, x-wx-pure-phone-number and
x-wx-country-code. wxgate removes any copy of them a client sends, but it cannot
stop a caller that reaches this backend without going through wxgate. So there
are two ways to trust them:

- by the network: only wxgate can reach this port (a sidecar on 127.0.0.1, a
  private network, a NetworkPolicy). Then leave ASSERTION_JWKS_URL unset.
- by a signature: set [assertion] enabled = true in wxgate, and ASSERTION_JWKS_URL
  here. Every request that carries x-wx-openid must then carry x-wx-assertion,
  an ES256 JWT wxgate signed for this very request (method and path included);
  anything else is refused with 401, and the identity is taken from the
  verified claims.

A request without x-wx-openid is anonymous either way.

Environment: PORT (3000), HOST (127.0.0.1), ASSERTION_JWKS_URL (wxgate's admin
listener: http://127.0.0.1:9901/.well-known/jwks.json), ASSERTION_AUDIENCE
(wxgate's [assertion].audience; required with the JWKS URL), ASSERTION_ISSUER
(wxgate's [assertion].issuer, default "wxgate"). Do not export these to wxgate
itself: it refuses WXGATE_ variables that are not its own.

Verifying needs PyJWT with its crypto extra: `apt-get install python3-jwt
python3-cryptography` (Debian, Ubuntu) or `pip install "pyjwt[crypto]"`.
http.server is fine for an example; serve a real application with a WSGI or
ASGI server, the checks stay the same.
"""

import json
import os
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(os.environ.get("PORT", "3000"))
HOST = os.environ.get("HOST", "127.0.0.1")
JWKS_URL = os.environ.get("ASSERTION_JWKS_URL", "")
AUDIENCE = os.environ.get("ASSERTION_AUDIENCE", "")
ISSUER = os.environ.get("ASSERTION_ISSUER", "wxgate")
LEEWAY = 30  # seconds of clock skew allowed on exp and iat

if JWKS_URL:
    try:
        import jwt
        from jwt.algorithms import has_crypto
    except ImportError:
        sys.exit("ASSERTION_JWKS_URL is set but PyJWT is not installed: apt-get install python3-jwt "
                 "python3-cryptography, or pip install 'pyjwt[crypto]'")
    if not has_crypto:
        sys.exit("PyJWT cannot verify ES256 without 'cryptography': apt-get install python3-cryptography, "
                 "or pip install 'pyjwt[crypto]'")
    if not AUDIENCE:
        sys.exit("ASSERTION_AUDIENCE is required with ASSERTION_JWKS_URL (the audience wxgate signs for)")


class Keys:
    """The JWKS, by kid. Fetched at start, and again when an assertion names a
    kid we do not know (a key rotation), at most once per 30 s (5 s after a
    failed fetch), so that made-up kids cannot make us hammer wxgate."""

    def __init__(self, url):
        self.url, self.keys, self.next_fetch, self.lock = url, {}, 0.0, threading.Lock()

    def get(self, kid):
        if not isinstance(kid, str):
            return None
        with self.lock:
            if kid not in self.keys and time.monotonic() >= self.next_fetch:
                self.load()
            return self.keys.get(kid)

    def load(self):
        try:
            with urllib.request.urlopen(self.url, timeout=5) as res:
                jwks = jwt.PyJWKSet.from_dict(json.load(res))
            self.keys = {k.key_id: k.key for k in jwks.keys if k.key_type == "EC"}
            self.next_fetch = time.monotonic() + 30
        except Exception as e:  # noqa: BLE001 -- any failure: keep the old keys, try again later
            self.next_fetch = time.monotonic() + 5
            print(f"cannot load the JWKS from {self.url}: {e}", file=sys.stderr)


KEYS = Keys(JWKS_URL) if JWKS_URL else None


class Refused(Exception):
    pass


def verify(headers, method, path):
    """The verified claims of x-wx-assertion; Refused saying why not."""
    token = headers.get("x-wx-assertion")
    if not token:
        raise Refused("no assertion")
    try:
        key = KEYS.get(jwt.get_unverified_header(token).get("kid"))
        if key is None:
            raise Refused("unknown kid")
        claims = jwt.decode(token, key, algorithms=["ES256"], audience=AUDIENCE, issuer=ISSUER,
                            leeway=LEEWAY, options={"require": ["exp", "iat", "sub", "htm", "htu"]})
    except jwt.PyJWTError as e:  # bad signature, wrong aud or iss, expired, malformed...
        raise Refused(str(e)) from e
    # The assertion is for this request only: the same method, the same path
    # (as received, without the query), the same user as the headers say.
    if claims["htm"] != method or claims["htu"] != path:
        raise Refused("made for another request")
    if claims["sub"] != headers.get("x-wx-openid"):
        raise Refused("made for another user")
    return claims


def identify(headers, method, path):
    """Who is calling: None (anonymous), or {openid, appid, unionid, phone}."""
    if not headers.get("x-wx-openid"):
        return None
    if KEYS is None:
        return {"openid": headers["x-wx-openid"], "appid": headers.get("x-wx-appid"),
                "unionid": headers.get("x-wx-unionid"), "phone": headers.get("x-wx-phone-number")}
    c = verify(headers, method, path)
    return {"openid": c["sub"], "appid": c.get("appid"), "unionid": c.get("unionid"),
            "phone": c.get("phone_number")}


class Handler(BaseHTTPRequestHandler):
    def handle_any(self):
        # Read the body (not needed here) so that closing the connection does not reset it.
        self.rfile.read(int(self.headers.get("content-length") or 0))
        path = self.path.split("?", 1)[0]  # raw, as wxgate forwarded it: what htu names
        try:
            user = identify(self.headers, self.command, path)
        except Refused as e:
            print(f"refused {self.command} {path}: {e}", file=sys.stderr)
            return self.send(401, {"error": "invalid_assertion", "message": str(e)})
        route = f"{self.command} {path}"
        if route in ("POST /api/login", "GET /api/me", "POST /api/phone") and user is None:
            # The mini program client library logs in again on exactly this answer.
            return self.send(401, {"error": "session_required", "message": "this route needs a logged-in user"})
        if route == "POST /api/login":
            return self.send(200, {"welcome": user["openid"]})
        if route == "GET /api/me":
            return self.send(200, user)
        if route == "POST /api/phone":
            return self.send(200, {"phone": user["phone"]})
        # Anything else: what arrived. Not the assertion itself: it is a credential.
        seen = {k.lower(): v for k, v in self.headers.items()
                if k.lower().startswith("x-wx-") and k.lower() != "x-wx-assertion"}
        self.send(200, {"method": self.command, "path": path, "headers": seen,
                        "verified": bool(user and KEYS)})

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = handle_any

    def send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    server = ThreadingHTTPServer((HOST, PORT), Handler)
    print(f"listening on http://{HOST}:{server.server_address[1]}", flush=True)
    if KEYS:
        KEYS.load()
    else:
        print("ASSERTION_JWKS_URL is not set: x-wx-* headers are trusted as they come "
              "(only wxgate must reach this port)", file=sys.stderr)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
