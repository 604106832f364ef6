'use strict';
// Checks on the shipped file itself: it stays ES5 (WeChat's engine runs it
// untranspiled when copied), needs nothing but `wx`, and its copies match.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const vm = require('node:vm');

const root = path.join(__dirname, '..');
const source = fs.readFileSync(path.join(root, 'index.js'), 'utf8');

/** The code with comments, string literals and regex literals blanked out. */
function codeOnly(text) {
  let out = '';
  let i = 0;
  let lastSignificant = '';
  while (i < text.length) {
    const c = text[i];
    const n = text[i + 1];
    if (c === '/' && n === '*') {
      const end = text.indexOf('*/', i + 2);
      i = end < 0 ? text.length : end + 2;
      out += ' ';
    } else if (c === '/' && n === '/') {
      const end = text.indexOf('\n', i);
      i = end < 0 ? text.length : end;
    } else if (c === "'" || c === '"' || c === '`') {
      let j = i + 1;
      while (j < text.length && text[j] !== c) j += text[j] === '\\' ? 2 : 1;
      out += c === '`' ? '`' : '""';
      i = j + 1;
      lastSignificant = '"';
    } else if (c === '/' && /[(,=:!&|?{};]/.test(lastSignificant)) {
      // A regex literal (after an operator or punctuation).
      let j = i + 1;
      let inClass = false;
      while (j < text.length && (inClass || text[j] !== '/')) {
        if (text[j] === '\\') j += 1;
        else if (text[j] === '[') inClass = true;
        else if (text[j] === ']') inClass = false;
        j += 1;
      }
      j += 1;
      while (/[a-z]/.test(text[j] || '')) j += 1;
      out += '/re/';
      i = j;
      lastSignificant = '/';
    } else {
      out += c;
      if (!/\s/.test(c)) lastSignificant = c;
      i += 1;
    }
  }
  return out;
}

test('index.js uses no syntax newer than ES5', () => {
  const code = codeOnly(source);
  const forbidden = [
    [/=>/, 'arrow function'],
    [/`/, 'template literal'],
    [/\?\./, 'optional chaining'],
    [/\?\?/, 'nullish coalescing'],
    [/\.\.\./, 'spread or rest'],
    [/\b(let|const|class|async|await|import|export|yield)\b/, 'ES2015+ keyword'],
    [/\bfunction\s*\*/, 'generator'],
  ];
  for (const [re, what] of forbidden) {
    const m = code.match(re);
    assert.equal(m, null, `${what} in index.js: ${m && code.slice(Math.max(0, m.index - 40), m.index + 40)}`);
  }
  // Still parses after blanking, so the blanking did not hide real code.
  assert.doesNotThrow(() => new vm.Script(source));
});

test('index.js needs nothing but Promise and wx: it loads in a bare context', () => {
  const sandbox = { module: { exports: {} }, Promise, Object, Error, TypeError, Array, String, Number, JSON, RegExp };
  sandbox.exports = sandbox.module.exports;
  vm.runInNewContext(source, sandbox, { filename: 'index.js' });
  const lib = sandbox.module.exports;
  assert.equal(typeof lib.createClient, 'function');
  assert.equal(typeof lib.WxgateError, 'function');
  // No `require` exists in the sandbox, so the file requires nothing.
  assert.equal(typeof sandbox.require, 'undefined');
});

test('miniprogram_dist/index.js (what DevTools "build npm" copies) is index.js', () => {
  const dist = fs.readFileSync(path.join(root, 'miniprogram_dist', 'index.js'), 'utf8');
  assert.ok(dist === source, 'miniprogram_dist/index.js differs from index.js: run `npm run sync`');
});

test('package.json: no runtime dependencies, the entry points exist', () => {
  const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));
  assert.equal(pkg.name, 'wxgate-miniprogram');
  assert.equal(pkg.license, 'MIT OR Apache-2.0');
  assert.equal(pkg.dependencies, undefined);
  assert.equal(pkg.peerDependencies, undefined);
  for (const f of [pkg.main, pkg.types, path.join(pkg.miniprogram, 'index.js')]) {
    assert.ok(fs.existsSync(path.join(root, f)), f);
  }
  for (const f of pkg.files) {
    assert.ok(fs.existsSync(path.join(root, f)), f);
  }
});
