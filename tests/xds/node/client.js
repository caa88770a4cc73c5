// A proxyless gRPC client (@grpc/grpc-js-xds) for the xDS tests: resolves the `xds:///` target
// given as the first argument through the control plane named in GRPC_XDS_BOOTSTRAP and calls
// /meridian.test.Echo/Who in a loop. Same protocol as ../grpc_client.py: for each stdin line (a
// comma-separated set of server names) it calls until the last WINDOW answers came from exactly
// that set, then prints `converged NAMES`; after DEADLINE_MS it prints what it saw and exits 1.
'use strict';

const readline = require('readline');
const grpc = require('@grpc/grpc-js');
const xds = require('@grpc/grpc-js-xds');

const WINDOW = 12;
const DEADLINE_MS = 30000;

xds.register();
const client = new grpc.Client(process.argv[2], grpc.credentials.createInsecure());
const identity = (x) => x;

function who() {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + 5000);
    client.makeUnaryRequest('/meridian.test.Echo/Who', identity, identity, Buffer.alloc(0),
      { deadline }, (err, response) => (err ? reject(err) : resolve(response.toString())));
  });
}

async function converge(want) {
  const recent = [];
  const end = Date.now() + DEADLINE_MS;
  let lastError = null;
  for (;;) {
    try {
      recent.push(await who());
      if (recent.length > WINDOW) recent.shift();
    } catch (err) {
      lastError = `${err.code}: ${err.details}`;
      recent.length = 0;
      await new Promise((r) => setTimeout(r, 50));
    }
    const seen = new Set(recent);
    if (recent.length === WINDOW && seen.size === want.size && [...want].every((n) => seen.has(n))) {
      return true;
    }
    if (Date.now() > end) {
      console.log(`timeout: wanted ${[...want]}, last answers ${recent}, last error ${lastError}`);
      return false;
    }
  }
}

async function main() {
  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    const want = new Set(line.trim().split(',').filter((n) => n));
    if (!(await converge(want))) process.exit(1);
    console.log(`converged ${[...want].sort().join(',')}`);
  }
  process.exit(0);
}

main();
