'use strict';
// Builds a modify.requested message and publishes it as a portal must: signed over the exact bytes,
// persistent, mandatory, on a confirm channel, with the envelope mirrored in AMQP properties and headers.

const crypto = require('node:crypto');
const amqp = require('amqplib');
const { signatureHeaders } = require('./signing');

/**
 * A modify.requested envelope (contracts/asyncapi.json, message `modify.requested`).
 * `change` is {action: 'cancel', reason} or {action: 'reschedule', new_window: {start, end}} (ISO 8601
 * with an offset). `requestId` is the portal's own request id: every reply carries it as correlation_id.
 */
function modifyRequested({ tenantId, requestId, appointmentId, requesterId, change, producer,
  replyTo = null, expectedVersion = null, occurredAt = new Date() }) {
  return {
    message_id: crypto.randomUUID(),
    type: 'modify.requested',
    schema_version: 1,
    tenant_id: tenantId,
    correlation_id: requestId,
    causation_id: null,
    occurred_at: occurredAt.toISOString(),
    producer,
    payload: {
      appointment_id: appointmentId,
      requester_id: requesterId,
      change,
      expected_version: expectedVersion,
      reply_to: replyTo,
    },
  };
}

/** The AMQP properties and headers the workers expect (workers/runtime/broker.py `to_amqp`). */
function publishOptions(message, body, key, signedAt) {
  return {
    contentType: 'application/json',
    persistent: true,
    mandatory: true, // an unroutable message comes back instead of vanishing
    messageId: message.message_id,
    correlationId: message.correlation_id,
    type: message.type,
    appId: message.producer,
    timestamp: Math.floor(Date.parse(message.occurred_at) / 1000),
    headers: {
      'x-message-type': message.type,
      'x-schema-version': message.schema_version,
      'x-tenant-id': message.tenant_id,
      'x-producer': message.producer,
      ...signatureHeaders(body, key.id, key.secret, signedAt),
    },
  };
}

/**
 * Publish `message` to `exchange` with routing key = its type, signed with `key` ({id, secret}).
 * Resolves once the broker confirmed it; rejects when it was returned (no queue bound) or nacked.
 */
async function publish(channel, exchange, message, key, { signedAt = Math.floor(Date.now() / 1000) } = {}) {
  const body = Buffer.from(JSON.stringify(message), 'utf8');
  const options = publishOptions(message, body, key, signedAt);
  let returned = false;
  const onReturn = (msg) => {
    if (msg.properties.messageId === message.message_id) returned = true;
  };
  channel.on('return', onReturn);
  try {
    await new Promise((resolve, reject) => {
      channel.publish(exchange, message.type, body, options, (err) => (err ? reject(new Error('nacked by the broker')) : resolve()));
    });
  } finally {
    channel.removeListener('return', onReturn);
  }
  if (returned) throw new Error(`unroutable: no queue is bound to ${exchange} for ${message.type}`);
  return { messageId: message.message_id, requestId: message.correlation_id, bytes: body.length };
}

async function withConfirmChannel(url, fn) {
  const connection = await amqp.connect(url);
  try {
    const channel = await connection.createConfirmChannel();
    try {
      return await fn(channel);
    } finally {
      await channel.close();
    }
  } finally {
    await connection.close();
  }
}

module.exports = { modifyRequested, publishOptions, publish, withConfirmChannel };
