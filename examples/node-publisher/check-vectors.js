'use strict';
// Runs signing.js against contracts/signing-vectors.json; prints one line per case, exits 1 on any miss.
// Usage: node check-vectors.js ../../contracts/signing-vectors.json

const fs = require('node:fs');
const { signatureHeaders, verify } = require('./signing');

const file = process.argv[2] || `${__dirname}/../../contracts/signing-vectors.json`;
const vectors = JSON.parse(fs.readFileSync(file, 'utf8'));
let failures = 0;

function report(name, ok, detail) {
  if (!ok) failures += 1;
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${name}${detail ? `: ${detail}` : ''}`);
}

for (const c of vectors.accepted) {
  const body = Buffer.from(c.body, 'utf8');
  const headers = signatureHeaders(body, c.key_id, c.secret, c.signed_at);
  const same = JSON.stringify(headers) === JSON.stringify(c.expected_headers);
  report(`accepted/${c.name} signs`, same, same ? '' : `got ${JSON.stringify(headers)}`);
  const result = verify(body, c.expected_headers, vectors.keyring, c.now, vectors.limits);
  report(`accepted/${c.name} verifies`, result.ok && result.producer === c.producer, result.reason);
}
for (const c of vectors.refused) {
  const result = verify(Buffer.from(c.body, 'utf8'), c.headers, vectors.keyring, c.now, vectors.limits);
  report(`refused/${c.name}`, !result.ok && result.reason === c.reason, result.ok ? 'accepted' : result.reason);
}
const total = vectors.accepted.length * 2 + vectors.refused.length;
console.log(`${total - failures} of ${total} vector checks passed`);
process.exit(failures ? 1 : 0);
