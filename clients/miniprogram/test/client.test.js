'use strict';
// Unit tests of the client against a mocked `wx` (no network, no wxgate).

const test = require('node:test');
const { describe, it } = test;
const assert = require('node:assert/strict');

const { createClient, WxgateError, VERSION } = require('..');
const { createMockWx, deferred, jsonBody, sentHeader, flush } = require('../test-support/mock-wx');

const BASE = 'https://gate.example.com';
const KEY = 'wxgate.session';

function ok(data, header) {
  return { statusCode: 200, data: data === undefined ? {} : data, header: header || {} };
}

function wxgateError(status, error, message) {
  return {
    statusCode: status,
    data: { error, message: message || error },
    header: { 'Content-Type': 'application/json' },
  };
}

/** A login answer in forward mode: the backend's body, the token in a header. */
function loginForward(token) {
  return ok({ user: 'from-backend' }, { 'x-wx-session': token });
}

/**
 * A handler that logs in (token `T<n>` for the n-th code, in a header) and
 * answers every other path with `routes[path](req)` or a 200 echo.
 */
function gateway(routes) {
  let n = 0;
  return (req) => {
    if (req.path === '/api/login' && !(routes && routes['/api/login'])) {
      n += 1;
      return loginForward('T' + n);
    }
    const route = routes && routes[req.path];
    if (route) return route(req);
    return ok({ path: req.path, session: sentHeader(req, 'x-wx-session') || null });
  };
}

function setup(handler, options) {
  const mock = createMockWx(handler);
  const client = createClient(Object.assign({ baseUrl: BASE, wx: mock.wx }, options || {}));
  return Object.assign({ client }, mock);
}

function requestsTo(state, path) {
  return state.requests.filter((r) => r.path === path);
}

describe('createClient', () => {
  it('needs a baseUrl that is an http(s) URL', () => {
    const { wx } = createMockWx();
    assert.throws(() => createClient({ wx }), TypeError);
    assert.throws(() => createClient({ baseUrl: 'gate.example.com', wx }), /baseUrl/);
    assert.throws(() => createClient(), TypeError);
  });

  it('needs a wx API when there is no global wx', () => {
    assert.equal(typeof globalThis.wx, 'undefined');
    assert.throws(() => createClient({ baseUrl: BASE }), /no wx API/);
  });

  it('uses the global wx when none is passed', async () => {
    const { wx, state } = createMockWx(gateway());
    globalThis.wx = wx;
    try {
      const client = createClient({ baseUrl: BASE });
      assert.equal(await client.login(), 'T1');
      assert.equal(state.loginCalls, 1);
    } finally {
      delete globalThis.wx;
    }
  });

  it('refuses an empty path option', () => {
    const { wx } = createMockWx();
    assert.throws(() => createClient({ baseUrl: BASE, wx, loginPath: '' }), /loginPath/);
  });

  it('exports a version', () => {
    assert.match(VERSION, /^\d+\.\d+\.\d+$/);
  });
});

describe('WxgateError', () => {
  it('is an Error with status, code and message', () => {
    const e = new WxgateError(401, 'session_required', 'log in again');
    assert.ok(e instanceof Error);
    assert.ok(e instanceof WxgateError);
    assert.equal(e.name, 'WxgateError');
    assert.equal(e.status, 401);
    assert.equal(e.code, 'session_required');
    assert.equal(e.message, 'log in again');
    assert.match(e.stack, /WxgateError|log in again/);
  });
});

describe('login', { timeout: 10000 }, () => {
  it('without a stored token: wx.login, POST {"code"} as JSON, the token from the header is stored', async () => {
    const { client, state } = setup(gateway());
    const token = await client.login();
    assert.equal(token, 'T1');
    assert.equal(state.loginCalls, 1);
    const [req] = state.requests;
    assert.equal(req.url, BASE + '/api/login');
    assert.equal(req.method, 'POST');
    assert.equal(sentHeader(req, 'content-type'), 'application/json');
    assert.deepEqual(jsonBody(req), { code: 'code-1' });
    assert.equal(typeof req.data, 'string', 'the body is JSON text, never form- or URL-encoded');
    assert.equal(req.query, '', 'the code is not in the URL');
    assert.equal(sentHeader(req, 'x-wx-session'), undefined, 'no session header without a token');
    assert.equal(state.storage.get(KEY), 'T1');
    assert.equal(client.getToken(), 'T1');
  });

  it('a stored token with a valid WeChat session is used as is: no wx.login, no request', async () => {
    const { client, state } = setup(gateway());
    state.storage.set(KEY, 'stored-token');
    state.sessionValid = true;
    assert.equal(await client.login(), 'stored-token');
    assert.equal(state.checkSessionCalls, 1);
    assert.equal(state.loginCalls, 0);
    assert.equal(state.requests.length, 0);
  });

  it('a stored token whose WeChat session expired: wx.login, and the login carries the old token', async () => {
    const { client, state } = setup(gateway());
    state.storage.set(KEY, 'old-token');
    state.sessionValid = false;
    assert.equal(await client.login(), 'T1');
    assert.equal(state.checkSessionCalls, 1);
    assert.equal(state.loginCalls, 1);
    assert.deepEqual(state.log, ['checkSession', 'login', 'request /api/login']);
    // wxgate keeps the old session's key as the user's previous key.
    assert.equal(sentHeader(state.requests[0], 'x-wx-session'), 'old-token');
    assert.equal(state.storage.get(KEY), 'T1');
  });

  it('a failed wx.login rejects with wx_login_failed and stores nothing', async () => {
    const { client, state } = setup(gateway());
    state.loginResults.push({ fail: 'login:fail network error' });
    await assert.rejects(client.login(), (e) => {
      assert.ok(e instanceof WxgateError);
      assert.equal(e.code, 'wx_login_failed');
      assert.equal(e.status, 0);
      assert.match(e.message, /login:fail network error/);
      return true;
    });
    assert.equal(state.requests.length, 0);
    assert.equal(state.storage.has(KEY), false);
  });

  it('a wx.login success without a code rejects too', async () => {
    const { client, state } = setup(gateway());
    state.loginResults.push({ code: '' });
    await assert.rejects(client.login(), { code: 'wx_login_failed' });
    assert.equal(state.requests.length, 0);
  });

  it('a wxgate error answer rejects with its status and code, and stores nothing', async () => {
    const { client, state } = setup(gateway({ '/api/login': () => wxgateError(401, 'invalid_code', 'code been used') }));
    await assert.rejects(client.login(), (e) => {
      assert.ok(e instanceof WxgateError);
      assert.equal(e.status, 401);
      assert.equal(e.code, 'invalid_code');
      assert.equal(e.message, 'code been used');
      assert.equal(e.response.statusCode, 401);
      return true;
    });
    assert.equal(state.storage.has(KEY), false);
  });

  it('a failed forced login leaves the stored token alone', async () => {
    const { client, state } = setup(gateway({ '/api/login': () => wxgateError(503, 'weixin_busy') }));
    state.storage.set(KEY, 'kept');
    await assert.rejects(client.login({ force: true }), { code: 'weixin_busy', status: 503 });
    assert.equal(state.storage.get(KEY), 'kept');
  });

  it('respond mode: the token comes from the JSON body', async () => {
    const { client, state } = setup(
      gateway({
        '/api/login': () => ok({ session: 'BodyToken_0123456789ab', openid: 'oX', expires_in: 86400 }),
      }),
    );
    assert.equal(await client.login(), 'BodyToken_0123456789ab');
    assert.equal(state.storage.get(KEY), 'BodyToken_0123456789ab');
  });

  it('respond mode with a JSON text body (dataType other than json) works too', async () => {
    const { client } = setup(
      gateway({ '/api/login': () => ok('{"session":"TextToken","openid":"oX","expires_in":5}') }),
    );
    assert.equal(await client.login(), 'TextToken');
  });

  it('forward mode: the header name is matched case-insensitively', async () => {
    for (const name of ['X-WX-SESSION', 'X-Wx-Session', 'x-wx-session']) {
      const { client, state } = setup(gateway({ '/api/login': () => ok({}, { [name]: 'HeaderToken' }) }));
      assert.equal(await client.login(), 'HeaderToken', name);
      assert.equal(state.storage.get(KEY), 'HeaderToken');
    }
  });

  it('the header wins over a "session" field the backend put in its own body', async () => {
    const { client } = setup(
      gateway({ '/api/login': () => ok({ session: 'backend-own-value' }, { 'x-wx-session': 'GateToken' }) }),
    );
    assert.equal(await client.login(), 'GateToken');
  });

  it('a 2xx login answer without a token rejects with no_session and stores nothing', async () => {
    const { client, state } = setup(gateway({ '/api/login': () => ok({ hello: 1 }) }));
    await assert.rejects(client.login(), { code: 'no_session', status: 200 });
    assert.equal(state.storage.has(KEY), false);
  });

  it('a non-2xx login answer that is not a wxgate error rejects with login_failed', async () => {
    const { client, state } = setup(
      gateway({ '/api/login': () => ({ statusCode: 500, data: '<html>oops</html>', header: { 'x-wx-session': 'T' } }) }),
    );
    await assert.rejects(client.login(), { code: 'login_failed', status: 500 });
    assert.equal(state.storage.has(KEY), false);
  });

  it('concurrent callers share one login: one wx.login, one request, one token', async () => {
    const answer = deferred();
    const { client, state } = setup(gateway({ '/api/login': () => answer.promise }));
    const calls = [client.login(), client.login(), client.login()];
    await flush();
    answer.resolve(loginForward('Shared'));
    assert.deepEqual(await Promise.all(calls), ['Shared', 'Shared', 'Shared']);
    assert.equal(state.loginCalls, 1);
    assert.equal(requestsTo(state, '/api/login').length, 1);
  });

  it('a login after the shared one finished is a new one', async () => {
    const { client, state } = setup(gateway());
    await Promise.all([client.login(), client.login()]);
    state.sessionValid = false;
    assert.equal(await client.login(), 'T2');
    assert.equal(state.loginCalls, 2);
  });

  it('a lost login answer is retried once with the same code (wxgate answers it from its code cache)', async () => {
    let attempts = 0;
    const { client, state } = setup(
      gateway({
        '/api/login': () => {
          attempts += 1;
          return attempts === 1 ? { fail: 'request:fail timeout' } : loginForward('Cached');
        },
      }),
    );
    assert.equal(await client.login(), 'Cached');
    assert.equal(state.loginCalls, 1, 'no second wx.login');
    const logins = requestsTo(state, '/api/login');
    assert.equal(logins.length, 2);
    assert.deepEqual(jsonBody(logins[1]), jsonBody(logins[0]));
  });

  it('two lost login answers reject with network, after exactly two attempts', async () => {
    const { client, state } = setup(gateway({ '/api/login': () => ({ fail: 'request:fail timeout' }) }));
    await assert.rejects(client.login(), { code: 'network', status: 0 });
    assert.equal(requestsTo(state, '/api/login').length, 2);
    assert.equal(state.storage.has(KEY), false);
  });

  it('a forced login asked while a plain one runs waits for it, then logs in anew', async () => {
    const first = deferred();
    let n = 0;
    const { client, state } = setup(
      gateway({
        '/api/login': () => {
          n += 1;
          return n === 1 ? first.promise : loginForward('Forced');
        },
      }),
    );
    const plain = client.login();
    const plain2 = client.login();
    const forced = client.login({ force: true });
    await flush();
    assert.equal(state.loginCalls, 1);
    first.resolve(loginForward('Plain'));
    assert.equal(await plain, 'Plain');
    assert.equal(await plain2, 'Plain');
    assert.equal(await forced, 'Forced');
    assert.equal(state.loginCalls, 2);
  });

  it('force: true calls wx.login even when the WeChat session is valid', async () => {
    const { client, state } = setup(gateway());
    state.storage.set(KEY, 'old');
    assert.equal(await client.login({ force: true }), 'T1');
    assert.equal(state.checkSessionCalls, 0);
    assert.equal(state.loginCalls, 1);
  });
});

describe('storage', { timeout: 10000 }, () => {
  it('uses the storageKey and sessionHeader options', async () => {
    const { client, state } = setup(
      gateway({ '/api/login': () => ok({}, { 'X-My-Token': 'Custom' }) }),
      { storageKey: 'my.key', sessionHeader: 'x-my-token' },
    );
    assert.equal(await client.login(), 'Custom');
    assert.equal(state.storage.get('my.key'), 'Custom');
    await client.request({ url: '/api/x' });
    assert.equal(sentHeader(state.requests[1], 'x-my-token'), 'Custom');
    assert.equal(sentHeader(state.requests[1], 'x-wx-session'), undefined);
  });

  it('a storage that throws keeps the token in memory for this run', async () => {
    const { client, state } = setup(gateway());
    state.storageThrows = true;
    assert.equal(await client.login(), 'T1');
    await client.request({ url: '/api/x' });
    assert.equal(sentHeader(state.requests[1], 'x-wx-session'), 'T1');
    await client.logout();
    assert.equal(client.getToken(), '');
  });

  it('a storage whose writes fail keeps the new token in memory, not the stale stored one', async () => {
    const { client, state, wx } = setup(gateway());
    state.storage.set(KEY, 'Stale');
    state.sessionValid = false;
    wx.setStorageSync = () => {
      throw new Error('setStorageSync:fail exceed storage max size');
    };
    assert.equal(await client.login(), 'T1');
    assert.equal(client.getToken(), 'T1');
    await client.request({ url: '/api/x' });
    assert.equal(sentHeader(state.requests[1], 'x-wx-session'), 'T1');
  });

  it('a stored value that is not a token is ignored', async () => {
    const { client, state } = setup(gateway());
    state.storage.set(KEY, { not: 'a token' });
    assert.equal(client.getToken(), '');
    assert.equal(await client.login(), 'T1');
  });
});

describe('request', { timeout: 10000 }, () => {
  it('joins the URL, adds the session header and resolves { statusCode, data, header }', async () => {
    const { client, state } = setup(
      gateway({ '/api/orders': () => ({ statusCode: 200, data: { orders: [] }, header: { 'X-Trace': '1' } }) }),
    );
    state.storage.set(KEY, 'Tok');
    const res = await client.request({ url: '/api/orders?page=2', method: 'POST', data: { a: 1 }, header: { 'x-extra': 'y' } });
    assert.deepEqual(res, { statusCode: 200, data: { orders: [] }, header: { 'X-Trace': '1' }, cookies: [] });
    const [req] = state.requests;
    assert.equal(req.url, BASE + '/api/orders?page=2');
    assert.equal(req.method, 'POST');
    assert.deepEqual(req.data, { a: 1 });
    assert.equal(sentHeader(req, 'x-wx-session'), 'Tok');
    assert.equal(sentHeader(req, 'x-extra'), 'y');
  });

  it('a trailing slash on baseUrl and a path without one give one slash', async () => {
    const { wx, state } = createMockWx(gateway());
    const client = createClient({ baseUrl: BASE + '/', wx });
    await client.request({ url: 'api/x' });
    assert.equal(state.requests[0].url, BASE + '/api/x');
  });

  it('without a token no session header is sent, and a caller-set one in any spelling is replaced', async () => {
    const { client, state } = setup(gateway());
    await client.request({ url: '/api/x', header: { 'X-WX-SESSION': 'forged' } });
    assert.equal(sentHeader(state.requests[0], 'x-wx-session'), undefined);
    state.storage.set(KEY, 'Real');
    await client.request({ url: '/api/x', header: { 'X-WX-SESSION': 'forged' } });
    assert.deepEqual(state.requests[1].header, { 'x-wx-session': 'Real' });
  });

  it('an absolute URL elsewhere gets no session header', async () => {
    const { client, state } = setup(() => ok());
    state.storage.set(KEY, 'Secret');
    await client.request({ url: 'https://other.example.com/x' });
    await client.request({ url: 'https://gate.example.com.evil.test/x' });
    await client.request({ url: BASE + '/api/y' });
    assert.equal(sentHeader(state.requests[0], 'x-wx-session'), undefined);
    assert.equal(sentHeader(state.requests[1], 'x-wx-session'), undefined);
    assert.equal(sentHeader(state.requests[2], 'x-wx-session'), 'Secret');
  });

  it('non-wxgate answers resolve, whatever their status', async () => {
    const { client } = setup(
      gateway({
        '/html': () => ({ statusCode: 404, data: '<h1>Not Found</h1>', header: {} }),
        '/own-json': () => ({ statusCode: 422, data: { error: 'bad_sku' }, header: {} }),
        '/array': () => ({ statusCode: 500, data: [1, 2], header: {} }),
        '/ok-shaped': () => ({ statusCode: 200, data: { error: 'x', message: 'y' }, header: {} }),
      }),
    );
    assert.equal((await client.request({ url: '/html' })).statusCode, 404);
    assert.deepEqual((await client.request({ url: '/own-json' })).data, { error: 'bad_sku' });
    assert.equal((await client.request({ url: '/array' })).statusCode, 500);
    assert.equal((await client.request({ url: '/ok-shaped' })).statusCode, 200);
  });

  it('a wxgate error rejects with a WxgateError carrying status, code and message', async () => {
    const { client } = setup(
      gateway({
        '/api/x': () => wxgateError(502, 'upstream_unavailable', 'the backend cannot be reached'),
        '/api/text': () => ({
          statusCode: 413,
          data: '{"error":"body_too_large","message":"over 65536 bytes"}',
          header: {},
        }),
      }),
    );
    await assert.rejects(client.request({ url: '/api/x' }), (e) => {
      assert.ok(e instanceof WxgateError);
      assert.equal(e.status, 502);
      assert.equal(e.code, 'upstream_unavailable');
      assert.equal(e.message, 'the backend cannot be reached');
      return true;
    });
    await assert.rejects(client.request({ url: '/api/text' }), { status: 413, code: 'body_too_large' });
  });

  it('a transport failure rejects with code network and status 0', async () => {
    const { client } = setup(() => ({ fail: 'request:fail net::ERR_INTERNET_DISCONNECTED' }));
    await assert.rejects(client.request({ url: '/api/x' }), (e) => {
      assert.ok(e instanceof WxgateError);
      assert.equal(e.code, 'network');
      assert.equal(e.status, 0);
      assert.match(e.message, /ERR_INTERNET_DISCONNECTED/);
      return true;
    });
  });

  it('401 session_required: one fresh wx.login, then the request is retried once with the new token', async () => {
    const { client, state } = setup(
      gateway({
        '/api/me': (req) =>
          sentHeader(req, 'x-wx-session') === 'T1'
            ? ok({ me: 'alice' })
            : wxgateError(401, 'session_required', 'log in again'),
      }),
    );
    state.storage.set(KEY, 'Dead');
    state.sessionValid = true; // WeChat's side is fine: only wxgate lost the session
    const res = await client.request({ url: '/api/me' });
    assert.deepEqual(res.data, { me: 'alice' });
    assert.equal(state.loginCalls, 1, 'a fresh wx.login although checkSession would pass');
    assert.deepEqual(
      state.requests.map((r) => [r.path, sentHeader(r, 'x-wx-session')]),
      [
        ['/api/me', 'Dead'],
        ['/api/login', 'Dead'],
        ['/api/me', 'T1'],
      ],
    );
    assert.equal(state.storage.get(KEY), 'T1');
  });

  it('401 session_required again after the retry rejects: no loop', async () => {
    const { client, state } = setup(gateway({ '/api/me': () => wxgateError(401, 'session_required', 'no') }));
    state.storage.set(KEY, 'Dead');
    await assert.rejects(client.request({ url: '/api/me' }), { status: 401, code: 'session_required' });
    assert.equal(requestsTo(state, '/api/me').length, 2);
    assert.equal(state.loginCalls, 1);
  });

  it('401 session_required with no token at all logs in and retries', async () => {
    const { client, state } = setup(
      gateway({
        '/api/me': (req) =>
          sentHeader(req, 'x-wx-session') ? ok({ me: 1 }) : wxgateError(401, 'session_required', 'no'),
      }),
    );
    assert.deepEqual((await client.request({ url: '/api/me' })).data, { me: 1 });
    assert.equal(state.loginCalls, 1);
  });

  it('a failing re-login rejects the request with the login error', async () => {
    const { client, state } = setup(gateway({ '/api/me': () => wxgateError(401, 'session_required', 'no') }));
    state.loginResults.push({ fail: 'login:fail' });
    await assert.rejects(client.request({ url: '/api/me' }), { code: 'wx_login_failed' });
    assert.equal(requestsTo(state, '/api/me').length, 1);
  });

  it('other 401s (invalid_code, decrypt_failed) are not retried', async () => {
    const { client, state } = setup(gateway({ '/api/x': () => wxgateError(401, 'invalid_code', 'x') }));
    await assert.rejects(client.request({ url: '/api/x' }), { code: 'invalid_code' });
    assert.equal(state.loginCalls, 0);
    assert.equal(state.requests.length, 1);
  });

  it('concurrent requests refused with the same dead token share one re-login', async () => {
    const { client, state } = setup(
      gateway({
        '/api/a': (req) =>
          sentHeader(req, 'x-wx-session') === 'T1' ? ok('a') : wxgateError(401, 'session_required', 'no'),
      }),
    );
    state.storage.set(KEY, 'Dead');
    const results = await Promise.all([1, 2, 3].map(() => client.request({ url: '/api/a' })));
    assert.deepEqual(results.map((r) => r.data), ['a', 'a', 'a']);
    assert.equal(state.loginCalls, 1);
    assert.equal(requestsTo(state, '/api/login').length, 1);
    assert.equal(requestsTo(state, '/api/a').length, 6);
  });

  it('a 401 session_required from another site does not trigger a login', async () => {
    const { client, state } = setup(() => wxgateError(401, 'session_required', 'theirs'));
    await assert.rejects(client.request({ url: 'https://other.example.com/x' }), { code: 'session_required' });
    assert.equal(state.loginCalls, 0);
  });

  it('a request made while a login runs waits for it and carries the new token', async () => {
    const answer = deferred();
    const { client, state } = setup(gateway({ '/api/login': () => answer.promise }));
    const login = client.login();
    const req = client.request({ url: '/api/x' });
    await flush();
    assert.equal(requestsTo(state, '/api/x').length, 0);
    answer.resolve(loginForward('New'));
    await login;
    const res = await req;
    assert.equal(res.data.session, 'New');
  });

  it('needs options.url', async () => {
    const { client } = setup(gateway());
    await assert.rejects(client.request({}), TypeError);
  });
});

describe('getPhoneNumber', { timeout: 10000 }, () => {
  const okEvent = (detail) => ({ type: 'getphonenumber', detail: Object.assign({ errMsg: 'getPhoneNumber:ok' }, detail) });

  it('user deny is a result, not an exception, and sends nothing (both spellings)', async () => {
    for (const errMsg of ['getPhoneNumber:fail user deny', 'getPhoneNumber:fail:user deny']) {
      const { client, state } = setup(gateway());
      const r = await client.getPhoneNumber({ detail: { errMsg } });
      assert.deepEqual(r, { ok: false, reason: 'deny', errMsg });
      assert.equal(state.requests.length, 0);
      assert.equal(state.loginCalls, 0);
    }
  });

  it('no quota (errno 1400001) is a result and sends nothing', async () => {
    const { client, state } = setup(gateway());
    const r = await client.getPhoneNumber({ detail: { errMsg: 'getPhoneNumber:fail no quota', errno: 1400001 } });
    assert.deepEqual(r, { ok: false, reason: 'no_quota', errMsg: 'getPhoneNumber:fail no quota', errno: 1400001 });
    assert.equal(state.requests.length, 0);
  });

  it('other failures are a "fail" result with the errMsg', async () => {
    const { client, state } = setup(gateway());
    const r = await client.getPhoneNumber({ detail: { errMsg: 'getPhoneNumber:fail auth deny', errno: 102 } });
    assert.deepEqual(r, { ok: false, reason: 'fail', errMsg: 'getPhoneNumber:fail auth deny', errno: 102 });
    assert.deepEqual(await client.getPhoneNumber({}), { ok: false, reason: 'fail', errMsg: '' });
    assert.equal(state.requests.length, 0);
  });

  it('an ok event without any data is a "fail" result', async () => {
    const { client, state } = setup(gateway());
    const r = await client.getPhoneNumber(okEvent({}));
    assert.equal(r.ok, false);
    assert.equal(r.reason, 'fail');
    assert.equal(state.requests.length, 0);
  });

  it('code flow: POST {"code"} as JSON with the session header; ok with the response', async () => {
    const { client, state } = setup(gateway({ '/api/phone': () => ok({ saved: true }) }));
    state.storage.set(KEY, 'Tok');
    const r = await client.getPhoneNumber(okEvent({ code: 'phone-code-1' }));
    assert.equal(r.ok, true);
    assert.deepEqual(r.response.data, { saved: true });
    const [req] = state.requests;
    assert.equal(req.url, BASE + '/api/phone');
    assert.equal(req.method, 'POST');
    assert.equal(req.query, '');
    assert.equal(sentHeader(req, 'content-type'), 'application/json');
    assert.equal(sentHeader(req, 'x-wx-session'), 'Tok');
    assert.deepEqual(jsonBody(req), { code: 'phone-code-1' });
  });

  it('legacy flow: encryptedData and iv travel intact in a JSON body (+ / = kept)', async () => {
    const { client, state } = setup(gateway({ '/api/phone': () => ok() }));
    state.storage.set(KEY, 'Tok');
    const encryptedData = 'ab+cd/ef+gh==';
    const iv = 'r7BXXKkLb8qrSNn05n0qiA==';
    const r = await client.getPhoneNumber(okEvent({ encryptedData, iv, cloudID: 'cloud' }));
    assert.equal(r.ok, true);
    const req = state.requests[0];
    assert.equal(req.data, JSON.stringify({ encryptedData, iv }));
    assert.ok(!req.url.includes('encryptedData'));
  });

  it('both code and legacy data are sent together; extra fields are merged in', async () => {
    const { client, state } = setup(gateway({ '/api/phone': () => ok() }));
    state.storage.set(KEY, 'Tok');
    await client.getPhoneNumber(okEvent({ code: 'c', encryptedData: 'e', iv: 'i' }), { purpose: 'signup', code: 'overridden' });
    assert.deepEqual(jsonBody(state.requests[0]), { purpose: 'signup', code: 'c', encryptedData: 'e', iv: 'i' });
  });

  it('getRealtimePhoneNumber events work the same', async () => {
    const { client, state } = setup(gateway({ '/api/phone': () => ok() }));
    state.storage.set(KEY, 'Tok');
    const r = await client.getPhoneNumber({ detail: { errMsg: 'getRealtimePhoneNumber:ok', code: 'rt' } });
    assert.equal(r.ok, true);
    assert.deepEqual(jsonBody(state.requests[0]), { code: 'rt' });
  });

  it('never calls wx.login or wx.checkSession before or while sending the data', async () => {
    const answer = deferred();
    const { client, state } = setup(gateway({ '/api/phone': () => answer.promise }));
    state.storage.set(KEY, 'Tok');
    state.sessionValid = false; // even with WeChat's login state expired
    const p = client.getPhoneNumber(okEvent({ encryptedData: 'e', iv: 'i' }));
    await flush();
    assert.equal(state.loginCalls, 0);
    assert.equal(state.checkSessionCalls, 0);
    answer.resolve(ok());
    assert.equal((await p).ok, true);
    assert.equal(state.loginCalls, 0);
    assert.deepEqual(state.log, ['request /api/phone']);
  });

  it('a double tap while the first request is in flight sends nothing and says busy', async () => {
    const answer = deferred();
    const { client, state } = setup(gateway({ '/api/phone': () => answer.promise }));
    state.storage.set(KEY, 'Tok');
    const first = client.getPhoneNumber(okEvent({ code: 'c1' }));
    const second = await client.getPhoneNumber(okEvent({ code: 'c2' }));
    assert.deepEqual(second, { ok: false, reason: 'busy', errMsg: 'getPhoneNumber:ok' });
    answer.resolve(ok());
    assert.equal((await first).ok, true);
    assert.equal(requestsTo(state, '/api/phone').length, 1);
    // Once the first is done, a new tap is sent.
    state.handler = gateway({ '/api/phone': () => ok() });
    assert.equal((await client.getPhoneNumber(okEvent({ code: 'c3' }))).ok, true);
    assert.equal(requestsTo(state, '/api/phone').length, 2);
  });

  it('the double-tap guard is released after a rejection too', async () => {
    const { client, state } = setup(gateway({ '/api/phone': () => ({ fail: 'request:fail' }) }));
    state.storage.set(KEY, 'Tok');
    await assert.rejects(client.getPhoneNumber(okEvent({ code: 'c1' })), { code: 'network' });
    await assert.rejects(client.getPhoneNumber(okEvent({ code: 'c2' })), { code: 'network' });
    assert.equal(requestsTo(state, '/api/phone').length, 2);
  });

  it('401 decrypt_failed: a fresh login after the answer, and a "retry" result (data not resent)', async () => {
    const { client, state } = setup(gateway({ '/api/phone': () => wxgateError(401, 'decrypt_failed', 'log in again') }));
    state.storage.set(KEY, 'Tok');
    const r = await client.getPhoneNumber(okEvent({ encryptedData: 'e', iv: 'i' }));
    assert.equal(r.ok, false);
    assert.equal(r.reason, 'retry');
    assert.ok(r.error instanceof WxgateError);
    assert.equal(r.error.code, 'decrypt_failed');
    assert.deepEqual(state.log, ['request /api/phone', 'login', 'request /api/login']);
    assert.equal(sentHeader(state.requests[1], 'x-wx-session'), 'Tok');
    assert.equal(state.storage.get(KEY), 'T1');
  });

  it('401 decrypt_failed whose re-login fails rejects with the login error', async () => {
    const { client, state } = setup(gateway({ '/api/phone': () => wxgateError(401, 'decrypt_failed', 'x') }));
    state.storage.set(KEY, 'Tok');
    state.loginResults.push({ fail: 'login:fail' });
    await assert.rejects(client.getPhoneNumber(okEvent({ encryptedData: 'e', iv: 'i' })), { code: 'wx_login_failed' });
  });

  it('401 session_required: log in after the refusal, then the same data is sent once more', async () => {
    const { client, state } = setup(
      gateway({
        '/api/phone': (req) =>
          sentHeader(req, 'x-wx-session') === 'T1' ? ok({ phone: 'yes' }) : wxgateError(401, 'session_required', 'x'),
      }),
    );
    state.storage.set(KEY, 'Dead');
    const r = await client.getPhoneNumber(okEvent({ code: 'pc' }));
    assert.equal(r.ok, true);
    assert.deepEqual(state.log, ['request /api/phone', 'login', 'request /api/login', 'request /api/phone']);
    const phones = requestsTo(state, '/api/phone');
    assert.equal(phones[1].data, phones[0].data);
  });

  it('401 session_required twice rejects: no loop', async () => {
    const { client, state } = setup(gateway({ '/api/phone': () => wxgateError(401, 'session_required', 'x') }));
    state.storage.set(KEY, 'Dead');
    await assert.rejects(client.getPhoneNumber(okEvent({ code: 'pc' })), { code: 'session_required', status: 401 });
    assert.equal(requestsTo(state, '/api/phone').length, 2);
    assert.equal(state.loginCalls, 1);
  });

  it('401 invalid_code (a used phone code) asks for another tap without logging in', async () => {
    const { client, state } = setup(gateway({ '/api/phone': () => wxgateError(401, 'invalid_code', 'code used') }));
    state.storage.set(KEY, 'Tok');
    const r = await client.getPhoneNumber(okEvent({ code: 'pc' }));
    assert.equal(r.reason, 'retry');
    assert.equal(r.error.code, 'invalid_code');
    assert.equal(state.loginCalls, 0);
  });

  it('other wxgate errors reject; a non-wxgate backend error is a "backend" result', async () => {
    const { client, state } = setup(
      gateway({ '/api/phone': () => wxgateError(403, 'watermark_mismatch', 'another app') }),
    );
    state.storage.set(KEY, 'Tok');
    await assert.rejects(client.getPhoneNumber(okEvent({ code: 'pc' })), { code: 'watermark_mismatch', status: 403 });
    state.handler = () => ({ statusCode: 409, data: { taken: true }, header: {} });
    const r = await client.getPhoneNumber(okEvent({ code: 'pc2' }));
    assert.equal(r.ok, false);
    assert.equal(r.reason, 'backend');
    assert.equal(r.response.statusCode, 409);
  });

  it('with no token stored, a login already under way is waited for (never a new wx.login)', async () => {
    const answer = deferred();
    const { client, state } = setup(gateway({ '/api/login': () => answer.promise, '/api/phone': () => ok() }));
    const login = client.login();
    const phone = client.getPhoneNumber(okEvent({ code: 'pc' }));
    await flush();
    assert.equal(requestsTo(state, '/api/phone').length, 0);
    answer.resolve(loginForward('Fresh'));
    await login;
    assert.equal((await phone).ok, true);
    assert.equal(sentHeader(requestsTo(state, '/api/phone')[0], 'x-wx-session'), 'Fresh');
    assert.equal(state.loginCalls, 1);
  });

  it('with a token stored, the data is sent at once even while a login runs', async () => {
    const answer = deferred();
    const { client, state } = setup(gateway({ '/api/login': () => answer.promise, '/api/phone': () => ok() }));
    state.storage.set(KEY, 'Current');
    state.sessionValid = false;
    const login = client.login();
    const phone = await client.getPhoneNumber(okEvent({ encryptedData: 'e', iv: 'i' }));
    assert.equal(phone.ok, true);
    assert.equal(sentHeader(requestsTo(state, '/api/phone')[0], 'x-wx-session'), 'Current');
    answer.resolve(loginForward('Next'));
    await login;
  });
});

describe('logout', { timeout: 10000 }, () => {
  it('POSTs the logout route with the session header and clears the token', async () => {
    const { client, state } = setup(gateway({ '/api/logout': () => ({ statusCode: 204, data: '', header: {} }) }));
    state.storage.set(KEY, 'Tok');
    const r = await client.logout();
    assert.equal(r.ok, true);
    assert.equal(r.response.statusCode, 204);
    const [req] = state.requests;
    assert.equal(req.url, BASE + '/api/logout');
    assert.equal(req.method, 'POST');
    assert.equal(sentHeader(req, 'x-wx-session'), 'Tok');
    assert.equal(state.storage.has(KEY), false);
    assert.equal(client.getToken(), '');
  });

  it('clears the token even when offline', async () => {
    const { client, state } = setup(() => ({ fail: 'request:fail net::ERR_INTERNET_DISCONNECTED' }));
    state.storage.set(KEY, 'Tok');
    const r = await client.logout();
    assert.equal(r.ok, false);
    assert.equal(r.error.code, 'network');
    assert.equal(state.storage.has(KEY), false);
  });

  it('clears the token whatever the answer', async () => {
    const { client, state } = setup(() => wxgateError(502, 'upstream_unavailable', 'down'));
    state.storage.set(KEY, 'Tok');
    const r = await client.logout();
    assert.equal(r.ok, false);
    assert.equal(r.error.code, 'upstream_unavailable');
    assert.equal(r.response.statusCode, 502);
    assert.equal(state.storage.has(KEY), false);
  });

  it('without a token there is nothing to revoke: no request', async () => {
    const { client, state } = setup(gateway());
    assert.deepEqual(await client.logout(), { ok: false });
    assert.equal(state.requests.length, 0);
  });

  it('the next login after a logout calls wx.login and carries no session header', async () => {
    const { client, state } = setup(gateway({ '/api/logout': () => ({ statusCode: 204, data: '', header: {} }) }));
    state.storage.set(KEY, 'Tok');
    await client.logout();
    state.sessionValid = true;
    assert.equal(await client.login(), 'T1');
    assert.equal(state.loginCalls, 1);
    assert.equal(sentHeader(requestsTo(state, '/api/login')[0], 'x-wx-session'), undefined);
  });

  it('a logout during a login waits for it and revokes the session it opened', async () => {
    const answer = deferred();
    const { client, state } = setup(
      gateway({ '/api/login': () => answer.promise, '/api/logout': () => ({ statusCode: 204, data: '', header: {} }) }),
    );
    const login = client.login();
    const logout = client.logout();
    await flush();
    answer.resolve(loginForward('Opened'));
    assert.equal(await login, 'Opened');
    assert.equal((await logout).ok, true);
    assert.equal(sentHeader(requestsTo(state, '/api/logout')[0], 'x-wx-session'), 'Opened');
    assert.equal(state.storage.has(KEY), false);
  });
});
