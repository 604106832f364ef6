'use strict';
// End to end: the client against a real wxgate ($WXGATE_BIN), the fake WeChat
// (`wxgate fake-weixin`, same binary) and an echo backend, on loopback ports.
// Two wxgates run: one with login.mode = "forward" (the default), one with
// "respond". Without WXGATE_BIN every test here fails with a message saying so.

const test = require('node:test');
const { describe, it, before, after, beforeEach } = test;
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const { createClient } = require('..');
const stack = require('../test-support/stack');

const KEY = 'wxgate.session';

// Its own test, so a missing binary shows as a failure in the counts, not
// only as the cancelled tests of the suite below.
test('WXGATE_BIN names an executable wxgate binary', () => {
  stack.wxgateBin();
});

describe('client against a real wxgate', { timeout: 120000 }, () => {
  let bin;
  let backend;
  let fake;
  let forward; // wxgate, login.mode = "forward"
  let respond; // wxgate, login.mode = "respond"
  let dir; // the wxgate configuration files

  before(async () => {
    bin = stack.wxgateBin(); // throws, failing every test, when WXGATE_BIN is unset or wrong
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wxgate-e2e-'));
    backend = await stack.startBackend();
    fake = await stack.startFake(bin);
    forward = await stack.startWxgate(bin, { upstreamUrl: backend.url, fakeUrl: fake.url, dir });
    respond = await stack.startWxgate(bin, {
      upstreamUrl: backend.url,
      fakeUrl: fake.url,
      extra: '[login]\nmode = "respond"',
      dir,
    });
  });

  after(async () => {
    await Promise.all([forward, respond, fake].filter(Boolean).map((p) => stack.stopProcess(p.child)));
    if (backend) await backend.close();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  beforeEach(() => {
    if (backend) backend.received.length = 0;
  });

  /** A client for `user` on the given wxgate, with a fetch-backed wx. */
  function clientFor(gate, user) {
    const { wx, state } = stack.createFetchWx(user);
    return { client: createClient({ baseUrl: gate.url, wx }), state };
  }

  /** What the backend answers (it echoes) to a GET sent with `token` as the session header, bypassing the client. */
  async function echoWith(gate, token) {
    const res = await fetch(`${gate.url}/api/echo`, { headers: { 'x-wx-session': token } });
    assert.equal(res.status, 200);
    return res.json();
  }

  function phoneCodeEvent(digits, nonce) {
    return { type: 'getphonenumber', detail: { errMsg: 'getPhoneNumber:ok', code: `phone:${digits}.${nonce}` } };
  }

  async function mintEvent(user, phone) {
    const { encryptedData, iv } = await fake.mint(user, phone);
    return { type: 'getphonenumber', detail: { errMsg: 'getPhoneNumber:ok', encryptedData, iv } };
  }

  it('forward mode: login, then the backend sees x-wx-openid on an authenticated request', async () => {
    const { client, state } = clientFor(forward, 'alice');
    const token = await client.login();
    assert.match(token, /^[A-Za-z0-9_-]{16,}$/);
    assert.equal(state.storage.get(KEY), token);

    const [login] = backend.requestsTo('/api/login');
    assert.equal(login.method, 'POST');
    assert.equal(login.headers['x-wx-openid'], 'oFAKEalice');
    assert.equal(login.headers['x-wx-appid'], stack.APPID);
    const sent = state.requests.find((r) => r.url.endsWith('/api/login'));
    assert.deepEqual(JSON.parse(sent.data), { code: 'alice.1' });

    const res = await client.request({ url: '/api/orders', data: { page: 2 } });
    assert.equal(res.statusCode, 200);
    assert.equal(res.data.path, '/api/orders');
    assert.equal(res.data.query, '?page=2');
    assert.equal(res.data.headers['x-wx-openid'], 'oFAKEalice');
    assert.equal(res.data.headers['x-wx-session'], undefined, 'the token never reaches the backend');

    // The WeChat session is valid and a token is stored: no new login.
    assert.equal(await client.login(), token);
    assert.equal(state.loginCalls, 1);
  });

  it('respond mode: wxgate answers the login itself, the token comes from the body', async () => {
    const { client, state } = clientFor(respond, 'bob');
    const token = await client.login();
    assert.ok(token);
    assert.equal(state.storage.get(KEY), token);
    assert.equal(backend.requestsTo('/api/login').length, 0, 'the backend is not called for a respond-mode login');
    const res = await client.request({ url: '/api/profile', method: 'POST', data: { name: 'Bob' } });
    assert.equal(res.data.headers['x-wx-openid'], 'oFAKEbob');
    assert.deepEqual(JSON.parse(res.data.body), { name: 'Bob' });
  });

  it('phone number, legacy flow: encryptedData + iv decrypted, the backend sees x-wx-phone-number', async () => {
    const { client } = clientFor(forward, 'carol');
    await client.login();
    // Use data with a '+' in it: the character a URL would turn into a space.
    let event = await mintEvent('carol', '13800138000');
    for (let i = 0; i < 50 && !event.detail.encryptedData.includes('+'); i++) {
      event = await mintEvent('carol', '13800138000');
    }
    assert.ok(event.detail.encryptedData.includes('+'), 'fifty mints without a "+"');

    const r = await client.getPhoneNumber(event);
    assert.equal(r.ok, true, JSON.stringify(r));
    const [phone] = backend.requestsTo('/api/phone');
    assert.equal(phone.headers['x-wx-phone-number'], '13800138000');
    assert.equal(phone.headers['x-wx-pure-phone-number'], '13800138000');
    assert.equal(phone.headers['x-wx-country-code'], '86');
    assert.equal(phone.headers['x-wx-openid'], 'oFAKEcarol');
    assert.equal(JSON.parse(phone.body).encryptedData, event.detail.encryptedData, 'the data arrived intact');
    assert.equal(r.response.data.headers['x-wx-phone-number'], '13800138000');
  });

  it('phone number, code flow: the phone code is exchanged once', async () => {
    const { client } = clientFor(forward, 'dan');
    await client.login();
    const before = await fake.stats();
    const r = await client.getPhoneNumber(phoneCodeEvent('13900139000', 'd1'));
    assert.equal(r.ok, true, JSON.stringify(r));
    const [phone] = backend.requestsTo('/api/phone');
    assert.equal(phone.headers['x-wx-phone-number'], '13900139000');
    assert.equal(phone.headers['x-wx-openid'], 'oFAKEdan');
    assert.equal((await fake.stats()).getuserphonenumber - before.getuserphonenumber, 1);
  });

  it("the seed document's race: data made, then a re-login, then the data is sent: it still decrypts", async () => {
    const { client, state } = clientFor(forward, 'dave');
    const first = await client.login();
    const event = await mintEvent('dave', '13700137000'); // under the key of the first login
    const second = await client.login({ force: true }); // WeChat and wxgate move to a new key
    assert.notEqual(second, first);
    assert.equal(state.loginCalls, 2);
    // The re-login carried the session it replaces, so wxgate kept that session's key.
    const logins = state.requests.filter((r) => r.url.endsWith('/api/login'));
    assert.equal(logins.length, 2);
    assert.equal(logins[1].header['x-wx-session'], first);

    const r = await client.getPhoneNumber(event);
    assert.equal(r.ok, true, JSON.stringify(r));
    const [phone] = backend.requestsTo('/api/phone');
    assert.equal(phone.headers['x-wx-phone-number'], '13700137000');
    assert.equal(state.loginCalls, 2, 'no wx.login around the phone request');
  });

  it('concurrent login() calls exchange one code with WeChat', async () => {
    const { client, state } = clientFor(forward, 'erin');
    const before = await fake.stats();
    const tokens = await Promise.all([1, 2, 3, 4, 5].map(() => client.login()));
    assert.equal(new Set(tokens).size, 1);
    assert.equal(state.loginCalls, 1);
    assert.equal(backend.requestsTo('/api/login').length, 1);
    assert.equal((await fake.stats()).jscode2session - before.jscode2session, 1);
  });

  it('an unknown token: the 401 session_required brings a transparent re-login and one retry', async () => {
    const { client, state } = clientFor(forward, 'frank');
    state.storage.set(KEY, 'AAAAAAAAAAAAAAAAAAAAAA'); // well-formed, but no session of wxgate's
    state.sessionValid = true; // WeChat's side looks fine, so only the 401 can tell
    const res = await client.request({ url: '/api/me' });
    assert.equal(res.statusCode, 200);
    assert.equal(res.data.headers['x-wx-openid'], 'oFAKEfrank');
    assert.equal(state.loginCalls, 1);
    const mes = backend.requestsTo('/api/me');
    assert.equal(mes.length, 2);
    assert.equal(mes[0].headers['x-wx-openid'], undefined, 'the unknown token identified nobody');
    assert.notEqual(state.storage.get(KEY), 'AAAAAAAAAAAAAAAAAAAAAA');
  });

  it('phone with a session wxgate does not know: re-login after the refusal, the unspent code is sent again', async () => {
    const { client, state } = clientFor(forward, 'grace');
    state.storage.set(KEY, 'BBBBBBBBBBBBBBBBBBBBBB');
    state.sessionValid = true;
    const before = await fake.stats();
    const r = await client.getPhoneNumber(phoneCodeEvent('13600136000', 'g1'));
    assert.equal(r.ok, true, JSON.stringify(r));
    assert.equal(state.loginCalls, 1);
    const [phone] = backend.requestsTo('/api/phone');
    assert.equal(phone.headers['x-wx-phone-number'], '13600136000');
    assert.equal(phone.headers['x-wx-openid'], 'oFAKEgrace');
    assert.equal((await fake.stats()).getuserphonenumber - before.getuserphonenumber, 1, 'one billed exchange');
  });

  it('decrypt_failed: data under a key wxgate never saw gives a "retry" result, and the next tap works', async () => {
    const { client, state } = clientFor(forward, 'heidi');
    await client.login();
    // wx.login inside the phone callback, its code never sent: WeChat's key moved, wxgate's did not.
    await fake.rotateKeyBehindWxgate('heidi', 'inside-the-callback');
    const lost = await mintEvent('heidi', '13500135000');
    const r = await client.getPhoneNumber(lost);
    assert.equal(r.ok, false);
    assert.equal(r.reason, 'retry');
    assert.equal(r.error.status, 401);
    assert.equal(r.error.code, 'decrypt_failed');
    assert.equal(backend.requestsTo('/api/phone').length, 0, 'a refused phone request never reaches the backend');
    assert.equal(state.loginCalls, 2, 'the session was re-established after the failure');

    const again = await client.getPhoneNumber(await mintEvent('heidi', '13500135000'));
    assert.equal(again.ok, true, JSON.stringify(again));
    assert.equal(backend.requestsTo('/api/phone')[0].headers['x-wx-phone-number'], '13500135000');
  });

  it('a phone code used twice gives a "retry" result, not an exception', async () => {
    const { client } = clientFor(forward, 'ivan');
    await client.login();
    const event = phoneCodeEvent('13400134000', 'i1');
    assert.equal((await client.getPhoneNumber(event)).ok, true);
    const r = await client.getPhoneNumber(event);
    assert.equal(r.ok, false);
    assert.equal(r.reason, 'retry');
    assert.equal(r.error.code, 'invalid_code');
  });

  it('logout, forward mode: forwarded to the backend, the session revoked, the token forgotten', async () => {
    const { client, state } = clientFor(forward, 'judy');
    const token = await client.login();
    assert.equal((await echoWith(forward, token)).headers['x-wx-openid'], 'oFAKEjudy');

    const r = await client.logout();
    assert.equal(state.storage.has(KEY), false);
    assert.equal(r.ok, true, JSON.stringify(r.response && r.response.data));
    const forwarded = backend.requestsTo('/api/logout');
    assert.equal(forwarded.length, 1, 'forward mode forwards the logout');
    assert.equal(forwarded[0].method, 'POST');
    assert.equal(forwarded[0].headers['x-wx-openid'], 'oFAKEjudy', 'with the identity of the session it ends');
    assert.equal(forwarded[0].headers['x-wx-session'], undefined);

    const after = await echoWith(forward, token);
    assert.equal(after.headers['x-wx-openid'], undefined, 'the old token must not identify the user any more');
  });

  it('logout, respond mode: wxgate answers 204 itself and revokes the session', async () => {
    const { client, state } = clientFor(respond, 'mallory');
    const token = await client.login();
    assert.equal((await echoWith(respond, token)).headers['x-wx-openid'], 'oFAKEmallory');

    const r = await client.logout();
    assert.equal(state.storage.has(KEY), false);
    assert.ok(r.response, 'wxgate answered');
    assert.equal(r.response.statusCode, 204);
    assert.equal(r.ok, true);
    assert.equal(backend.requestsTo('/api/logout').length, 0, 'respond mode does not call the backend');

    const after = await echoWith(respond, token);
    assert.equal(after.headers['x-wx-openid'], undefined, 'the old token must not identify the user any more');
  });

  it('after a logout, request() works anonymously and login() starts a new session', async () => {
    const { client, state } = clientFor(forward, 'oscar');
    const first = await client.login();
    await client.logout();
    const anon = await client.request({ url: '/api/echo' });
    assert.equal(anon.data.headers['x-wx-openid'], undefined);
    const second = await client.login();
    assert.notEqual(second, first);
    assert.equal(state.loginCalls, 2);
    const logins = state.requests.filter((r) => r.url.endsWith('/api/login'));
    assert.equal(logins[1].header['x-wx-session'], undefined, 'a logged-out token is not sent on the next login');
    assert.equal((await client.request({ url: '/api/echo' })).data.headers['x-wx-openid'], 'oFAKEoscar');
  });
});
