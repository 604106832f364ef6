'use strict';
// The example's app and page logic, run in node with a mocked `wx` and tiny
// App / Page / getApp shims (miniprogram-simulate needs a DOM and tests custom
// components, not Page() pages: see README.md).

const { describe, it, beforeEach, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');

const { createMockWx, deferred, jsonBody, sentHeader } = require('../../../clients/miniprogram/test-support/mock-wx');

const root = path.join(__dirname, '..', 'miniprogram');
const KEY = 'wxgate.session';

/** Loads app.js and the page fresh, as WeChat would, against `handler`. */
function boot(handler) {
  const mock = createMockWx(handler);
  let appOptions = null;
  let pageOptions = null;
  globalThis.wx = mock.wx;
  globalThis.App = (o) => {
    appOptions = o;
  };
  globalThis.getApp = () => appOptions;
  globalThis.Page = (o) => {
    pageOptions = o;
  };
  for (const f of ['app.js', 'config.js', 'lib/wxgate.js', 'pages/index/index.js']) {
    delete require.cache[require.resolve(path.join(root, f))];
  }
  require(path.join(root, 'app.js'));
  appOptions.onLaunch();
  require(path.join(root, 'pages/index/index.js'));
  // A page instance: the options object, its own data, and setData.
  const page = Object.assign({}, pageOptions);
  page.data = JSON.parse(JSON.stringify(pageOptions.data));
  page.setData = function (patch, cb) {
    Object.assign(this.data, patch);
    if (cb) cb();
  };
  return Object.assign({ page, app: appOptions }, mock);
}

/** Like wxgate in forward mode in front of the echo backend of dev/serve.js. */
function gate(overrides) {
  let n = 0;
  return (req) => {
    if (overrides && overrides[req.path]) return overrides[req.path](req);
    const session = sentHeader(req, 'x-wx-session');
    if (req.path === '/api/login') {
      n += 1;
      return { statusCode: 200, data: {}, header: { 'X-Wx-Session': 'T' + n } };
    }
    const headers = session ? { 'x-wx-openid': 'oFAKEdemo' } : {};
    if (req.path === '/api/phone') {
      if (!session) return { statusCode: 401, data: { error: 'session_required', message: 'log in' }, header: {} };
      headers['x-wx-phone-number'] = '13800138000';
    }
    return { statusCode: 200, data: { path: req.path, headers }, header: {} };
  };
}

const okPhone = { detail: { errMsg: 'getPhoneNumber:ok', encryptedData: 'ab+c/d==', iv: 'r7BXXKkLb8qrSNn05n0qiA==' } };

describe('example mini program', { timeout: 10000 }, () => {
  beforeEach(() => {
    for (const g of ['wx', 'App', 'Page', 'getApp']) delete globalThis[g];
  });
  afterEach(() => {
    for (const g of ['wx', 'App', 'Page', 'getApp']) delete globalThis[g];
  });

  it('logs in at launch; the page shares that login and shows it', async () => {
    const { page, state } = boot(gate());
    assert.equal(page.data.status, 'Not logged in');
    await page.onLoad();
    assert.equal(page.data.status, 'Logged in');
    assert.equal(page.data.loggedIn, true);
    assert.equal(state.loginCalls, 1, 'app.js and the page share one login');
    assert.equal(state.requests.filter((r) => r.path === '/api/login').length, 1);
    assert.equal(state.requests[0].url, 'http://127.0.0.1:8080/api/login');
    assert.equal(state.storage.get(KEY), 'T1');
  });

  it('shows a failed login', async () => {
    const { page, state } = boot(gate());
    state.loginResults.push({ fail: 'login:fail' }); // consumed by app.js's login, shared with the page
    await page.onLoad();
    assert.equal(page.data.loggedIn, false);
    assert.match(page.data.status, /^Login failed \(wx_login_failed: login:fail\)$/);
  });

  it('"Call the backend" sends the session and shows what the backend saw', async () => {
    const { page, state } = boot(gate());
    await page.onLoad();
    await page.onCallBackend();
    assert.equal(page.data.backendResult, 'HTTP 200: the backend saw openid oFAKEdemo');
    const call = state.requests.find((r) => r.path === '/api/orders');
    assert.equal(sentHeader(call, 'x-wx-session'), 'T1');
  });

  it('"Call the backend" shows a wxgate error', async () => {
    const { page } = boot(
      gate({
        '/api/orders': () => ({
          statusCode: 502,
          data: { error: 'upstream_unavailable', message: 'the backend cannot be reached' },
          header: {},
        }),
      }),
    );
    await page.onLoad();
    await page.onCallBackend();
    assert.equal(page.data.backendResult, 'Error (upstream_unavailable: the backend cannot be reached)');
  });

  it('the phone button: the data goes to /api/phone and the number is shown, with no wx.login', async () => {
    const { page, state } = boot(gate());
    await page.onLoad();
    const logins = state.loginCalls;
    await page.onPhone(okPhone);
    assert.equal(page.data.phoneResult, 'Phone number verified: 13800138000');
    assert.equal(state.loginCalls, logins);
    const phone = state.requests.find((r) => r.path === '/api/phone');
    assert.deepEqual(jsonBody(phone), { encryptedData: 'ab+c/d==', iv: 'r7BXXKkLb8qrSNn05n0qiA==' });
  });

  it('the phone button: user deny, no quota and other failures are explained, nothing is sent', async () => {
    const { page, state } = boot(gate());
    await page.onLoad();
    const sent = state.requests.length;
    await page.onPhone({ detail: { errMsg: 'getPhoneNumber:fail user deny' } });
    assert.equal(page.data.phoneResult, 'You chose not to share your phone number.');
    await page.onPhone({ detail: { errMsg: 'getPhoneNumber:fail no quota', errno: 1400001 } });
    assert.equal(page.data.phoneResult, 'Phone number verification is not available right now.');
    await page.onPhone({ detail: { errMsg: 'getPhoneNumber:fail system error' } });
    assert.equal(page.data.phoneResult, 'Could not get the phone number (getPhoneNumber:fail system error).');
    assert.equal(state.requests.length, sent);
  });

  it('the phone button: decrypt_failed asks for another tap (after a fresh login)', async () => {
    const { page, state } = boot(
      gate({
        '/api/phone': () => ({ statusCode: 401, data: { error: 'decrypt_failed', message: 'x' }, header: {} }),
      }),
    );
    await page.onLoad();
    await page.onPhone(okPhone);
    assert.equal(page.data.phoneResult, 'That did not work. Please tap the button again.');
    assert.equal(state.loginCalls, 2);
  });

  it('the phone button: a double tap leaves the first result on screen', async () => {
    const answer = deferred();
    const { page, state } = boot(gate({ '/api/phone': () => answer.promise }));
    await page.onLoad();
    const first = page.onPhone(okPhone);
    await page.onPhone(okPhone); // busy: ignored
    assert.equal(page.data.phoneResult, '');
    answer.resolve({ statusCode: 200, data: { headers: { 'x-wx-phone-number': '13900139000' } }, header: {} });
    await first;
    assert.equal(page.data.phoneResult, 'Phone number verified: 13900139000');
    assert.equal(state.requests.filter((r) => r.path === '/api/phone').length, 1);
  });

  it('log out clears the session and the screen; log in again works', async () => {
    const { page, state } = boot(gate({ '/api/logout': () => ({ statusCode: 204, data: '', header: {} }) }));
    await page.onLoad();
    await page.onCallBackend();
    await page.onLogout();
    assert.equal(page.data.status, 'Logged out');
    assert.equal(page.data.loggedIn, false);
    assert.equal(page.data.backendResult, '');
    assert.equal(state.storage.has(KEY), false);
    await page.login();
    assert.equal(page.data.status, 'Logged in');
    assert.equal(state.storage.get(KEY), 'T2');
  });
});

describe('example files', () => {
  it('miniprogram/lib/wxgate.js is the library (clients/miniprogram/index.js)', () => {
    const copy = fs.readFileSync(path.join(root, 'lib', 'wxgate.js'), 'utf8');
    const lib = fs.readFileSync(path.join(__dirname, '..', '..', '..', 'clients', 'miniprogram', 'index.js'), 'utf8');
    assert.ok(copy === lib, 'miniprogram/lib/wxgate.js is out of date: cp clients/miniprogram/index.js examples/miniprogram/miniprogram/lib/wxgate.js');
  });

  it('every page in app.json exists, and every event handler in the WXML is a page method', () => {
    const appJson = JSON.parse(fs.readFileSync(path.join(root, 'app.json'), 'utf8'));
    const { page } = (() => {
      const mock = createMockWx(gate());
      globalThis.wx = mock.wx;
      let appOptions;
      let pageOptions;
      globalThis.App = (o) => (appOptions = o);
      globalThis.getApp = () => appOptions;
      globalThis.Page = (o) => (pageOptions = o);
      for (const f of ['app.js', 'pages/index/index.js']) delete require.cache[require.resolve(path.join(root, f))];
      require(path.join(root, 'app.js'));
      require(path.join(root, 'pages/index/index.js'));
      for (const g of ['wx', 'App', 'Page', 'getApp']) delete globalThis[g];
      return { page: pageOptions };
    })();
    for (const p of appJson.pages) {
      for (const ext of ['js', 'json', 'wxml', 'wxss']) {
        assert.ok(fs.existsSync(path.join(root, `${p}.${ext}`)), `${p}.${ext}`);
      }
    }
    const wxml = fs.readFileSync(path.join(root, 'pages/index/index.wxml'), 'utf8');
    assert.match(wxml, /<button[^>]*open-type="getPhoneNumber"[^>]*bindgetphonenumber="onPhone"/);
    const handlers = [...wxml.matchAll(/\bbind[a-z]+="([A-Za-z_]+)"/g)].map((m) => m[1]);
    assert.ok(handlers.length >= 4);
    for (const h of handlers) assert.equal(typeof page[h], 'function', h);
  });

  it('project.config.json: the mini program root, no domain check, a placeholder appid', () => {
    const project = JSON.parse(fs.readFileSync(path.join(__dirname, '..', 'project.config.json'), 'utf8'));
    assert.equal(project.miniprogramRoot, 'miniprogram/');
    assert.equal(project.setting.urlCheck, false);
    assert.match(project.appid, /^wx[0-9a-f]{16}$/);
    assert.equal(require(path.join(root, 'config.js')).baseUrl, 'http://127.0.0.1:8080');
  });
});
