// The client is made once, when the mini program starts, and shared by the
// pages through getApp().wxgate.
const { createClient } = require('./lib/wxgate');
const config = require('./config');

App({
  wxgate: null,

  onLaunch() {
    this.wxgate = createClient({ baseUrl: config.baseUrl });
    // Log in early, so the session (and its key) exists before the user taps
    // the phone button. Pages calling login() meanwhile share this one.
    this.wxgate.login().catch((err) => {
      console.warn('wxgate login failed', err.code, err.message);
    });
  },
});
