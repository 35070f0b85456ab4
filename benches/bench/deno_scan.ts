// The Deno CLI's own KV client scanning a database: `scan.rs` runs it
// against kvreplica and denokv over KV Connect and against a local copy of
// the replica file.
//
//   deno run --unstable-kv -A deno_scan.ts <url|path> <runs>
//
// Each run: a full scan, `kv.list({ prefix: [] }, { batchSize: 1000 })`,
// then 200 sequential `getMany` of 10 keys spread over the scanned keys.
// Prints one JSON line: {"scans": [{ms, entries}], "getmany": [{ms, found}]}.

const [target, runsArg] = Deno.args;
const runs = Number(runsArg ?? "3");
const kv = await Deno.openKv(target);
// The metadata exchange and the connection, outside the timings.
await kv.get(["bench-warm-up"]);

const scans = [];
let keys: Deno.KvKey[] = [];
for (let r = 0; r < runs; r++) {
  const collected: Deno.KvKey[] = [];
  const t = performance.now();
  let entries = 0;
  for await (const e of kv.list({ prefix: [] }, { batchSize: 1000 })) {
    entries++;
    collected.push(e.key);
  }
  scans.push({ ms: performance.now() - t, entries });
  keys = collected;
}

const getmany = [];
for (let r = 0; r < runs; r++) {
  const t = performance.now();
  let found = 0;
  for (let i = 0; i < 200; i++) {
    const batch = [];
    for (let j = 0; j < 10; j++) {
      batch.push(keys[((i * 10 + j) * 7919 + r) % keys.length]);
    }
    const got = await kv.getMany(batch);
    found += got.filter((e) => e.versionstamp !== null).length;
  }
  getmany.push({ ms: performance.now() - t, found });
}
kv.close();
console.log(JSON.stringify({ scans, getmany }));
