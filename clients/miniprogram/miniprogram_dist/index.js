/*!
 * wxgate-miniprogram: the mini program side of wxgate (login, session token,
 * authenticated requests, phone number, logout).
 *
 * One dependency-free CommonJS file written in ES5, so it runs as is in
 * WeChat's JavaScript engine (no ES modules, no optional chaining, no Node
 * APIs) and can be copied into a mini program without "build npm".
 * It needs a global Promise (every base library has one) and the `wx` API:
 * the global one, or one passed as `createClient({ wx: ... })`.
 *
 * License: MIT OR Apache-2.0
 */
'use strict';

var VERSION = '0.1.0';

var DEFAULTS = {
  loginPath: '/api/login',
  phonePath: '/api/phone',
  logoutPath: '/api/logout',
  sessionHeader: 'x-wx-session',
  storageKey: 'wxgate.session'
};

/** The errno WeChat reports when the paid phone-number quota is used up. */
var PHONE_QUOTA_ERRNO = 1400001;

// ---------------------------------------------------------------------------
// WxgateError
// ---------------------------------------------------------------------------

/**
 * A typed error. `status` is the HTTP status (0 when no answer arrived),
 * `code` is wxgate's `error` field (`session_required`, `invalid_code`, ...)
 * or one of the library's own codes (`network`, `wx_login_failed`,
 * `login_failed`, `no_session`), `message` a human-readable text, and
 * `response` the answer `{ statusCode, data, header }` when there was one.
 */
function WxgateError(status, code, message, response) {
  if (!(this instanceof WxgateError)) {
    return new WxgateError(status, code, message, response);
  }
  this.name = 'WxgateError';
  this.status = typeof status === 'number' ? status : 0;
  this.code = String(code);
  this.message = message ? String(message) : this.code;
  if (response) {
    this.response = response;
  }
  if (typeof Error.captureStackTrace === 'function') {
    Error.captureStackTrace(this, WxgateError);
  } else {
    this.stack = new Error(this.message).stack;
  }
}
WxgateError.prototype = Object.create(Error.prototype);
WxgateError.prototype.constructor = WxgateError;
WxgateError.prototype.name = 'WxgateError';

// ---------------------------------------------------------------------------
// Small helpers (ES5 only)
// ---------------------------------------------------------------------------

function noop() {}

function hasOwn(obj, key) {
  return Object.prototype.hasOwnProperty.call(obj, key);
}

/** A promise that settles when `p` settles, whatever the outcome. */
function settled(p) {
  return p ? p.then(noop, noop) : Promise.resolve();
}

function isAbsoluteUrl(url) {
  return /^[a-z][a-z0-9+.\-]*:\/\//i.test(url);
}

/** `base` + `path`, with exactly one slash between them. */
function joinUrl(base, path) {
  if (isAbsoluteUrl(path)) {
    return path;
  }
  if (!path) {
    return base;
  }
  var c = path.charAt(0);
  if (c === '/' || c === '?' || c === '#') {
    return base + path;
  }
  return base + '/' + path;
}

/** Whether `url` points at `base` (so it may carry the session token). */
function isUnder(url, base) {
  if (url.indexOf(base) !== 0) {
    return false;
  }
  var next = url.charAt(base.length);
  return next === '' || next === '/' || next === '?' || next === '#';
}

/** A header's value, the name matched case-insensitively (platforms differ). */
function headerValue(header, name) {
  if (!header || typeof header !== 'object') {
    return '';
  }
  var wanted = name.toLowerCase();
  for (var key in header) {
    if (hasOwn(header, key) && key.toLowerCase() === wanted) {
      var v = header[key];
      if (Array.isArray(v)) {
        v = v[0];
      }
      return typeof v === 'string' ? v.trim() : '';
    }
  }
  return '';
}

/**
 * A copy of `header` without any spelling of `name`, then `name: value`
 * when a value is given. The library owns the session header.
 */
function withHeader(header, name, value) {
  var out = {};
  var lower = name.toLowerCase();
  if (header && typeof header === 'object') {
    for (var key in header) {
      if (hasOwn(header, key) && key.toLowerCase() !== lower) {
        out[key] = header[key];
      }
    }
  }
  if (value) {
    out[name] = value;
  }
  return out;
}

/** The body as a plain object if it is one or is a JSON text of one. */
function jsonObject(data) {
  if (data && typeof data === 'object' && !Array.isArray(data)) {
    return data;
  }
  if (typeof data === 'string' && /^\s*\{/.test(data)) {
    try {
      var v = JSON.parse(data);
      return v && typeof v === 'object' && !Array.isArray(v) ? v : null;
    } catch (e) {
      return null;
    }
  }
  return null;
}

function is2xx(status) {
  return status >= 200 && status < 300;
}

/**
 * The WxgateError an answer carries: status >= 400 and a JSON body
 * `{"error": "<code>", "message": "<text>"}` (wxgate's error shape, which a
 * backend may use too, e.g. for `session_required`). Null otherwise.
 */
function errorOf(res) {
  if (!res || !(res.statusCode >= 400)) {
    return null;
  }
  var body = jsonObject(res.data);
  if (!body || typeof body.error !== 'string' || typeof body.message !== 'string') {
    return null;
  }
  return new WxgateError(res.statusCode, body.error, body.message, res);
}

function isTokenText(t) {
  // A header value: visible ASCII, no spaces, no CR/LF.
  return typeof t === 'string' && /^[\x21-\x7e]{1,512}$/.test(t);
}

// ---------------------------------------------------------------------------
// createClient
// ---------------------------------------------------------------------------

/**
 * Creates a client bound to one wxgate.
 *
 * @param {object} options
 * @param {string} options.baseUrl   e.g. 'https://api.example.com'
 * @param {string} [options.loginPath='/api/login']
 * @param {string} [options.phonePath='/api/phone']
 * @param {string} [options.logoutPath='/api/logout']
 * @param {string} [options.sessionHeader='x-wx-session']
 * @param {string} [options.storageKey='wxgate.session']
 * @param {object} [options.wx]  the wx API (default: the global `wx`)
 */
function createClient(options) {
  if (!options || typeof options !== 'object') {
    throw new TypeError('wxgate: createClient needs an options object with baseUrl');
  }
  if (typeof options.baseUrl !== 'string' || !/^https?:\/\/[^\/]/i.test(options.baseUrl)) {
    throw new TypeError('wxgate: baseUrl must be an http(s) URL, e.g. "https://api.example.com"');
  }
  var api = options.wx || (typeof wx !== 'undefined' ? wx : null); // eslint-disable-line no-undef
  if (!api || typeof api.request !== 'function' || typeof api.login !== 'function') {
    throw new TypeError('wxgate: no wx API: run inside a mini program or pass createClient({ wx })');
  }

  function opt(name) {
    var v = options[name];
    if (v === undefined || v === null) {
      return DEFAULTS[name];
    }
    if (typeof v !== 'string' || !v) {
      throw new TypeError('wxgate: ' + name + ' must be a non-empty string');
    }
    return v;
  }

  var baseUrl = options.baseUrl.replace(/\/+$/, '');
  var loginUrl = joinUrl(baseUrl, opt('loginPath'));
  var phoneUrl = joinUrl(baseUrl, opt('phonePath'));
  var logoutUrl = joinUrl(baseUrl, opt('logoutPath'));
  var sessionHeader = opt('sessionHeader');
  var storageKey = opt('storageKey');

  // The token lives in storage (it survives restarts). When the storage API
  // throws (quota exceeded), `memoryToken` stands in until a write succeeds.
  var memoryToken = '';
  var storageFailed = false;
  // The one login in flight: { promise, force }.
  var loginInFlight = null;
  // The one phone request in flight (double-tap guard).
  var phoneInFlight = null;

  // -- storage --------------------------------------------------------------

  function readToken() {
    if (storageFailed) {
      return memoryToken;
    }
    try {
      var v = api.getStorageSync(storageKey);
      return isTokenText(v) ? v : '';
    } catch (e) {
      return memoryToken;
    }
  }

  function writeToken(token) {
    memoryToken = token;
    try {
      api.setStorageSync(storageKey, token);
      storageFailed = false;
    } catch (e) {
      // Kept in memory for this run; the next launch logs in again.
      storageFailed = true;
    }
  }

  function clearToken() {
    memoryToken = '';
    try {
      api.removeStorageSync(storageKey);
      storageFailed = false;
    } catch (e) {
      try {
        api.setStorageSync(storageKey, '');
        storageFailed = false;
      } catch (e2) {
        // The stale value may stay in storage: read the empty memory instead.
        storageFailed = true;
      }
    }
  }

  // -- wx wrappers ----------------------------------------------------------

  /** wx.request as a promise; rejects only on transport failure. */
  function send(requestOptions) {
    return new Promise(function (resolve, reject) {
      var o = {};
      for (var key in requestOptions) {
        if (hasOwn(requestOptions, key) && key !== 'success' && key !== 'fail' && key !== 'complete') {
          o[key] = requestOptions[key];
        }
      }
      o.success = function (res) {
        var out = {
          statusCode: res.statusCode,
          data: res.data,
          header: res.header || res.headers || {}
        };
        if (res.cookies !== undefined) {
          out.cookies = res.cookies;
        }
        resolve(out);
      };
      o.fail = function (err) {
        reject(new WxgateError(0, 'network', (err && err.errMsg) || 'request:fail'));
      };
      try {
        api.request(o);
      } catch (e) {
        reject(new WxgateError(0, 'network', (e && e.message) || String(e)));
      }
    });
  }

  function checkSession() {
    return new Promise(function (resolve) {
      if (typeof api.checkSession !== 'function') {
        resolve(false);
        return;
      }
      try {
        api.checkSession({
          success: function () {
            resolve(true);
          },
          fail: function () {
            resolve(false);
          }
        });
      } catch (e) {
        resolve(false);
      }
    });
  }

  function wxLogin() {
    return new Promise(function (resolve, reject) {
      function failed(err, fallback) {
        reject(new WxgateError(0, 'wx_login_failed', (err && err.errMsg) || fallback));
      }
      try {
        api.login({
          success: function (res) {
            if (res && typeof res.code === 'string' && res.code) {
              resolve(res.code);
            } else {
              failed(res, 'wx.login gave no code');
            }
          },
          fail: function (err) {
            failed(err, 'wx.login failed');
          }
        });
      } catch (e) {
        failed(null, (e && e.message) || 'wx.login threw');
      }
    });
  }

  // -- login ----------------------------------------------------------------

  /**
   * POSTs the code. The request carries the current session header (even a
   * dead one) so wxgate can keep that session's key as the user's previous
   * key: phone data encrypted just before this wx.login still decrypts.
   * A transport failure is retried once with the SAME code: wxgate answers a
   * retried code from its code cache (WeChat itself would say 40163).
   */
  function exchange(code) {
    var current = readToken();
    var request = {
      url: loginUrl,
      method: 'POST',
      header: withHeader({ 'content-type': 'application/json' }, sessionHeader, current),
      data: JSON.stringify({ code: code }),
      dataType: 'json'
    };
    return send(request)
      .then(null, function (err) {
        if (err && err.code === 'network') {
          return send(request);
        }
        throw err;
      })
      .then(function (res) {
        var err = errorOf(res);
        if (err) {
          throw err;
        }
        if (!is2xx(res.statusCode)) {
          throw new WxgateError(res.statusCode, 'login_failed',
            'the login route answered HTTP ' + res.statusCode, res);
        }
        var token = headerValue(res.header, sessionHeader);
        if (!token) {
          var body = jsonObject(res.data);
          token = body && typeof body.session === 'string' ? body.session : '';
        }
        if (!isTokenText(token)) {
          throw new WxgateError(res.statusCode, 'no_session',
            'the login answer has no ' + sessionHeader + ' header and no "session" field', res);
        }
        writeToken(token);
        return token;
      });
  }

  function runLogin(force) {
    var stored = readToken();
    var valid = !force && stored ? checkSession() : Promise.resolve(false);
    return valid.then(function (ok) {
      var now = readToken();
      if (ok && now) {
        return now;
      }
      return wxLogin().then(exchange);
    });
  }

  /**
   * Resolves to the session token. Without `force`, a stored token whose
   * WeChat login state is still valid (wx.checkSession) is used as is.
   * Concurrent calls share one login: one wx.login, one request.
   */
  function login(loginOptions) {
    var force = !!(loginOptions && loginOptions.force);
    if (loginInFlight) {
      if (!force || loginInFlight.force) {
        return loginInFlight.promise;
      }
      // A forced login asked while a plain one runs: the plain one may end on
      // the very token that just proved dead, so force one after it.
      return settled(loginInFlight.promise).then(function () {
        return login(loginOptions);
      });
    }
    var entry = { force: force, promise: null };
    loginInFlight = entry;
    function done() {
      if (loginInFlight === entry) {
        loginInFlight = null;
      }
    }
    entry.promise = runLogin(force).then(function (token) {
      done();
      return token;
    }, function (err) {
      done();
      throw err;
    });
    return entry.promise;
  }

  /**
   * After `deadToken` was refused: a fresh login, unless another caller has
   * already replaced the token meanwhile (then that one is used).
   */
  function renew(deadToken) {
    return settled(loginInFlight && loginInFlight.promise).then(function () {
      var now = readToken();
      if (now && now !== deadToken) {
        return now;
      }
      return login({ force: true });
    });
  }

  // -- request --------------------------------------------------------------

  function request(requestOptions) {
    if (!requestOptions || typeof requestOptions.url !== 'string') {
      return Promise.reject(new TypeError('wxgate: request needs options.url'));
    }
    var url = joinUrl(baseUrl, requestOptions.url);
    var ours = isUnder(url, baseUrl);

    function attempt(mayRenew) {
      var token = ours ? readToken() : '';
      var o = {};
      for (var key in requestOptions) {
        if (hasOwn(requestOptions, key)) {
          o[key] = requestOptions[key];
        }
      }
      o.url = url;
      o.header = ours ? withHeader(requestOptions.header, sessionHeader, token) : requestOptions.header;
      return send(o).then(function (res) {
        var err = errorOf(res);
        if (err && mayRenew && ours && res.statusCode === 401 && err.code === 'session_required') {
          return renew(token).then(function () {
            return attempt(false);
          });
        }
        if (err) {
          throw err;
        }
        return res;
      });
    }

    // A login under way (app launch) is waited for, so the request carries
    // the token it brings instead of bouncing off a 401.
    return settled(ours && loginInFlight && loginInFlight.promise).then(function () {
      return attempt(true);
    });
  }

  // -- phone ----------------------------------------------------------------

  function phoneRefusal(detail, errMsg) {
    var result = { ok: false, reason: 'fail', errMsg: errMsg };
    var errno = detail.errno;
    if (errno !== undefined && errno !== null) {
      result.errno = Number(errno);
    }
    if (result.errno === PHONE_QUOTA_ERRNO) {
      result.reason = 'no_quota';
    } else if (/user (deny|denied|cancel)/i.test(errMsg)) {
      result.reason = 'deny';
    }
    return result;
  }

  function sendPhone(payload) {
    function attempt(mayRenew) {
      var token = readToken();
      return send({
        url: phoneUrl,
        method: 'POST',
        header: withHeader({ 'content-type': 'application/json' }, sessionHeader, token),
        data: payload,
        dataType: 'json'
      }).then(function (res) {
        var err = errorOf(res);
        if (err && res.statusCode === 401 && err.code === 'decrypt_failed') {
          // The data was encrypted under a key wxgate does not hold. It is
          // lost; a fresh login now puts wxgate and WeChat on one key, so
          // the next tap decrypts.
          return login({ force: true }).then(function () {
            return { ok: false, reason: 'retry', error: err };
          });
        }
        if (err && res.statusCode === 401 && err.code === 'session_required' && mayRenew) {
          // wxgate refused before using the data: the phone code is not
          // spent. Log in again and send the same data once more.
          return renew(token).then(function () {
            return attempt(false);
          });
        }
        if (err && res.statusCode === 401 && err.code === 'invalid_code') {
          // A phone code WeChat refused (used or expired): a new tap gives a new one.
          return { ok: false, reason: 'retry', error: err };
        }
        if (err) {
          throw err;
        }
        if (is2xx(res.statusCode)) {
          return { ok: true, response: res };
        }
        return { ok: false, reason: 'backend', response: res };
      });
    }

    // Never wx.login here. Only when no token is stored at all is a login
    // already under way waited for (it was started before the tap).
    var wait = readToken() ? null : loginInFlight && loginInFlight.promise;
    return settled(wait).then(function () {
      return attempt(true);
    });
  }

  /**
   * The handler of `<button open-type="getPhoneNumber">` (and of
   * getRealtimePhoneNumber). Resolves to a result; rejects only with a
   * WxgateError for errors the user cannot fix by tapping again.
   */
  function getPhoneNumber(event, extra) {
    var detail = (event && event.detail) || {};
    var errMsg = typeof detail.errMsg === 'string' ? detail.errMsg : '';
    if (!/:ok$/.test(errMsg)) {
      return Promise.resolve(phoneRefusal(detail, errMsg));
    }
    var body = {};
    if (extra && typeof extra === 'object') {
      for (var key in extra) {
        if (hasOwn(extra, key)) {
          body[key] = extra[key];
        }
      }
    }
    var hasCode = typeof detail.code === 'string' && detail.code !== '';
    var hasData = typeof detail.encryptedData === 'string' && detail.encryptedData !== '' &&
      typeof detail.iv === 'string' && detail.iv !== '';
    if (!hasCode && !hasData) {
      return Promise.resolve({
        ok: false,
        reason: 'fail',
        errMsg: errMsg + ' (the event carries neither code nor encryptedData and iv)'
      });
    }
    if (phoneInFlight) {
      // A double tap: the first tap's request is under way; this one's data
      // is dropped unsent (a phone code is billed when it is exchanged).
      return Promise.resolve({ ok: false, reason: 'busy', errMsg: errMsg });
    }
    if (hasCode) {
      body.code = detail.code;
    }
    if (hasData) {
      // In a JSON body, never in a URL: base64's '+' would become a space.
      body.encryptedData = detail.encryptedData;
      body.iv = detail.iv;
    }
    var p = sendPhone(JSON.stringify(body));
    phoneInFlight = p;
    function done() {
      if (phoneInFlight === p) {
        phoneInFlight = null;
      }
    }
    p.then(done, done);
    return p;
  }

  // -- logout ---------------------------------------------------------------

  /**
   * Revokes the session at wxgate and forgets it locally, whatever the
   * answer: the stored token is removed before the request is even sent.
   */
  function logout() {
    return settled(loginInFlight && loginInFlight.promise).then(function () {
      var token = readToken();
      clearToken();
      if (!token) {
        return { ok: false };
      }
      return send({
        url: logoutUrl,
        method: 'POST',
        header: withHeader({}, sessionHeader, token),
        dataType: 'json'
      }).then(function (res) {
        var out = { ok: is2xx(res.statusCode), response: res };
        var err = errorOf(res);
        if (err) {
          out.error = err;
        }
        return out;
      }, function (err) {
        return { ok: false, error: err };
      });
    });
  }

  return {
    baseUrl: baseUrl,
    login: login,
    request: request,
    getPhoneNumber: getPhoneNumber,
    logout: logout,
    /** The stored session token, or '' when there is none. */
    getToken: readToken
  };
}

module.exports = {
  createClient: createClient,
  WxgateError: WxgateError,
  VERSION: VERSION
};
