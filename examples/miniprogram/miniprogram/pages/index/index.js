// The example page: a login status line, a button that calls the backend
// through wxgate, the phone-number button, and log out / log in.
// Every handler returns its promise (WeChat ignores it; the tests await it).
const app = getApp();

/** A short text for an error: the wxgate code and its message. */
function describeError(err) {
  if (err && err.code) return `${err.code}: ${err.message}`;
  return String((err && err.message) || err);
}

/** The headers an echo backend (dev/serve.js) reports having received, if it is one. */
function echoedHeaders(res) {
  return res && res.data && typeof res.data === 'object' && res.data.headers ? res.data.headers : null;
}

Page({
  data: {
    status: 'Not logged in',
    loggedIn: false,
    backendResult: '',
    phoneResult: '',
  },

  onLoad() {
    return this.login();
  },

  login() {
    this.setData({ status: 'Logging in…' });
    return app.wxgate.login().then(
      () => this.setData({ status: 'Logged in', loggedIn: true }),
      (err) => this.setData({ status: `Login failed (${describeError(err)})`, loggedIn: false }),
    );
  },

  onCallBackend() {
    this.setData({ backendResult: 'Calling the backend…' });
    return app.wxgate.request({ url: '/api/orders', method: 'GET' }).then(
      (res) => {
        const headers = echoedHeaders(res);
        let text = `HTTP ${res.statusCode}`;
        if (headers) {
          text += headers['x-wx-openid'] ? `: the backend saw openid ${headers['x-wx-openid']}` : ': anonymous request';
        }
        this.setData({ backendResult: text });
      },
      (err) => this.setData({ backendResult: `Error (${describeError(err)})` }),
    );
  },

  // <button open-type="getPhoneNumber" bindgetphonenumber="onPhone">.
  // Nothing here calls wx.login: that would replace the key the data is
  // encrypted with. The library re-establishes the session itself after a
  // decryption failure and then asks for another tap.
  onPhone(e) {
    return app.wxgate.getPhoneNumber(e).then(
      (r) => {
        if (r.reason === 'busy') return; // a double tap: the first tap's request is under way
        this.setData({ phoneResult: phoneText(r) });
      },
      (err) => this.setData({ phoneResult: `Error (${describeError(err)})` }),
    );
  },

  onLogout() {
    return app.wxgate.logout().then(() => {
      this.setData({ status: 'Logged out', loggedIn: false, backendResult: '', phoneResult: '' });
    });
  },
});

function phoneText(r) {
  if (r.ok) {
    const headers = echoedHeaders(r.response);
    const number = headers && headers['x-wx-phone-number'];
    return number ? `Phone number verified: ${number}` : 'Phone number sent to the backend';
  }
  switch (r.reason) {
    case 'deny':
      return 'You chose not to share your phone number.';
    case 'no_quota':
      return 'Phone number verification is not available right now.';
    case 'retry':
      return 'That did not work. Please tap the button again.';
    case 'backend':
      return `The server answered HTTP ${r.response.statusCode}.`;
    default:
      return `Could not get the phone number (${r.errMsg}).`;
  }
}
