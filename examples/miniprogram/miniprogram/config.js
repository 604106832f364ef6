// Where wxgate listens. `node dev/serve.js` starts one here (see README.md).
// In WeChat DevTools tick "Details > Local Settings > Do not verify valid domain
// names..." (project.config.json sets urlCheck: false), or plain http to
// 127.0.0.1 is refused. A released mini program needs an https domain that is
// listed in the mini program's request domains.
module.exports = {
  baseUrl: 'http://127.0.0.1:8080',
};
