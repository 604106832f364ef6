'use strict';
// A scriptable stand-in for the mini program `wx` API, for unit tests.
// Kept outside test/ so that `node --test test/` does not run it as a test file.
//
// Every callback fires asynchronously, as in WeChat. Requests are answered by
// `handler(req)`, which returns (or resolves to) `{ statusCode, data, header }`,
// or `{ fail: 'request:fail ...' }` for a transport failure.

function createMockWx(handler) {
  const state = {
    handler: handler || (() => ({ statusCode: 404, data: 'no handler', header: {} })),
    /** What wx.checkSession answers. */
    sessionValid: true,
    /** Queue of wx.login outcomes: `{ code }` or `{ fail: 'login:fail ...' }`; empty: a fresh code. */
    loginResults: [],
    loginCalls: 0,
    checkSessionCalls: 0,
    /** Every wx.request, as `{ url, path, method, header, data, dataType }`. */
    requests: [],
    storage: new Map(),
    /** Make every storage call throw (quota exceeded, private mode). */
    storageThrows: false,
    /** Ordered log of 'login', 'checkSession' and 'request <path>' events. */
    log: [],
    /**
     * A runaway loop in the client must end the test, not hang it: past this
     * many requests (or wx.login calls) the mock answers with failures.
     */
    maxCalls: 100,
  };
  let codeCounter = 0;

  const later = (fn) => setImmediate(fn);

  const wx = {
    request(o) {
      const url = new URL(o.url);
      const req = {
        url: o.url,
        path: url.pathname,
        query: url.search,
        method: (o.method || 'GET').toUpperCase(),
        header: Object.assign({}, o.header || {}),
        data: o.data,
        dataType: o.dataType,
      };
      state.requests.push(req);
      state.log.push('request ' + req.path);
      Promise.resolve()
        .then(() =>
          state.requests.length > state.maxCalls ? { fail: 'request:fail mock: too many requests' } : state.handler(req),
        )
        .then(
          (res) => {
            if (res && res.fail) {
              o.fail && o.fail({ errMsg: res.fail });
            } else {
              o.success &&
                o.success({
                  statusCode: res.statusCode,
                  data: res.data,
                  header: res.header || {},
                  cookies: [],
                  errMsg: 'request:ok',
                });
            }
            o.complete && o.complete({});
          },
          (err) => {
            o.fail && o.fail({ errMsg: 'request:fail ' + err.message });
            o.complete && o.complete({});
          },
        );
      return { abort() {} };
    },
    login(o) {
      state.loginCalls += 1;
      state.log.push('login');
      let next = state.loginResults.length ? state.loginResults.shift() : { code: 'code-' + ++codeCounter };
      if (state.loginCalls > state.maxCalls) next = { fail: 'login:fail mock: too many calls' };
      later(() => {
        if (next.fail) {
          o.fail && o.fail({ errMsg: next.fail });
        } else {
          // A wx.login gives WeChat a fresh login state.
          state.sessionValid = true;
          o.success && o.success({ code: next.code, errMsg: 'login:ok' });
        }
      });
    },
    checkSession(o) {
      state.checkSessionCalls += 1;
      state.log.push('checkSession');
      const valid = state.sessionValid;
      later(() => {
        if (valid) {
          o.success && o.success({ errMsg: 'checkSession:ok' });
        } else {
          o.fail && o.fail({ errMsg: 'checkSession:fail session expired' });
        }
      });
    },
    getStorageSync(key) {
      if (state.storageThrows) throw new Error('getStorageSync:fail');
      return state.storage.has(key) ? state.storage.get(key) : '';
    },
    setStorageSync(key, value) {
      if (state.storageThrows) throw new Error('setStorageSync:fail exceed storage max size');
      state.storage.set(key, value);
    },
    removeStorageSync(key) {
      if (state.storageThrows) throw new Error('removeStorageSync:fail');
      state.storage.delete(key);
    },
  };
  return { wx, state };
}

/** A promise with its resolve function, to hold an answer until a test releases it. */
function deferred() {
  let resolve;
  let reject;
  const promise = new Promise((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** A request's JSON body (the client sends JSON text). */
function jsonBody(req) {
  return typeof req.data === 'string' ? JSON.parse(req.data) : req.data;
}

/** A header's value in a request the client sent, matched case-insensitively. */
function sentHeader(req, name) {
  for (const k of Object.keys(req.header)) {
    if (k.toLowerCase() === name.toLowerCase()) return req.header[k];
  }
  return undefined;
}

/** Lets every pending callback and promise run. */
function flush() {
  return new Promise((resolve) => setImmediate(() => setImmediate(resolve)));
}

module.exports = { createMockWx, deferred, jsonBody, sentHeader, flush };
