// Watches keys with `@deno/kv` on Node while the replica follows new
// commits: the same check as deno_watch.ts (see there), over HTTP/1.1.
//
//   NODE_PATH=<node_modules> node node_watch.cjs <url> <expected-0.json> \
//       <expected-1.json> '<["key hex", ...]>' <ready file> <timeout ms>

"use strict";

const fs = require("node:fs");
const v8 = require("node:v8");
const { openKv, KvU64 } = require("@deno/kv");
const checks = require("./kv_checks.cjs");

/** A V8 value this Node could not decode (see node_reads.cjs). */
class Opaque {}

async function main() {
  const [url, exp0Path, exp1Path, keysJson, readyFile, timeoutMs] = process.argv
    .slice(2);
  const deadline = Date.now() + Number(timeoutMs);
  const load = (p) => new checks.Model(JSON.parse(fs.readFileSync(p, "utf8")));
  const kv = await openKv(url, {
    accessToken: process.env.DENO_KV_ACCESS_TOKEN,
    encodeV8: v8.serialize,
    decodeV8: (bytes) => {
      try {
        return v8.deserialize(bytes);
      } catch {
        return new Opaque();
      }
    },
  });
  const summary = await checks.watchChecks(
    kv,
    load(exp0Path),
    load(exp1Path),
    JSON.parse(keysJson),
    () => fs.writeFileSync(readyFile, "ready"),
    deadline,
    { u64Class: KvU64, opaque: (v) => v instanceof Opaque },
  );
  kv.close();
  console.log(JSON.stringify(summary));
  process.exit(summary.stage === "done" ? 0 : 1);
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : e);
  process.exit(1);
});
