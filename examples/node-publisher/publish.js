'use strict';
// Publish one signed modify.requested and print its ids as JSON.
//
//   AMQP_URL=amqp://guest:guest@127.0.0.1:5672/ APPT_NAMESPACE=appt \
//   APPT_PORTAL_KEYS_FILE=../../infra/dev/portal-keys.json \
//   node publish.js --tenant acme --appointment apt-1 --requester cust-1 --cancel "moving"
//   node publish.js ... --reschedule 2027-01-20T13:00:00+01:00 2027-01-20T15:00:00+01:00

const fs = require('node:fs');
const { parseArgs } = require('node:util');
const { currentKey } = require('./signing');
const { modifyRequested, publish, withConfirmChannel } = require('./publisher');

function usage(text) {
  console.error(`publish.js: ${text}`);
  process.exit(2);
}

async function main() {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      tenant: { type: 'string' },
      appointment: { type: 'string' },
      requester: { type: 'string' },
      request: { type: 'string' },
      producer: { type: 'string', default: process.env.APPT_PRODUCER || 'portal-web' },
      cancel: { type: 'string' },
      reschedule: { type: 'boolean' },
      'reply-to': { type: 'string' },
      'signed-at': { type: 'string' },
    },
  });
  for (const name of ['tenant', 'appointment', 'requester']) if (!values[name]) usage(`--${name} is required`);
  let change;
  if (values.cancel !== undefined) change = { action: 'cancel', reason: values.cancel || null };
  else if (values.reschedule && positionals.length === 2) {
    change = { action: 'reschedule', new_window: { start: positionals[0], end: positionals[1] } };
  } else usage('give --cancel REASON or --reschedule START END');

  const keysFile = process.env.APPT_PORTAL_KEYS_FILE;
  const keyring = process.env.APPT_PORTAL_KEYS
    ? JSON.parse(process.env.APPT_PORTAL_KEYS)
    : keysFile ? JSON.parse(fs.readFileSync(keysFile, 'utf8')) : usage('set APPT_PORTAL_KEYS_FILE or APPT_PORTAL_KEYS');
  const key = currentKey(keyring, values.producer);
  const message = modifyRequested({
    tenantId: values.tenant,
    requestId: values.request || `req-${Date.now().toString(36)}`,
    appointmentId: values.appointment,
    requesterId: values.requester,
    change,
    producer: values.producer,
    replyTo: values['reply-to'] || null,
  });
  const url = process.env.AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672/';
  const exchange = `${process.env.APPT_NAMESPACE || 'appt'}.requests`;
  const signedAt = values['signed-at'] ? Number(values['signed-at']) : undefined;
  const sent = await withConfirmChannel(url, (channel) => publish(channel, exchange, message, key, { signedAt }));
  console.log(JSON.stringify({ exchange, ...sent }));
}

main().catch((err) => {
  console.error(`publish.js: ${err.message}`);
  process.exit(1);
});
