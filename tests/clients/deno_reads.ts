// Reads a database with the Deno CLI's own KV client and compares every
// answer with a fixture's expected final state.
//
//   deno run --unstable-kv -A deno_reads.ts <target> <expected.json> <remote|local>
//
// <target> is a KV Connect URL (token from DENO_KV_ACCESS_TOKEN) or a
// SQLite file path. `remote` also tries writes, which a replica must refuse.
// Prints one JSON summary line on stdout; exits 1 when anything differs.

import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const checks = require("./kv_checks.cjs");

const [target, expectedPath, mode] = Deno.args;
if (!target || !expectedPath || !["remote", "local"].includes(mode)) {
  console.error(
    "usage: deno_reads.ts <url|path> <expected.json> <remote|local>",
  );
  Deno.exit(2);
}

const model = new checks.Model(
  JSON.parse(await Deno.readTextFile(expectedPath)),
);
const report = new checks.Report();
const kv = await Deno.openKv(target);
// A SQLite file read by Deno's own backend shows versionstamps without
// their batch seq (see kv_checks.cjs).
const opts = { u64Class: Deno.KvU64, versionOnly: mode === "local" };

await checks.readChecks(kv, model, report, opts);

let writes = null;
if (mode === "remote") {
  writes = await checks.writeAttempts(kv, model);
  // A refused write must not leave the client unusable.
  const first = model.entries[0];
  checks.compareMaybe(
    report,
    model,
    "get after writes",
    await kv.get(first.key),
    first,
    opts,
  );
}

kv.close();
console.log(JSON.stringify({
  keys: model.entries.length,
  counts: report.counts,
  writes,
  failure_count: report.failureCount,
  failures: report.failures,
}));
Deno.exit(report.failureCount === 0 ? 0 : 1);
