// Reads a KV Connect server with `@deno/kv` on Node (HTTP/1.1) and compares
// every answer with a fixture's expected final state.
//
//   NODE_PATH=<node_modules> node node_reads.cjs <url> <expected.json> [parallel]
//
// Token from DENO_KV_ACCESS_TOKEN. Node cannot decode every V8 value Deno
// writes (its serializer is older), so a V8 value Node fails to decode only
// counts as such; its key and versionstamp are still compared, and bytes and
// KvU64 values are compared in full. `parallel` getMany calls run at once,
// so the client opens several connections. Prints one JSON summary line on
// stdout; exits 1 when anything differs.

"use strict";

const fs = require("node:fs");
const v8 = require("node:v8");
const { openKv, KvU64 } = require("@deno/kv");
const checks = require("./kv_checks.cjs");

/** A V8 value this Node could not decode. */
class Opaque {
  constructor(bytes, error) {
    this.hex = checks.hex(bytes);
    this.error = error;
  }
}

async function main() {
  const [url, expectedPath, parallel] = process.argv.slice(2);
  const model = new checks.Model(
    JSON.parse(fs.readFileSync(expectedPath, "utf8")),
  );
  const report = new checks.Report();
  const kv = await openKv(url, {
    accessToken: process.env.DENO_KV_ACCESS_TOKEN,
    encodeV8: v8.serialize,
    decodeV8: (bytes) => {
      try {
        return v8.deserialize(bytes);
      } catch (e) {
        return new Opaque(bytes, String(e));
      }
    },
  });
  const opts = {
    u64Class: KvU64,
    opaque: (v) => v instanceof Opaque,
    parallel: Number(parallel ?? 1),
  };
  await checks.readChecks(kv, model, report, opts);
  const writes = await checks.writeAttempts(kv, model);
  const first = model.entries[0];
  checks.compareMaybe(
    report,
    model,
    "get after writes",
    await kv.get(first.key),
    first,
    opts,
  );
  kv.close();
  console.log(JSON.stringify({
    keys: model.entries.length,
    counts: report.counts,
    writes,
    failure_count: report.failureCount,
    failures: report.failures,
  }));
  process.exit(report.failureCount === 0 ? 0 : 1);
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : e);
  process.exit(1);
});
