'use strict';
// End to end: the example backends (../server.js, and ../../python/app.py when
// python3 with PyJWT is there) behind a real wxgate with signed assertions on,
// and the fake WeChat (`wxgate fake-weixin`, the same binary), on loopback
// ports. Between wxgate and the backend sits a "tap", a pass-through proxy in
// this process that records what wxgate forwards, so that real assertions can
// be replayed straight to the backend. Assertions the tests forge are signed
// with wxgate's own key file, to show that each claim check, not the
// signature alone, refuses them.
//
//   WXGATE_BIN=/path/to/wxgate node --test test/
//
// WXGATE_BIN defaults to target/debug/wxgate of this repository. The Python
// suite runs when `python3` ($PYTHON, then python3 on the PATH, then
// /usr/bin/python3) is 3.11+ and imports PyJWT with cryptography; otherwise it
// is skipped, or fails when WXGATE_TEST_PYTHON=1.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawn, spawnSync } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');

const BIN = path.resolve(process.env.WXGATE_BIN || path.join(__dirname, '..', '..', '..', '..', 'target', 'debug', 'wxgate'));
const NODE_APP = path.join(__dirname, '..', 'server.js');
const PYTHON_APP = path.join(__dirname, '..', '..', 'python', 'app.py');
const APPID = 'wx0000000000fake00';
const SECRET = 'fake-secret';
const AUDIENCE = 'example-backend';

// ---- processes and ports -------------------------------------------------

/** A port nobody listens on right now (bound on 0, then released). */
function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** The environment without our WXGATE_* variables: wxgate refuses the ones that are not its own. */
function cleanEnv(extra) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) if (!/^WXGATE_/i.test(k)) env[k] = v;
  return Object.assign(env, extra);
}

const children = new Set();
process.on('exit', () => children.forEach((c) => c.kill('SIGKILL')));

/** Starts a process, keeping the tail of its output for error messages. */
function startProcess(bin, args, env) {
  const child = spawn(bin, args, { env: cleanEnv(env), stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  const keep = (chunk) => (output = (output + chunk).slice(-8192));
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  child.exited = new Promise((resolve) => {
    child.on('exit', (code, signal) => resolve({ code, signal }));
    child.on('error', (err) => resolve({ code: null, error: err.message }));
  }).finally(() => children.delete(child));
  child.output = () => output;
  child.describe = `${path.basename(bin)} ${args.map((a) => path.basename(a)).join(' ')}`;
  children.add(child);
  return child;
}

/** SIGTERM, then SIGKILL after `graceMs`. */
async function stopProcess(child, graceMs = 5000) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await child.exited;
  clearTimeout(timer);
}

/** Polls `url` until it answers 200; fails at once if `child` exits, and after `limitMs` anyway. */
async function waitReady(url, child, limitMs = 20000) {
  const deadline = Date.now() + limitMs;
  let exited = null;
  child.exited.then((e) => (exited = e));
  let last = '';
  while (Date.now() < deadline) {
    if (exited) throw new Error(`${child.describe} exited (${JSON.stringify(exited)}):\n${child.output()}`);
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(2000) });
      await res.arrayBuffer();
      if (res.status === 200) return;
      last = `HTTP ${res.status}`;
    } catch (e) {
      last = e.message;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  await stopProcess(child);
  throw new Error(`${url} did not answer 200 within ${limitMs} ms (last: ${last}); ${child.describe} said:\n${child.output()}`);
}

/**
 * Starts `bin args` with a free port (`env(port)`), ready when `readyUrl(port)`
 * answers 200; again (three times at most) if the port was taken in between.
 */
async function startOnFreePort(bin, args, env, readyUrl) {
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const extra = await env(port);
    const child = startProcess(bin, typeof args === 'function' ? args(port) : args, extra);
    try {
      await waitReady(readyUrl(port, extra), child);
      return { child, port, url: `http://127.0.0.1:${port}`, env: extra };
    } catch (e) {
      if (attempt >= 3 || !/address already in use/i.test(e.message)) throw e;
    }
  }
}

// ---- the tap: wxgate -> tap -> backend, recording what wxgate forwards ----

function startTap() {
  const tap = { target: null, seen: [] };
  tap.server = http.createServer((req, res) => {
    tap.seen.push({ method: req.method, url: req.url, headers: { ...req.headers } });
    const up = http.request(`${tap.target}${req.url}`, { method: req.method, headers: req.headers, agent: false }, (answer) => {
      res.writeHead(answer.statusCode, answer.headers);
      answer.pipe(res);
    });
    up.on('error', (e) => {
      res.writeHead(502, { 'content-type': 'text/plain' });
      res.end(`tap: ${e.message}`);
    });
    req.pipe(up);
  });
  /** The last request wxgate forwarded for `method path`. */
  tap.last = (method, p) => [...tap.seen].reverse().find((r) => r.method === method && r.url.split('?')[0] === p);
  tap.close = () => new Promise((done) => {
    tap.server.closeAllConnections();
    tap.server.close(() => done());
  });
  return new Promise((resolve, reject) => {
    tap.server.on('error', reject);
    tap.server.listen(0, '127.0.0.1', () => {
      tap.url = `http://127.0.0.1:${tap.server.address().port}`;
      resolve(tap);
    });
  });
}

// ---- HTTP and JWS helpers --------------------------------------------------

async function call(base, method, p, { headers = {}, body } = {}) {
  const init = { method, headers: { ...headers }, signal: AbortSignal.timeout(10000) };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers['content-type'] = 'application/json';
  }
  const res = await fetch(base + p, init);
  const text = await res.text();
  let data = text;
  try {
    data = JSON.parse(text);
  } catch (e) {
    // not JSON: keep the text
  }
  return { status: res.status, headers: res.headers, data };
}

const b64json = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
const claimsOf = (token) => JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString('utf8'));

/** A compact ES256 JWS over `claims`, signed with `key` (wxgate's, unless another is given). */
function sign(claims, key, header) {
  const signed = `${b64json(header)}.${b64json(claims)}`;
  const sig = crypto.sign('sha256', Buffer.from(signed), { key, dsaEncoding: 'ieee-p1363' });
  return `${signed}.${sig.toString('base64url')}`;
}

/** RFC 7638 thumbprint of a P-256 public key. */
function thumbprint(publicKey) {
  const { crv, kty, x, y } = publicKey.export({ format: 'jwk' });
  return crypto.createHash('sha256').update(JSON.stringify({ crv, kty, x, y })).digest('base64url');
}

// ---- which backends ---------------------------------------------------------

/** A python3 that is 3.11+ and imports PyJWT with cryptography, or why there is none. */
function findPython() {
  const version = 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 3)';
  const pyjwt = 'import jwt; from jwt.algorithms import has_crypto; assert has_crypto, "no cryptography"';
  const tried = [];
  let plain; // a python3 >= 3.11, PyJWT or not
  for (const py of [process.env.PYTHON, 'python3', '/usr/bin/python3'].filter(Boolean)) {
    const ok = (code) => spawnSync(py, ['-c', code], { encoding: 'utf8', timeout: 20000 });
    const v = ok(version);
    if (v.status !== 0) {
      tried.push(`${py}: ${v.error ? v.error.code : 'not 3.11+'}`);
      continue;
    }
    plain ??= py;
    const j = ok(pyjwt);
    if (j.status === 0) return { python: py, plain };
    tried.push(`${py}: ${j.stderr.trim().split('\n').pop()}`);
  }
  return {
    plain,
    why: `no python3 >= 3.11 with PyJWT and cryptography (apt-get install python3-jwt python3-cryptography) [${tried.join('; ')}]`,
  };
}

const python = findPython();
const BACKENDS = [
  { name: 'node', bin: process.execPath, args: [NODE_APP] },
  { name: 'python', bin: python.python, args: [PYTHON_APP], missing: python.why },
];

// ---- the tests -------------------------------------------------------------

let dir;
let fake;
let keyFile;
let signingKey;

before(async () => {
  assert.ok(fs.existsSync(BIN), `WXGATE_BIN=${BIN} does not exist: build wxgate (cargo build) or set WXGATE_BIN`);
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wxgate-backend-example-'));
  keyFile = path.join(dir, 'assertion.pem');
  const keygen = spawnSync(BIN, ['keygen', '--out', keyFile], { env: cleanEnv({ RUST_LOG: 'warn' }), encoding: 'utf8', timeout: 20000 });
  assert.equal(keygen.status, 0, `wxgate keygen: ${keygen.stdout}${keygen.stderr}`);
  signingKey = crypto.createPrivateKey(fs.readFileSync(keyFile));
  fake = await startOnFreePort(
    BIN,
    (port) => ['fake-weixin', '--listen', `127.0.0.1:${port}`, '--appid', APPID, '--secret', SECRET],
    async () => ({ RUST_LOG: 'warn' }),
    (port) => `http://127.0.0.1:${port}/__fake/stats`,
  );
});

after(async () => {
  if (fake) await stopProcess(fake.child);
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

it('wxgate jwks --key-file prints the key wxgate signs with', () => {
  const out = spawnSync(BIN, ['jwks', '--key-file', keyFile], { env: cleanEnv({ RUST_LOG: 'warn' }), encoding: 'utf8', timeout: 20000 });
  assert.equal(out.status, 0, out.stderr);
  const [jwk] = JSON.parse(out.stdout).keys;
  assert.deepEqual({ kty: jwk.kty, crv: jwk.crv, alg: jwk.alg, use: jwk.use }, { kty: 'EC', crv: 'P-256', alg: 'ES256', use: 'sig' });
  assert.equal(jwk.kid, thumbprint(crypto.createPublicKey(signingKey)));
});

if (python.why && process.env.WXGATE_TEST_PYTHON === '1') {
  it('python3 with PyJWT is available (WXGATE_TEST_PYTHON=1)', () => {
    assert.fail(python.why);
  });
}

it('python: without PyJWT and with a JWKS URL, app.py exits with a clear message', { skip: !python.plain && 'no python3 >= 3.11' }, () => {
  // A `jwt` package that cannot be imported, ahead of the real one.
  const shadow = path.join(dir, 'no-pyjwt', 'jwt');
  fs.mkdirSync(shadow, { recursive: true });
  fs.writeFileSync(path.join(shadow, '__init__.py'), 'raise ImportError("simulated: no PyJWT")\n');
  const r = spawnSync(python.plain, [PYTHON_APP], {
    env: cleanEnv({ PYTHONPATH: path.dirname(shadow), ASSERTION_JWKS_URL: 'http://127.0.0.1:9/jwks', ASSERTION_AUDIENCE: AUDIENCE, PORT: '0' }),
    encoding: 'utf8',
    timeout: 20000,
  });
  assert.equal(r.status, 1, r.stderr);
  assert.match(r.stderr, /PyJWT is not installed: apt-get install python3-jwt python3-cryptography/);
});

for (const impl of BACKENDS) {
  describe(`${impl.name} example backend behind wxgate with assertions`, { skip: impl.missing, timeout: 120000 }, () => {
    let tap;
    let gate;
    let backend;
    let jwksUrl;
    let kid;

    before(async () => {
      tap = await startTap();
      const empty = path.join(dir, 'empty.toml');
      fs.writeFileSync(empty, '');
      gate = await startOnFreePort(
        BIN,
        ['--config', empty],
        async (port) => ({
          WXGATE_SERVER__LISTEN: `127.0.0.1:${port}`,
          WXGATE_SERVER__ADMIN_LISTEN: `127.0.0.1:${await freePort()}`,
          WXGATE_SERVER__WORKERS: '1',
          WXGATE_SERVER__SHUTDOWN_DELAY: '0s',
          WXGATE_SERVER__SHUTDOWN_GRACE: '1s',
          WXGATE_UPSTREAM__URL: tap.url,
          WXGATE_WEIXIN__APPID: APPID,
          WXGATE_WEIXIN__SECRET: SECRET,
          WXGATE_WEIXIN__API_BASE: fake.url,
          WXGATE_ASSERTION__ENABLED: 'true',
          WXGATE_ASSERTION__AUDIENCE: AUDIENCE,
          WXGATE_ASSERTION__KEY_FILE: keyFile,
          RUST_LOG: 'warn',
        }),
        (port, env) => `http://${env.WXGATE_SERVER__ADMIN_LISTEN}/readyz`,
      );
      jwksUrl = `http://${gate.env.WXGATE_SERVER__ADMIN_LISTEN}/.well-known/jwks.json`;
      kid = (await call(jwksUrl, 'GET', '')).data.keys[0].kid;
      backend = await startOnFreePort(
        impl.bin,
        impl.args,
        async (port) => ({ PORT: String(port), HOST: '127.0.0.1', ASSERTION_JWKS_URL: jwksUrl, ASSERTION_AUDIENCE: AUDIENCE }),
        (port) => `http://127.0.0.1:${port}/healthz`,
      );
      tap.target = backend.url;
    });

    after(async () => {
      await Promise.all([gate, backend].filter(Boolean).map((p) => stopProcess(p.child)));
      if (tap) await tap.close();
    });

    /** A session on wxgate for `user` (a fresh login code each time). */
    let n = 0;
    async function login(user) {
      const res = await call(gate.url, 'POST', '/api/login', { body: { code: `${user}.${impl.name}-${++n}` } });
      assert.equal(res.status, 200, JSON.stringify(res.data));
      const session = res.headers.get('x-wx-session');
      assert.ok(session, 'wxgate hands out x-wx-session');
      return { session, answer: res.data };
    }

    /** Straight to the backend, bypassing wxgate. */
    const direct = (method, p, headers) => call(backend.url, method, p, { headers });

    /** A real assertion wxgate sent for `method path`, with the identity headers it came with. */
    async function captured(method, p) {
      const { session } = await login('alice');
      const res = await call(gate.url, method, p, { headers: { 'x-wx-session': session } });
      assert.equal(res.status, 200, JSON.stringify(res.data));
      const seen = tap.last(method, p);
      const { 'x-wx-openid': openid, 'x-wx-appid': appid, 'x-wx-assertion': assertion } = seen.headers;
      assert.ok(assertion, 'wxgate sent an assertion');
      return { openid, appid, assertion, claims: claimsOf(assertion) };
    }

    it('login: the backend welcomes the openid of the verified assertion', async () => {
      const { answer } = await login('alice');
      assert.deepEqual(answer, { welcome: 'oFAKEalice' });
      const forwarded = tap.last('POST', '/api/login');
      const claims = claimsOf(forwarded.headers['x-wx-assertion']);
      assert.equal(claims.sub, 'oFAKEalice');
      assert.equal(claims.htm, 'POST');
      assert.equal(claims.htu, '/api/login');
    });

    it('GET /api/me with a session: 200 with the openid, appid and unionid', async () => {
      const { session } = await login('alice');
      const me = await call(gate.url, 'GET', '/api/me', { headers: { 'x-wx-session': session } });
      assert.equal(me.status, 200, JSON.stringify(me.data));
      assert.deepEqual(me.data, { openid: 'oFAKEalice', appid: APPID, unionid: null, phone: null });

      const union = await login('unionjoe');
      const meToo = await call(gate.url, 'GET', '/api/me', { headers: { 'x-wx-session': union.session } });
      assert.deepEqual(meToo.data, { openid: 'oFAKEunionjoe', appid: APPID, unionid: 'UFAKEunionjoe', phone: null });
    });

    it('phone number (encryptedData + iv minted by the fake): the backend answers it from the assertion', async () => {
      const { session } = await login('alice');
      const minted = await call(fake.url, 'POST', '/__fake/mint', {
        body: { user: 'alice', phoneNumber: '13800138000', purePhoneNumber: '13800138000', countryCode: '86' },
      });
      assert.equal(minted.status, 200, JSON.stringify(minted.data));
      const res = await call(gate.url, 'POST', '/api/phone', { headers: { 'x-wx-session': session }, body: minted.data });
      assert.equal(res.status, 200, JSON.stringify(res.data));
      assert.deepEqual(res.data, { phone: '13800138000' });
      const claims = claimsOf(tap.last('POST', '/api/phone').headers['x-wx-assertion']);
      assert.equal(claims.phone_number, '13800138000');
      assert.equal(claims.pure_phone_number, '13800138000');
      assert.equal(claims.country_code, '86');
      // phone.remember is off: later requests carry no phone.
      const me = await call(gate.url, 'GET', '/api/me', { headers: { 'x-wx-session': session } });
      assert.equal(me.data.phone, null);
    });

    it('phone number, code flow', async () => {
      const { session } = await login('alice');
      const res = await call(gate.url, 'POST', '/api/phone', {
        headers: { 'x-wx-session': session },
        body: { code: `phone:13900139000.${impl.name}` },
      });
      assert.equal(res.status, 200, JSON.stringify(res.data));
      assert.deepEqual(res.data, { phone: '13900139000' });
    });

    it('anonymous GET /api/me: 401 session_required', async () => {
      const res = await call(gate.url, 'GET', '/api/me');
      assert.equal(res.status, 401);
      assert.equal(res.data.error, 'session_required');
      assert.equal(tap.last('GET', '/api/me').headers['x-wx-assertion'], undefined, 'no identity, no assertion');
    });

    it('other routes echo the x-wx-* headers, never the assertion; htu leaves the query out', async () => {
      const { session } = await login('alice');
      const res = await call(gate.url, 'GET', '/api/orders?page=2', { headers: { 'x-wx-session': session } });
      assert.equal(res.status, 200, JSON.stringify(res.data));
      assert.equal(res.data.path, '/api/orders');
      assert.equal(res.data.headers['x-wx-openid'], 'oFAKEalice');
      assert.equal(res.data.headers['x-wx-assertion'], undefined);
      assert.equal(res.data.verified, true);
    });

    it('forged identities sent straight to the backend are refused', async () => {
      const forged = { 'x-wx-openid': 'oFAKEalice', 'x-wx-appid': APPID };
      const cases = {
        'no assertion': forged,
        garbage: { ...forged, 'x-wx-assertion': 'not-a-jwt' },
        'three garbage segments': { ...forged, 'x-wx-assertion': 'a.b.c' },
        'alg none': { ...forged, 'x-wx-assertion': `${b64json({ alg: 'none', kid, typ: 'JWT' })}.${b64json({ sub: 'oFAKEalice' })}.` },
      };
      // Perfect claims, signed by a key wxgate does not publish (under its own kid, and under wxgate's).
      const now = Math.floor(Date.now() / 1000);
      const claims = { iss: 'wxgate', aud: AUDIENCE, sub: 'oFAKEalice', appid: APPID, iat: now, exp: now + 120, jti: 'x', htm: 'GET', htu: '/api/me' };
      const other = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
      cases['unknown key'] = { ...forged, 'x-wx-assertion': sign(claims, other.privateKey, { alg: 'ES256', kid: thumbprint(other.publicKey), typ: 'JWT' }) };
      cases["another key under wxgate's kid"] = { ...forged, 'x-wx-assertion': sign(claims, other.privateKey, { alg: 'ES256', kid, typ: 'JWT' }) };
      // wxgate's key and a good signature, but a header naming another algorithm.
      cases['alg ES384'] = { ...forged, 'x-wx-assertion': sign(claims, signingKey, { alg: 'ES384', kid, typ: 'JWT' }) };
      for (const [name, headers] of Object.entries(cases)) {
        const res = await direct('GET', '/api/me', headers);
        assert.equal(res.status, 401, `${name}: ${JSON.stringify(res.data)}`);
        assert.equal(res.data.error, 'invalid_assertion', name);
      }
      // The control: the same claims under wxgate's key pass.
      const ok = await direct('GET', '/api/me', { ...forged, 'x-wx-assertion': sign(claims, signingKey, { alg: 'ES256', kid, typ: 'JWT' }) });
      assert.equal(ok.status, 200, JSON.stringify(ok.data));
    });

    it('a captured assertion only opens the request it was made for', async () => {
      const real = await captured('GET', '/api/me');
      assert.deepEqual(
        { iss: real.claims.iss, aud: real.claims.aud, sub: real.claims.sub, htm: real.claims.htm, htu: real.claims.htu },
        { iss: 'wxgate', aud: AUDIENCE, sub: 'oFAKEalice', htm: 'GET', htu: '/api/me' },
      );
      const headers = { 'x-wx-openid': real.openid, 'x-wx-appid': real.appid, 'x-wx-assertion': real.assertion };
      // Replayed for the very same request it still passes, until it expires
      // (ttl, 2 minutes by default): htm/htu narrow a leaked assertion to one
      // route, they do not make it single-use (a backend could remember jti).
      assert.equal((await direct('GET', '/api/me', headers)).status, 200);
      assert.equal((await direct('GET', '/api/me?any=query', headers)).status, 200, 'the query is not part of htu');
      for (const [method, p, h] of [
        ['GET', '/api/orders', headers],
        ['POST', '/api/phone', headers],
        ['DELETE', '/api/me', headers],
        ['GET', '/api/me/', headers],
        ['GET', '/api/me', { ...headers, 'x-wx-openid': 'oFAKEmallory' }],
      ]) {
        const res = await direct(method, p, h);
        assert.equal(res.status, 401, `${method} ${p} ${h['x-wx-openid']}: ${JSON.stringify(res.data)}`);
        assert.equal(res.data.error, 'invalid_assertion');
      }
      // Its payload changed (another user), the signature kept: refused.
      const [h64, , s64] = real.assertion.split('.');
      const tampered = `${h64}.${b64json({ ...real.claims, sub: 'oFAKEmallory' })}.${s64}`;
      const res = await direct('GET', '/api/me', { ...headers, 'x-wx-openid': 'oFAKEmallory', 'x-wx-assertion': tampered });
      assert.equal(res.status, 401);
    });

    it('aud, iss, exp and iat are checked, with 30 s of leeway', async () => {
      const real = await captured('GET', '/api/me');
      const now = Math.floor(Date.now() / 1000);
      const header = { alg: 'ES256', kid, typ: 'JWT' };
      const attempt = async (changes) => {
        const token = sign({ ...real.claims, ...changes }, signingKey, header);
        return (await direct('GET', '/api/me', { 'x-wx-openid': real.openid, 'x-wx-assertion': token })).status;
      };
      assert.equal(await attempt({}), 200, 'the real claims, re-signed');
      assert.equal(await attempt({ aud: 'another-backend' }), 401, 'aud');
      assert.equal(await attempt({ iss: 'someone-else' }), 401, 'iss');
      assert.equal(await attempt({ iat: now - 300, exp: now - 120 }), 401, 'expired two minutes ago');
      assert.equal(await attempt({ iat: now - 200, exp: now - 10 }), 200, 'expired 10 s ago: within the leeway');
      assert.equal(await attempt({ iat: now + 300, exp: now + 420 }), 401, 'issued five minutes from now');
      assert.equal(await attempt({ iat: now + 10, exp: now + 130 }), 200, 'issued 10 s from now: within the leeway');
      assert.equal(await attempt({ exp: undefined }), 401, 'no exp');
    });

    it('without ASSERTION_JWKS_URL the headers are trusted as they come (trust by the network)', async () => {
      const trusting = await startOnFreePort(
        impl.bin,
        impl.args,
        async (port) => ({ PORT: String(port), HOST: '127.0.0.1' }),
        (port) => `http://127.0.0.1:${port}/healthz`,
      );
      try {
        const res = await call(trusting.url, 'GET', '/api/me', { headers: { 'x-wx-openid': 'oANYONE', 'x-wx-appid': APPID } });
        assert.equal(res.status, 200);
        assert.deepEqual(res.data, { openid: 'oANYONE', appid: APPID, unionid: null, phone: null });
        assert.match(trusting.child.output(), /ASSERTION_JWKS_URL is not set/);
      } finally {
        await stopProcess(trusting.child);
      }
    });

    it('refuses to start with ASSERTION_JWKS_URL but no ASSERTION_AUDIENCE', async () => {
      const child = startProcess(impl.bin, impl.args, { PORT: '0', ASSERTION_JWKS_URL: jwksUrl });
      const timer = setTimeout(() => child.kill('SIGKILL'), 20000);
      const { code } = await child.exited;
      clearTimeout(timer);
      assert.notEqual(code, 0);
      assert.match(child.output(), /ASSERTION_AUDIENCE is required/);
    });
  });
}
