// One long-lived Deno KV client, driven line by line on stdin, so a test
// can move the replica (admin checkouts, new commits) and ask the *same*
// client what it reads now.
//
//   deno run --unstable-kv -A deno_pitr.ts <url> <expected.json> '<["key hex", ...]>'
//
// The keys are watched from the start. Commands, one JSON object a line:
//   {"get": true}    -> {"get": {"<hex>": "<versionstamp>" | null, ...}}
//   {"watch": true}  -> {"watch": {"<hex>": ... as of the newest event}, "events": n}
//   {"exit": true}   -> closes the client and exits 0
// The expected file only maps key hex to key parts; it must know every key.

import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const checks = require("./kv_checks.cjs");

const [url, expectedPath, keysJson] = Deno.args;
const exp = JSON.parse(await Deno.readTextFile(expectedPath));
const hexes: string[] = JSON.parse(keysJson);
const keys = hexes.map((h) => checks.keyFromParts(exp.keys[h]));

const kv = await Deno.openKv(url);
let events = 0;
let lastEvent: Record<string, string | null> = {};
const stamps = (entries: Deno.KvEntryMaybe<unknown>[]) =>
  Object.fromEntries(entries.map((e, i) => [hexes[i], e.versionstamp]));

const watching = (async () => {
  for await (const entries of kv.watch(keys)) {
    events += 1;
    lastEvent = stamps(entries);
  }
})();

async function* stdinLines() {
  let buf = "";
  for await (const chunk of Deno.stdin.readable.pipeThrough(new TextDecoderStream())) {
    buf += chunk;
    let nl;
    while ((nl = buf.indexOf("\n")) >= 0) {
      yield buf.slice(0, nl);
      buf = buf.slice(nl + 1);
    }
  }
}

for await (const line of stdinLines()) {
  if (!line.trim()) continue;
  const cmd = JSON.parse(line);
  if (cmd.get) {
    console.log(JSON.stringify({ get: stamps(await kv.getMany(keys)) }));
  } else if (cmd.watch) {
    console.log(JSON.stringify({ watch: lastEvent, events }));
  } else if (cmd.exit) {
    break;
  }
}
kv.close();
await watching.catch(() => {});
Deno.exit(0);
