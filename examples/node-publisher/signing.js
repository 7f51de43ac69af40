'use strict';
// Portal message signatures, the recipe of docs/security.md and contracts/signing.py, in Node.js.
// Checked against contracts/signing-vectors.json by check-vectors.js (tests/e2e/test_node_publisher.py).

const crypto = require('node:crypto');

const SCHEME = 'v1';
const KEY_ID_HEADER = 'x-appt-key-id';
const SIGNED_AT_HEADER = 'x-appt-signed-at';
const SIGNATURE_HEADER = 'x-appt-signature';
const HEX_SIGNATURE = /^v1=[0-9a-f]{64}$/;

function mac(secret, keyId, signedAt, body) {
  const prefix = Buffer.from(`${SCHEME}\n${keyId}\n${signedAt}\n`, 'utf8');
  const digest = crypto.createHmac('sha256', Buffer.from(secret, 'utf8'))
    .update(Buffer.concat([prefix, body]))
    .digest('hex');
  return `${SCHEME}=${digest}`;
}

/**
 * The three headers a portal puts on `body` (a Buffer: exactly the bytes it publishes).
 * `signedAt` is whole Unix seconds; it must reach the broker as an AMQP integer, which amqplib does for
 * an integral JS number.
 */
function signatureHeaders(body, keyId, secret, signedAt) {
  if (!Buffer.isBuffer(body)) throw new TypeError('sign the exact bytes you publish: pass a Buffer');
  if (!Number.isSafeInteger(signedAt)) throw new TypeError('signedAt must be whole Unix seconds');
  return {
    [KEY_ID_HEADER]: keyId,
    [SIGNED_AT_HEADER]: signedAt,
    [SIGNATURE_HEADER]: mac(secret, keyId, signedAt, body),
  };
}

/** Every key of a keyring file ({"<producer>": {"current": {id, secret}, "previous": {...}}}) by id. */
function keysById(keyring) {
  const byId = new Map();
  for (const [producer, slots] of Object.entries(keyring)) {
    for (const slot of ['current', 'previous']) {
      if (slots[slot]) byId.set(slots[slot].id, { producer, ...slots[slot] });
    }
  }
  return byId;
}

/** The current key a producer signs with. */
function currentKey(keyring, producer) {
  const entry = keyring[producer];
  if (!entry || !entry.current) throw new Error(`no signing key for producer ${JSON.stringify(producer)}`);
  return { producer, ...entry.current };
}

/**
 * What the workers check (a portal needs only `signatureHeaders`; this mirrors the gate so the vectors'
 * refused cases can be checked here too). Returns {ok: true, producer, keyId} or {ok: false, reason}.
 */
function verify(body, headers, keyring, now, limits) {
  headers = headers || {};
  if (![KEY_ID_HEADER, SIGNED_AT_HEADER, SIGNATURE_HEADER].some((name) => name in headers)) {
    return { ok: false, reason: 'signature_missing' };
  }
  const keyId = headers[KEY_ID_HEADER];
  const signedAt = headers[SIGNED_AT_HEADER];
  const signature = headers[SIGNATURE_HEADER];
  if (typeof keyId !== 'string' || typeof signature !== 'string' || signedAt === undefined || signedAt === null) {
    return { ok: false, reason: 'signature_missing' };
  }
  if (!Number.isSafeInteger(signedAt)) return { ok: false, reason: 'signature_invalid' };
  const key = keysById(keyring).get(keyId);
  if (!key) return { ok: false, reason: 'signature_unknown_key' };
  const expected = mac(key.secret, keyId, signedAt, body);
  if (!HEX_SIGNATURE.test(signature)
      || !crypto.timingSafeEqual(Buffer.from(signature), Buffer.from(expected))) {
    return { ok: false, reason: 'signature_invalid' };
  }
  const age = now - signedAt;
  if (age > limits.max_age_s || -age > limits.future_skew_s) return { ok: false, reason: 'signature_expired' };
  return { ok: true, producer: key.producer, keyId };
}

module.exports = {
  SCHEME, KEY_ID_HEADER, SIGNED_AT_HEADER, SIGNATURE_HEADER, signatureHeaders, verify, currentKey, keysById,
};
