// Watches keys with the Deno CLI's KV client while the replica follows new
// commits.
//
//   deno run --unstable-kv -A deno_watch.ts <url> <expected-0.json> <expected-1.json> \
//       '<["key hex", ...]>' <ready file> <timeout ms>
//
// The first event must equal expected-0's final state for every key; the
// script then creates <ready file> (the test adds the later log objects to
// the bucket only after that) and waits for an event equal to expected-1's
// final state. Prints one JSON summary line; exits 1 on a mismatch or when
// the deadline passes.

import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const checks = require("./kv_checks.cjs");

const [url, exp0Path, exp1Path, keysJson, readyFile, timeoutMs] = Deno.args;
const deadline = Date.now() + Number(timeoutMs);
const model0 = new checks.Model(JSON.parse(await Deno.readTextFile(exp0Path)));
const model1 = new checks.Model(JSON.parse(await Deno.readTextFile(exp1Path)));

const kv = await Deno.openKv(url);
const summary = await checks.watchChecks(
  kv,
  model0,
  model1,
  JSON.parse(keysJson),
  () => Deno.writeTextFile(readyFile, "ready"),
  deadline,
  { u64Class: Deno.KvU64 },
);
kv.close();
console.log(JSON.stringify(summary));
Deno.exit(summary.stage === "done" ? 0 : 1);
