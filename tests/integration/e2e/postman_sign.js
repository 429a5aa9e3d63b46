// Runs the Postman collection's webhook pre-request script outside Postman, with a stand-in for
// the `pm` object and CryptoJS (HMAC-SHA256 from node's crypto), and prints for every webhook
// request the body it would send and the X-Webhook-Signature it would add, one JSON per line.
// test_dashboard_api.py posts them to a real server: the kit's signatures must be accepted.
//
//   usage: node postman_sign.js COLLECTION.json SECRET [uniqueIds: true|false]
'use strict';

const crypto = require('crypto');
const fs = require('fs');

const [collectionPath, secret, unique] = process.argv.slice(2);
const coll = JSON.parse(fs.readFileSync(collectionPath, 'utf8'));

const CryptoJS = {
  enc: { Hex: 'hex' },
  HmacSHA256(message, key) {
    const digest = crypto.createHmac('sha256', Buffer.from(key, 'utf8'))
      .update(Buffer.from(message, 'utf8')).digest('hex');
    return { toString: (enc) => { if (enc !== 'hex') throw new Error('only Hex'); return digest; } };
  },
};

function runScript(lines, item, vars) {
  const headers = (item.request.header || []).map((h) => Object.assign({}, h));
  const body = { raw: item.request.body ? item.request.body.raw : '' };
  body.update = (raw) => { body.raw = raw; };
  const pm = {
    collectionVariables: { get: (k) => vars[k], set: (k, v) => { vars[k] = v; } },
    variables: {
      replaceIn: (s) => s.replace(/\{\{(\w+)\}\}/g, (m, k) => (k in vars ? vars[k] : m)),
    },
    request: {
      body,
      headers: {
        upsert: (h) => {
          const i = headers.findIndex((x) => x.key.toLowerCase() === h.key.toLowerCase());
          if (i >= 0) headers[i] = h; else headers.push(h);
        },
      },
    },
  };
  new Function('pm', 'CryptoJS', lines.join('\n'))(pm, CryptoJS);
  return { headers, body: pm.variables.replaceIn(body.raw) };
}

const vars = {};
for (const v of coll.variable || []) vars[v.key] = v.value;
vars.webhookSecret = secret;
vars.uniqueIds = unique || 'true';

for (const folder of coll.item) {
  const pre = (folder.event || []).find((e) => e.listen === 'prerequest');
  if (!pre) continue;
  for (const item of folder.item) {
    const out = runScript(pre.script.exec, item, vars);
    const sig = out.headers.find((h) => h.key.toLowerCase() === 'x-webhook-signature');
    process.stdout.write(JSON.stringify({
      name: item.name, folder: folder.name, body: out.body, signature: sig ? sig.value : null,
      path: vars.webhookPath,
    }) + '\n');
  }
}
