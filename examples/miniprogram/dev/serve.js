#!/usr/bin/env node
'use strict';
// Local services for the example mini program, like `wxgate demo` but staying
// up: the fake WeChat, an echo backend (answers with the headers it received)
// and wxgate in front of it on http://127.0.0.1:8080 (login.mode = "forward").
//
//   WXGATE_BIN=../../target/debug/wxgate node dev/serve.js [port]
//
// Ctrl-C stops everything.

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const stack = require('../../../clients/miniprogram/test-support/stack');

async function main() {
  const port = Number(process.argv[2] || 8080);
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new Error(`not a port: ${process.argv[2]}`);
  const bin = stack.wxgateBin();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wxgate-example-'));
  const started = [];

  async function stop() {
    await Promise.all(started.map((c) => stack.stopProcess(c)));
    if (backend) await backend.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }

  let backend;
  try {
    backend = await stack.startBackend((r) => {
      const who = r.headers['x-wx-openid'] ? `openid ${r.headers['x-wx-openid']}` : 'anonymous';
      const phone = r.headers['x-wx-phone-number'] ? `, phone ${r.headers['x-wx-phone-number']}` : '';
      console.log(`backend <- ${r.method} ${r.path} (${who}${phone})`);
    });
    const fake = await stack.startFake(bin);
    started.push(fake.child);
    const gate = await stack.startWxgate(bin, {
      upstreamUrl: backend.url,
      fakeUrl: fake.url,
      listenPort: port,
      dir,
      show: true,
    });
    started.push(gate.child);
    console.log(`wxgate        ${gate.url}   (admin ${gate.adminUrl})`);
    console.log(`fake WeChat   ${fake.url}   (appid ${stack.APPID})`);
    console.log(`echo backend  ${backend.url}`);
    console.log('Open examples/miniprogram in WeChat DevTools. Ctrl-C stops.');
  } catch (e) {
    await stop();
    throw e;
  }

  for (const sig of ['SIGINT', 'SIGTERM']) {
    process.once(sig, () => {
      stop().then(() => process.exit(0));
    });
  }
}

main().catch((e) => {
  console.error(e.message);
  process.exit(1);
});
