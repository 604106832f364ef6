'use strict';
// Runs a real wxgate, the fake WeChat (`wxgate fake-weixin`, same binary) and a
// small echo backend on loopback ports, and a `wx` stand-in backed by fetch,
// for the end-to-end test and the example's local services.

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const http = require('node:http');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');

const APPID = 'wx4f4bc4dec97d474b';
const SECRET = 's3cret';

/** The wxgate binary named by $WXGATE_BIN, or an Error saying what is wrong. */
function wxgateBin() {
  const bin = process.env.WXGATE_BIN;
  if (!bin) {
    throw new Error(
      'WXGATE_BIN is not set. The end-to-end test runs a real wxgate binary: build one ' +
        '(`cargo build` at the repository root) and run e.g. `WXGATE_BIN=target/debug/wxgate npm test`.',
    );
  }
  const resolved = path.resolve(bin);
  try {
    fs.accessSync(resolved, fs.constants.X_OK);
  } catch (e) {
    throw new Error(`WXGATE_BIN=${bin}: ${resolved} is missing or not executable (${e.code}).`);
  }
  return resolved;
}

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

/**
 * The echo backend: answers every request with 200 and JSON
 * `{ method, path, headers, body }` of what it received, and records it.
 * `/api/me` is a route that needs a user: without `x-wx-openid` it answers
 * 401 `{"error":"session_required","message":...}`, wxgate's own shape, so
 * the client logs in again.
 */
function startBackend(onRequest) {
  const received = [];
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      const url = new URL(req.url, 'http://backend');
      const entry = { method: req.method, path: url.pathname, query: url.search, headers: req.headers, body };
      received.push(entry);
      if (onRequest) onRequest(entry);
      let status = 200;
      let answer = entry;
      if (url.pathname === '/api/me' && !req.headers['x-wx-openid']) {
        status = 401;
        answer = { error: 'session_required', message: 'this route needs a logged-in user' };
      }
      const text = JSON.stringify(answer);
      res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
      res.end(text);
    });
  });
  return new Promise((resolve, reject) => {
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      resolve({
        url: `http://127.0.0.1:${port}`,
        received,
        /** What reached `path`, in order. */
        requestsTo: (p) => received.filter((r) => r.path === p),
        close: () =>
          new Promise((done) => {
            server.closeAllConnections();
            server.close(() => done());
          }),
      });
    });
  });
}

/** Every child process started here, so that all can be stopped, even on a crash. */
const children = new Set();
process.on('exit', () => {
  for (const child of children) {
    try {
      child.kill('SIGKILL');
    } catch (e) {
      // already gone
    }
  }
});

/**
 * Starts a process and keeps the tail of its output for error messages
 * (`show`: also copy it to this process's stderr).
 */
function startProcess(bin, args, env, show) {
  // No WXGATE_* variable of ours (WXGATE_BIN) or of the caller's shell reaches
  // the child: wxgate reads them as configuration, and refuses unknown ones.
  const childEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!/^WXGATE_/i.test(k)) childEnv[k] = v;
  }
  const child = spawn(bin, args, { env: Object.assign(childEnv, env), stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  const keep = (chunk) => {
    output = (output + chunk.toString('utf8')).slice(-16384);
    if (show) process.stderr.write(chunk);
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  child.exited = new Promise((resolve) => {
    child.on('exit', (code, signal) => {
      children.delete(child);
      resolve({ code, signal });
    });
    child.on('error', (err) => {
      children.delete(child);
      keep(`spawn error: ${err.message}\n`);
      resolve({ code: null, signal: null, error: err });
    });
  });
  child.output = () => output;
  child.describe = `${path.basename(bin)} ${args.join(' ')}`;
  children.add(child);
  return child;
}

/** SIGTERM, then SIGKILL if it has not exited within `graceMs`. */
async function stopProcess(child, graceMs = 5000) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  let timer;
  const killed = new Promise((resolve) => {
    timer = setTimeout(() => {
      child.kill('SIGKILL');
      resolve();
    }, graceMs);
  });
  await Promise.race([child.exited, killed]);
  clearTimeout(timer);
  await child.exited;
}

/**
 * Polls `url` until it answers 200. Fails at once if `child` exits, and after
 * `limitMs` in any case, with the child's output in the message.
 */
async function waitReady(url, child, limitMs = 30000) {
  const deadline = Date.now() + limitMs;
  let exited = null;
  child.exited.then((e) => {
    exited = e;
  });
  let last = '';
  while (Date.now() < deadline) {
    if (exited) {
      throw new Error(`${child.describe} exited (${JSON.stringify(exited)}) before ${url} answered:\n${child.output()}`);
    }
    try {
      const res = await fetch(url);
      await res.arrayBuffer();
      if (res.status === 200) return;
      last = `HTTP ${res.status}`;
    } catch (e) {
      last = e.message;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`${url} did not answer 200 within ${limitMs} ms (last: ${last}); ${child.describe} said:\n${child.output()}`);
}

/** waitReady, and the child stopped if it never got ready. */
async function readyOrStop(url, child) {
  try {
    await waitReady(url, child);
  } catch (e) {
    await stopProcess(child);
    throw e;
  }
}

/**
 * `start()` again (at most three times in all) when it failed because a port
 * picked by freePort() was taken in between by another process.
 */
async function retryOnPortClash(start) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await start();
    } catch (e) {
      if (attempt >= 3 || !/address already in use/i.test(e.message)) throw e;
    }
  }
}

/** `wxgate fake-weixin` on a free loopback port. */
function startFake(bin) {
  return retryOnPortClash(() => startFakeOnce(bin));
}

async function startFakeOnce(bin) {
  const port = await freePort();
  const child = startProcess(bin, ['fake-weixin', '--listen', `127.0.0.1:${port}`, '--appid', APPID, '--secret', SECRET], {
    RUST_LOG: 'warn',
  });
  const url = `http://127.0.0.1:${port}`;
  await readyOrStop(`${url}/__fake/stats`, child);
  return {
    url,
    child,
    async stats() {
      const res = await fetch(`${url}/__fake/stats`);
      return res.json();
    },
    /** `{ encryptedData, iv }` under the user's current session_key. */
    async mint(user, phone) {
      const res = await fetch(`${url}/__fake/mint`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ user, phoneNumber: phone, purePhoneNumber: phone, countryCode: '86' }),
      });
      const body = await res.json();
      if (res.status !== 200) throw new Error(`mint for ${user}: HTTP ${res.status} ${JSON.stringify(body)}`);
      return body;
    },
    /** A code2Session call wxgate never hears of: WeChat's key for `user` changes behind its back. */
    async rotateKeyBehindWxgate(user, nonce) {
      const q = new URLSearchParams({ appid: APPID, secret: SECRET, js_code: `${user}.${nonce}`, grant_type: 'authorization_code' });
      const res = await fetch(`${url}/sns/jscode2session?${q}`);
      const body = JSON.parse(await res.text());
      if (!body.session_key) throw new Error(`jscode2session for ${user}: ${JSON.stringify(body)}`);
    },
  };
}

/**
 * wxgate with `[server] workers = 1` in front of `upstreamUrl`, talking to the
 * fake WeChat at `fakeUrl`. `extra` is appended to the TOML (e.g. a
 * `[login]` table); `listenPort` fixes the public port (default: a free one).
 */
function startWxgate(bin, options) {
  // A fixed listen port taken by someone else is the caller's problem: no retry.
  return options.listenPort ? startWxgateOnce(bin, options) : retryOnPortClash(() => startWxgateOnce(bin, options));
}

async function startWxgateOnce(bin, { upstreamUrl, fakeUrl, extra = '', listenPort, dir, show = false }) {
  const port = listenPort || (await freePort());
  const adminPort = await freePort();
  const configDir = dir || fs.mkdtempSync(path.join(os.tmpdir(), 'wxgate-e2e-'));
  const configPath = path.join(configDir, `wxgate-${port}.toml`);
  fs.writeFileSync(
    configPath,
    [
      '[server]',
      `listen = "127.0.0.1:${port}"`,
      `admin_listen = "127.0.0.1:${adminPort}"`,
      'workers = 1',
      'shutdown_grace = "1s"',
      '',
      '[upstream]',
      `url = "${upstreamUrl}"`,
      '',
      '[weixin]',
      `appid = "${APPID}"`,
      `api_base = "${fakeUrl}"`,
      '',
      extra,
      '',
    ].join('\n'),
  );
  const child = startProcess(
    bin,
    ['--config', configPath],
    { WXGATE_WEIXIN__SECRET: SECRET, RUST_LOG: show ? process.env.RUST_LOG || 'info' : 'warn' },
    show,
  );
  await readyOrStop(`http://127.0.0.1:${adminPort}/readyz`, child);
  return { url: `http://127.0.0.1:${port}`, adminUrl: `http://127.0.0.1:${adminPort}`, child, configPath, configDir };
}

/** 'x-wx-session' -> 'X-Wx-Session', as some platforms spell response headers. */
function titleCase(name) {
  return name.replace(/(^|-)([a-z])/g, (m, dash, c) => dash + c.toUpperCase());
}

/**
 * A `wx` whose request goes over the network with fetch, the way WeChat's
 * wx.request behaves (JSON bodies by default, a query string for GET data,
 * `dataType: 'json'` parsing), and whose login hands out fake-WeChat codes
 * `<user>.<n>` for the current `user`. Response header names come back
 * Title-Cased, so the client's case-insensitive lookup is exercised.
 */
function createFetchWx(user) {
  const state = {
    user,
    sessionValid: false,
    loginCalls: 0,
    requests: [],
    storage: new Map(),
  };
  let n = 0;

  function request(o) {
    const method = (o.method || 'GET').toUpperCase();
    const headers = Object.assign({}, o.header || {});
    const hasHeader = (name) => Object.keys(headers).some((k) => k.toLowerCase() === name);
    let url = o.url;
    let body;
    if (o.data !== undefined && o.data !== null) {
      if (method === 'GET' || method === 'HEAD') {
        const q = typeof o.data === 'string' ? o.data : new URLSearchParams(o.data).toString();
        if (q) url += (url.includes('?') ? '&' : '?') + q;
      } else if (typeof o.data === 'string' || o.data instanceof ArrayBuffer) {
        body = o.data;
      } else if (/x-www-form-urlencoded/i.test(headers['content-type'] || headers['Content-Type'] || '')) {
        body = new URLSearchParams(o.data).toString();
      } else {
        body = JSON.stringify(o.data);
      }
    }
    if (!hasHeader('content-type')) headers['content-type'] = 'application/json';
    state.requests.push({ url, method, header: Object.assign({}, headers), data: body });
    fetch(url, { method, headers, body, redirect: 'manual' })
      .then(async (res) => {
        const text = await res.text();
        let data = text;
        if ((o.dataType || 'json') === 'json') {
          try {
            data = JSON.parse(text);
          } catch (e) {
            data = text;
          }
        }
        const header = {};
        res.headers.forEach((value, name) => {
          header[titleCase(name)] = value;
        });
        o.success && o.success({ statusCode: res.status, data, header, cookies: [], errMsg: 'request:ok' });
      })
      .catch((err) => {
        o.fail && o.fail({ errMsg: `request:fail ${err.message}` });
      });
    return { abort() {} };
  }

  const wx = {
    request,
    login(o) {
      state.loginCalls += 1;
      const code = `${state.user}.${++n}`;
      setImmediate(() => {
        state.sessionValid = true;
        o.success && o.success({ code, errMsg: 'login:ok' });
      });
    },
    checkSession(o) {
      const valid = state.sessionValid;
      setImmediate(() => (valid ? o.success && o.success({ errMsg: 'checkSession:ok' }) : o.fail && o.fail({ errMsg: 'checkSession:fail' })));
    },
    getStorageSync: (k) => (state.storage.has(k) ? state.storage.get(k) : ''),
    setStorageSync: (k, v) => state.storage.set(k, v),
    removeStorageSync: (k) => state.storage.delete(k),
  };
  return { wx, state };
}

module.exports = {
  APPID,
  SECRET,
  wxgateBin,
  freePort,
  startBackend,
  startProcess,
  stopProcess,
  startFake,
  startWxgate,
  createFetchWx,
};
