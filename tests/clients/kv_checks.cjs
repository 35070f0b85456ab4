// Checks shared by the KV Connect client scripts (the Deno CLI through
// `createRequire`, and `@deno/kv` on Node): the fixtures' expected-*.json
// model, and read checks written against the `Deno.Kv` API, which both
// clients implement. Keeping one copy means both clients are held to exactly
// the same expectations.
//
// Every check records what differs instead of throwing, so one run reports
// all mismatches, and counts what it compared, so the caller can tell a
// vacuous pass (nothing compared) from a real one.

"use strict";

function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function unhex(h) {
  const out = new Uint8Array(h.length / 2);
  for (let i = 0; i < out.length; i++) {
    out[i] = parseInt(h.slice(2 * i, 2 * i + 2), 16);
  }
  return out;
}

/** A key part as the fixtures write it: `{s}`, `{i}`, `{n}`, `{b}` or `{bool}`. */
function keyFromParts(parts) {
  return parts.map((p) => {
    if ("s" in p) return p.s;
    if ("i" in p) return BigInt(p.i);
    if ("n" in p) return p.n;
    if ("b" in p) return unhex(p.b);
    if ("bool" in p) return p.bool;
    throw new Error(`unknown key part ${JSON.stringify(p)}`);
  });
}

/** A stable text form of one key part, from a client key or a fixture part. */
function partId(p) {
  if (typeof p === "string") return `s:${p}`;
  if (typeof p === "bigint") return `i:${p}`;
  if (typeof p === "number") return `n:${Object.is(p, -0) ? "-0" : String(p)}`;
  if (typeof p === "boolean") return `bool:${p}`;
  if (p instanceof Uint8Array) return `b:${hex(p)}`;
  return partId(keyFromParts([p])[0]);
}

function keyId(parts) {
  return JSON.stringify(parts.map(partId));
}

/**
 * The expected final state of a fixture as entries sorted by encoded key
 * (hex strings of whole bytes sort like the bytes), plus a way back from a
 * client's decoded key to the encoded one.
 */
class Model {
  constructor(exp) {
    this.exp = exp;
    this.hexById = new Map();
    for (const [h, parts] of Object.entries(exp.keys)) {
      this.hexById.set(keyId(parts), h);
    }
    this.entries = Object.keys(exp.final_state)
      .sort()
      .map((h) => this.entry(h));
  }

  /** The expected entry of `h` in the final state, or null. */
  entry(h) {
    const st = this.exp.final_state[h];
    const parts = this.exp.keys[h];
    if (!parts) throw new Error(`key ${h} has no decoded parts in the fixture`);
    return {
      hex: h,
      parts,
      key: keyFromParts(parts),
      value: st ? this.exp.values[st[0]] : null,
      versionstamp: st ? st[1] : null,
    };
  }

  hexOf(key) {
    return this.hexById.get(keyId(key)) ?? `<not a fixture key: ${keyId(key)}>`;
  }

  /** Entries strictly below `prefix` (a list excludes the prefix itself). */
  under(prefix) {
    const ids = prefix.map(partId);
    return this.entries.filter(
      (e) =>
        e.parts.length > ids.length &&
        ids.every((id, i) => id === partId(e.parts[i])),
    );
  }
}

/** Collects mismatches (the first few in full) and counts of what was compared. */
class Report {
  constructor() {
    this.failures = [];
    this.failureCount = 0;
    this.counts = {};
  }

  fail(msg) {
    this.failureCount++;
    if (this.failures.length < 40) this.failures.push(msg);
  }

  count(what, n = 1) {
    this.counts[what] = (this.counts[what] ?? 0) + n;
  }
}

/**
 * A client value in the fixtures' JSON form. `u64Class` is the client's
 * KvU64; `opaque` tells values the client could not decode.
 */
function valueJson(v, u64Class) {
  if (v instanceof u64Class) return { $u64: v.value.toString() };
  if (v instanceof Uint8Array) return { $bytes: hex(v) };
  if (typeof v === "bigint") return { $bigint: v.toString() };
  if (v === undefined || v === null) return null;
  if (Array.isArray(v)) return v.map((x) => valueJson(x, u64Class));
  if (typeof v === "object") {
    const out = {};
    for (const [k, x] of Object.entries(v)) out[k] = valueJson(x, u64Class);
    return out;
  }
  return v;
}

/** Deep equality; numbers may differ in the last bits like the Rust check allows. */
function same(a, b) {
  if (typeof a === "number" && typeof b === "number") {
    return a === b ||
      Math.abs(a - b) <=
        Number.EPSILON * 4 * Math.max(Math.abs(a), Math.abs(b));
  }
  if (Array.isArray(a) || Array.isArray(b)) {
    return Array.isArray(a) && Array.isArray(b) && a.length === b.length &&
      a.every((x, i) => same(x, b[i]));
  }
  if (a && b && typeof a === "object" && typeof b === "object") {
    const ka = Object.keys(a);
    return ka.length === Object.keys(b).length &&
      ka.every((k) => k in b && same(a[k], b[k]));
  }
  return a === b;
}

function kindOf(expected) {
  if (expected && typeof expected === "object" && "$u64" in expected) {
    return "u64";
  }
  if (expected && typeof expected === "object" && "$bytes" in expected) {
    return "bytes";
  }
  return "v8";
}

/**
 * Checks a client's value against the expected JSON. With `opts.opaque`
 * (a predicate), V8 values the client could not decode only count as such:
 * their key and versionstamp are still checked by the caller.
 */
function checkValue(report, label, got, expected, opts) {
  const kind = kindOf(expected);
  if (kind === "v8" && opts.opaque && opts.opaque(got)) {
    report.count("v8_undecodable");
    return;
  }
  report.count(`value_${kind}`);
  const json = valueJson(got, opts.u64Class);
  if (!same(json, expected)) {
    report.fail(
      `${label}: value ${JSON.stringify(json)}, want ${
        JSON.stringify(expected)
      }`,
    );
  }
}

/**
 * Compares a versionstamp (20 hex digits). With `opts.versionOnly`, only
 * the 8-byte commit version counts and the 2-byte batch seq must read as
 * zero: Deno's own SQLite backend builds versionstamps from the `version`
 * column alone and ignores `seq`, so that is what a file opened with
 * `Deno.openKv` shows.
 */
function checkVersionstamp(report, label, got, want, opts) {
  if (opts.versionOnly) {
    if (want.slice(16) !== "0000") report.count("batch_seq_masked");
    want = `${want.slice(0, 16)}0000`;
  }
  if (got !== want) report.fail(`${label}: versionstamp ${got}, want ${want}`);
}

/** Compares the entries a client returned with the expected ones, in order. */
function compareEntries(report, model, label, got, want, opts) {
  report.count("lists");
  report.count("listed_entries", got.length);
  const n = Math.min(got.length, want.length);
  for (let i = 0; i < n; i++) {
    const g = got[i];
    const w = want[i];
    const h = model.hexOf(g.key);
    if (h !== w.hex) {
      report.fail(`${label}: entry ${i} is key ${h}, want ${w.hex}`);
      return;
    }
    checkVersionstamp(
      report,
      `${label}: key ${h}`,
      g.versionstamp,
      w.versionstamp,
      opts,
    );
    checkValue(report, `${label}: key ${h}`, g.value, w.value, opts);
  }
  if (got.length !== want.length) {
    report.fail(
      `${label}: ${got.length} entries, want ${want.length}` +
        (got.length > want.length
          ? ` (first extra: ${model.hexOf(got[n].key)})`
          : ` (first missing: ${want[n].hex})`),
    );
  }
}

/** Compares one `get` result (a `KvEntryMaybe`) with an expected entry. */
function compareMaybe(report, model, label, got, want, opts) {
  report.count("point_reads");
  const h = want.hex;
  if (model.hexOf(got.key) !== h) {
    report.fail(
      `${label}: answer for key ${model.hexOf(got.key)}, asked for ${h}`,
    );
    return;
  }
  if (want.versionstamp === null) {
    report.count("absent_keys");
    if (got.value !== null || got.versionstamp !== null) {
      report.fail(
        `${label}: key ${h} should be absent, got versionstamp ${got.versionstamp}`,
      );
    }
    return;
  }
  checkVersionstamp(
    report,
    `${label}: key ${h}`,
    got.versionstamp,
    want.versionstamp,
    opts,
  );
  checkValue(report, `${label}: key ${h}`, got.value, want.value, opts);
}

async function collect(iter) {
  const out = [];
  for await (const e of iter) out.push(e);
  return out;
}

/** Pages through `selector` with `limit` and the returned cursors. */
async function paginate(kv, selector, page, reverse) {
  const out = [];
  let cursor;
  let pages = 0;
  for (;;) {
    const iter = kv.list(selector, { limit: page, cursor, reverse });
    const batch = await collect(iter);
    out.push(...batch);
    pages++;
    if (batch.length < page || pages > 100000) break;
    cursor = iter.cursor;
  }
  return { entries: out, pages };
}

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`${what}: no answer within ${ms} ms`)),
      ms,
    );
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Keys that exist in no fixture: reads of them must come back empty. */
function missingEntries(model) {
  const keys = [
    ["kvreplica-test-missing"],
    ["kvreplica-test-missing", 1n, 2.5, true, new Uint8Array([0, 255])],
    [...model.entries[0].key, "kvreplica-test-missing"],
  ];
  return keys.map((key) => ({
    hex: model.hexOf(key),
    key,
    value: null,
    versionstamp: null,
  }));
}

/**
 * Every read the `Deno.Kv` API offers, each compared with the fixture's
 * final state: full lists, prefixes, start/end ranges, limit, reverse,
 * cursor pagination, small batches, get and getMany (present and absent
 * keys). `opts`: `u64Class`, `opaque`, `parallel` (getMany calls in flight
 * at once, so an HTTP/1.1 client opens several connections).
 */
async function readChecks(kv, model, report, opts) {
  const all = model.entries;
  const n = all.length;
  if (n < 20) throw new Error(`fixture too small (${n} keys) for the checks`);
  const cmp = (label, got, want) =>
    compareEntries(report, model, label, got, want, opts);
  const rev = (a) => [...a].reverse();

  cmp("list prefix []", await collect(kv.list({ prefix: [] })), all);
  cmp(
    "list prefix [] batchSize 1000 eventual",
    await collect(
      kv.list({ prefix: [] }, { batchSize: 1000, consistency: "eventual" }),
    ),
    all,
  );
  cmp(
    "list prefix [] reverse",
    await collect(kv.list({ prefix: [] }, { reverse: true })),
    rev(all),
  );

  // Prefixes: the first parts and two-part prefixes with the most keys
  // below them, plus a few with a single key.
  const candidates = new Map();
  for (const e of all) {
    for (const len of [1, 2]) {
      if (e.parts.length > len) {
        candidates.set(keyId(e.parts.slice(0, len)), e.parts.slice(0, len));
      }
    }
  }
  const sized = [...candidates.values()].map((parts) => ({
    parts,
    want: model.under(parts),
  }));
  sized.sort((x, y) => y.want.length - x.want.length);
  const prefixes = [...sized.slice(0, 24), ...sized.slice(-4)];
  for (const { parts, want } of prefixes) {
    const prefix = keyFromParts(parts);
    const label = `prefix ${keyId(parts)}`;
    report.count("prefixes");
    cmp(`list ${label}`, await collect(kv.list({ prefix })), want);
    cmp(
      `list ${label} reverse limit 3`,
      await collect(kv.list({ prefix }, { reverse: true, limit: 3 })),
      rev(want).slice(0, 3),
    );
    if (want.length >= 3) {
      const mid = Math.floor(want.length / 2);
      cmp(
        `list ${label} start`,
        await collect(kv.list({ prefix, start: want[mid].key })),
        want.slice(mid),
      );
      cmp(
        `list ${label} end`,
        await collect(kv.list({ prefix, end: want[mid].key })),
        want.slice(0, mid),
      );
      cmp(
        `list ${label} start reverse`,
        await collect(
          kv.list({ prefix, start: want[mid].key }, { reverse: true }),
        ),
        rev(want.slice(mid)),
      );
    }
  }

  // start/end ranges between fixture keys (start inclusive, end exclusive).
  for (
    const [a, b] of [[0, 1], [Math.floor(n / 7), Math.floor(n / 3)], [
      Math.floor(n / 2),
      n - 1,
    ], [5, 5]]
  ) {
    const sel = { start: all[a].key, end: all[b].key };
    const want = all.slice(a, b);
    report.count("ranges");
    cmp(`range [${a},${b})`, await collect(kv.list(sel)), want);
    cmp(
      `range [${a},${b}) reverse`,
      await collect(kv.list(sel, { reverse: true })),
      rev(want),
    );
    cmp(
      `range [${a},${b}) limit 4`,
      await collect(kv.list(sel, { limit: 4 })),
      want.slice(0, 4),
    );
  }
  const wide = {
    start: all[Math.floor(n / 5)].key,
    end: all[Math.floor(n / 5) + 150].key,
  };
  cmp(
    "range of 150, batchSize 7",
    await collect(kv.list(wide, { batchSize: 7 })),
    all.slice(Math.floor(n / 5), Math.floor(n / 5) + 150),
  );

  // limit and reverse over everything.
  for (const limit of [1, 25, 999, n + 5]) {
    cmp(
      `limit ${limit}`,
      await collect(kv.list({ prefix: [] }, { limit })),
      all.slice(0, limit),
    );
    cmp(
      `limit ${limit} reverse`,
      await collect(kv.list({ prefix: [] }, { limit, reverse: true })),
      rev(all).slice(0, limit),
    );
  }

  // Cursor pagination, both directions; the pages must join up exactly.
  for (const reverse of [false, true]) {
    const { entries, pages } = await paginate(kv, { prefix: [] }, 97, reverse);
    report.count("cursor_pages", pages);
    cmp(
      `cursor pages of 97${reverse ? " reverse" : ""}`,
      entries,
      reverse ? rev(all) : all,
    );
  }
  const big = prefixes[0];
  if (big.want.length > 13) {
    const { entries, pages } = await paginate(
      kv,
      { prefix: keyFromParts(big.parts) },
      13,
      false,
    );
    report.count("cursor_pages", pages);
    cmp(`cursor pages of 13 under ${keyId(big.parts)}`, entries, big.want);
  }

  // get: every third key, the absent ones, and both consistency levels.
  const missing = missingEntries(model);
  for (let i = 0; i < n; i += 3) {
    compareMaybe(report, model, "get", await kv.get(all[i].key), all[i], opts);
  }
  for (const m of missing) {
    compareMaybe(report, model, "get absent", await kv.get(m.key), m, opts);
    compareMaybe(
      report,
      model,
      "get absent eventual",
      await kv.get(m.key, { consistency: "eventual" }),
      m,
      opts,
    );
  }
  compareMaybe(
    report,
    model,
    "get eventual",
    await kv.get(all[1].key, { consistency: "eventual" }),
    all[1],
    opts,
  );

  // getMany: every key, ten at a time, with an absent key in some batches.
  const batches = [];
  for (let i = 0, b = 0; i < n; i += 9, b++) {
    const batch = all.slice(i, i + 9);
    batch.splice(
      b % 9,
      0,
      b % 3 === 0 ? missing[b % missing.length] : all[(i + 500) % n],
    );
    batches.push(batch);
  }
  const parallel = opts.parallel ?? 1;
  for (let i = 0; i < batches.length; i += parallel) {
    const group = batches.slice(i, i + parallel);
    const answers = await Promise.all(
      group.map((b) => kv.getMany(b.map((e) => e.key))),
    );
    group.forEach((batch, j) => {
      report.count("get_many_calls");
      const got = answers[j];
      if (got.length !== batch.length) {
        report.fail(`getMany: ${got.length} answers for ${batch.length} keys`);
        return;
      }
      batch.forEach((want, k) =>
        compareMaybe(report, model, "getMany", got[k], want, opts)
      );
    });
  }
}

/**
 * Tries every kind of write; a read-only replica must refuse each with an
 * error. Returns the error messages (or what happened instead).
 */
async function writeAttempts(kv, model) {
  const out = {};
  const attempt = async (name, op) => {
    try {
      const r = await withTimeout(op(), 20000, name);
      out[name] = `no error: ${
        JSON.stringify(r, (_, v) => (typeof v === "bigint" ? String(v) : v))
      }`;
    } catch (e) {
      out[name] = String(e && e.message ? e.message : e);
    }
  };
  await attempt("set", () => kv.set(["kvreplica-test-write"], 1));
  await attempt("delete", () => kv.delete(model.entries[0].key));
  await attempt(
    "atomic",
    () =>
      kv.atomic().check({ key: model.entries[0].key, versionstamp: null }).set([
        "kvreplica-test-write",
      ], "x").commit(),
  );
  return out;
}

/**
 * Watches the keys `hexes` while the server follows new commits: the first
 * event must equal `model0`'s final state for every key, then `ready()` is
 * awaited (the caller signals that the later objects may be added), then
 * events are read until one equals `model1`'s final state. Returns a
 * summary: `stage` ("done", "initial" or "error"), the number of events,
 * each event's versionstamps and the mismatches.
 */
async function watchChecks(kv, model0, model1, hexes, ready, deadline, opts) {
  // The later fixture knows every key of the earlier one and the new ones.
  const wants0 = hexes.map((h) =>
    model0.exp.keys[h]
      ? model0.entry(h)
      : { ...model1.entry(h), value: null, versionstamp: null }
  );
  const wants1 = hexes.map((h) => model1.entry(h));
  const diff = (event, wants) => {
    if (event.length !== wants.length) {
      return [`${event.length} entries for ${wants.length} keys`];
    }
    const report = new Report();
    wants.forEach((w, i) =>
      compareMaybe(report, model1, "watch", event[i], w, opts)
    );
    return report.failures;
  };
  const reader = kv.watch(wants1.map((w) => w.key)).getReader();
  const versionstamps = [];
  const next = async () => {
    const left = Math.max(deadline - Date.now(), 1);
    const r = await withTimeout(reader.read(), left, "watch event");
    if (r.done) throw new Error("the watch stream ended");
    versionstamps.push(r.value.map((e) => e.versionstamp));
    return r.value;
  };
  const summary = (stage, failures) => ({
    keys: hexes,
    stage,
    events: versionstamps.length,
    versionstamps,
    failures,
  });
  let last = [];
  try {
    const initial = diff(await next(), wants0);
    if (initial.length > 0) return summary("initial", initial);
    await ready();
    for (;;) {
      last = diff(await next(), wants1);
      if (last.length === 0) return summary("done", []);
    }
  } catch (e) {
    return summary("error", [String(e), ...last]);
  } finally {
    reader.cancel().catch(() => {});
  }
}

module.exports = {
  watchChecks,
  hex,
  unhex,
  keyFromParts,
  keyId,
  Model,
  Report,
  valueJson,
  same,
  checkValue,
  compareMaybe,
  readChecks,
  writeAttempts,
  withTimeout,
};
