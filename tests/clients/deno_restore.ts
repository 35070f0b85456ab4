// The Deno CLI's view of a database, for the restore tests.
//
//   deno run --unstable-kv -A deno_restore.ts <url|path> list <prefix-json>
//   deno run --unstable-kv -A deno_restore.ts <url> set <key-json> <string>
//   deno run --unstable-kv -A deno_restore.ts <url> sum <key-json> <n>
//
// `list` prints one JSON array of [key, value] pairs (values in a tagged
// form JSON can hold: bigint, KvU64, bytes); `set` writes a string, `sum`
// adds n to a KvU64 (the key holding n when absent).

const [target, command, a, b] = Deno.args;
const kv = await Deno.openKv(target);
const tagged = (_k: string, x: unknown) => {
  if (typeof x === "bigint") return { bigint: x.toString() };
  if (x instanceof Deno.KvU64) return { u64: x.value.toString() };
  if (x instanceof Uint8Array) return { bytes: Array.from(x) };
  return x;
};
if (command === "list") {
  const out = [];
  for await (const e of kv.list({ prefix: JSON.parse(a) })) {
    out.push([e.key, e.value]);
  }
  console.log(JSON.stringify(out, tagged));
} else if (command === "set") {
  const r = await kv.set(JSON.parse(a), b);
  console.log(JSON.stringify({ ok: r.ok }));
} else if (command === "sum") {
  const r = await kv.atomic().sum(JSON.parse(a), BigInt(b)).commit();
  console.log(JSON.stringify({ ok: r.ok }));
} else {
  console.error("usage: deno_restore.ts <url|path> list <prefix> | set <key> <value> | sum <key> <n>");
  Deno.exit(2);
}
kv.close();
