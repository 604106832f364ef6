'use strict';
// A backend behind wxgate, with no dependencies (Node >= 18).
//
// wxgate logs the mini program's users in and forwards each request with
// headers saying who is calling: x-wx-openid, x-wx-appid, x-wx-unionid (when
// WeChat gave one) and, on the phone route, x-wx-phone-number,
// x-wx-pure-phone-number and x-wx-country-code. wxgate removes any copy of
// them a client sends, but it cannot stop a caller that reaches this backend
// without going through wxgate. So there are two ways to trust them:
//
// - by the network: only wxgate can reach this port (a sidecar on 127.0.0.1,
//   a private network, a NetworkPolicy). Then leave ASSERTION_JWKS_URL unset.
// - by a signature: set [assertion] enabled = true in wxgate, and
//   ASSERTION_JWKS_URL here. Every request that carries x-wx-openid must then
//   carry x-wx-assertion, an ES256 JWT wxgate signed for this very request
//   (method and path included); anything else is refused with 401, and the
//   identity is taken from the verified claims.
//
// A request without x-wx-openid is anonymous either way.
//
// Environment: PORT (3000), HOST (127.0.0.1), ASSERTION_JWKS_URL (wxgate's
// admin listener: http://127.0.0.1:9901/.well-known/jwks.json),
// ASSERTION_AUDIENCE (wxgate's [assertion].audience; required with the JWKS
// URL), ASSERTION_ISSUER (wxgate's [assertion].issuer, default "wxgate").
// Do not export these to wxgate itself: it refuses WXGATE_ variables that
// are not its own.

const http = require('node:http');
const crypto = require('node:crypto');

const PORT = Number(process.env.PORT || 3000);
const HOST = process.env.HOST || '127.0.0.1';
const JWKS_URL = process.env.ASSERTION_JWKS_URL || '';
const AUDIENCE = process.env.ASSERTION_AUDIENCE || '';
const ISSUER = process.env.ASSERTION_ISSUER || 'wxgate';
const LEEWAY = 30; // seconds of clock skew allowed on exp and iat

if (JWKS_URL && !AUDIENCE) {
  console.error('ASSERTION_AUDIENCE is required with ASSERTION_JWKS_URL (the audience wxgate signs for)');
  process.exit(2);
}

// The JWKS, by kid. Fetched at start, and again when an assertion names a
// kid we do not know (a key rotation), at most once per 30 s (5 s after a
// failed fetch), so that made-up kids cannot make us hammer wxgate.
let keys = new Map();
let nextFetch = 0;
let loading = null;
function loadKeys() {
  nextFetch = Date.now() + 30000;
  loading ??= fetch(JWKS_URL, { signal: AbortSignal.timeout(5000) })
    .then((res) => (res.ok ? res.json() : Promise.reject(new Error(`HTTP ${res.status}`))))
    .then((jwks) => {
      keys = new Map(jwks.keys.filter((k) => k.kty === 'EC' && k.crv === 'P-256')
        .map((k) => [k.kid, crypto.createPublicKey({ key: k, format: 'jwk' })]));
    })
    .catch((e) => {
      nextFetch = Date.now() + 5000;
      console.error(`cannot load the JWKS from ${JWKS_URL}: ${e.message}`);
    })
    .finally(() => (loading = null));
  return loading;
}
async function keyFor(kid) {
  if (loading) await loading; // the fetch at start, or another request's
  if (typeof kid === 'string' && !keys.has(kid) && Date.now() >= nextFetch) await loadKeys();
  return keys.get(kid);
}

function json(b64) {
  try {
    return JSON.parse(Buffer.from(b64, 'base64url').toString('utf8')) || {};
  } catch (e) {
    throw new Error('malformed assertion');
  }
}

// The verified claims of x-wx-assertion, or an Error saying why not.
async function verify(req, path) {
  const token = req.headers['x-wx-assertion'];
  const parts = typeof token === 'string' ? token.split('.') : [];
  if (parts.length !== 3) throw new Error('no assertion');
  const header = json(parts[0]);
  if (header.alg !== 'ES256') throw new Error('not ES256');
  const key = await keyFor(header.kid);
  if (!key) throw new Error('unknown kid');
  const signed = Buffer.from(`${parts[0]}.${parts[1]}`);
  const signature = Buffer.from(parts[2], 'base64url'); // r || s, 64 bytes
  if (!crypto.verify('sha256', signed, { key, dsaEncoding: 'ieee-p1363' }, signature)) throw new Error('bad signature');
  const c = json(parts[1]);
  const now = Math.floor(Date.now() / 1000);
  if (c.iss !== ISSUER) throw new Error('wrong iss');
  if (c.aud !== AUDIENCE && !(Array.isArray(c.aud) && c.aud.includes(AUDIENCE))) throw new Error('wrong aud');
  if (!(typeof c.exp === 'number' && now < c.exp + LEEWAY)) throw new Error('expired');
  if (!(typeof c.iat === 'number' && c.iat <= now + LEEWAY)) throw new Error('issued in the future');
  // The assertion is for this request only: the same method, the same path
  // (as received, without the query), the same user as the headers say.
  if (c.htm !== req.method || c.htu !== path) throw new Error('made for another request');
  if (c.sub !== req.headers['x-wx-openid']) throw new Error('made for another user');
  return c;
}

// Who is calling: null (anonymous), or { openid, appid, unionid, phone }.
async function identify(req, path) {
  const h = req.headers;
  if (!h['x-wx-openid']) return null;
  if (!JWKS_URL) {
    return { openid: h['x-wx-openid'], appid: h['x-wx-appid'], unionid: h['x-wx-unionid'] || null, phone: h['x-wx-phone-number'] || null };
  }
  const c = await verify(req, path);
  return { openid: c.sub, appid: c.appid, unionid: c.unionid || null, phone: c.phone_number || null };
}

function send(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

const server = http.createServer(async (req, res) => {
  req.resume(); // the body is not needed here
  const path = req.url.split('?')[0]; // raw, as wxgate forwarded it: what htu names
  let user;
  try {
    user = await identify(req, path);
  } catch (e) {
    console.error(`refused ${req.method} ${path}: ${e.message}`);
    return send(res, 401, { error: 'invalid_assertion', message: e.message });
  }
  const route = `${req.method} ${path}`;
  if (['POST /api/login', 'GET /api/me', 'POST /api/phone'].includes(route) && !user) {
    // The mini program client library logs in again on exactly this answer.
    return send(res, 401, { error: 'session_required', message: 'this route needs a logged-in user' });
  }
  if (route === 'POST /api/login') return send(res, 200, { welcome: user.openid });
  if (route === 'GET /api/me') return send(res, 200, user);
  if (route === 'POST /api/phone') return send(res, 200, { phone: user.phone });
  // Anything else: what arrived. Not the assertion itself: it is a credential.
  const headers = Object.fromEntries(Object.entries(req.headers).filter(([k]) => k.startsWith('x-wx-') && k !== 'x-wx-assertion'));
  send(res, 200, { method: req.method, path, headers, verified: Boolean(user && JWKS_URL) });
});

server.listen(PORT, HOST, () => {
  const { address, port } = server.address();
  console.log(`listening on http://${address}:${port}`);
  if (JWKS_URL) loadKeys();
  else console.warn('ASSERTION_JWKS_URL is not set: x-wx-* headers are trusted as they come (only wxgate must reach this port)');
});
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    server.close(() => process.exit(0));
    server.closeIdleConnections(); // wxgate's pooled keep-alive connections
  });
}
