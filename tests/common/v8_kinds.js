// Writes one value of every kind `kvreplica export` decodes into a local
// Deno KV file (Deno.args[0]) with the real Deno CLI, and prints, as one
// JSON line, what each key and value must decode to in export's documented
// form, computed here from the JS values themselves.

const kv = await Deno.openKv(Deno.args[0]);
const hex = (u8) => Array.from(u8, (b) => b.toString(16).padStart(2, "0")).join("");
const viewHex = (v) => hex(new Uint8Array(v.buffer, v.byteOffset, v.byteLength));
const date = (d) => ({
  $type: "date",
  ms: isNaN(d.getTime()) ? null : d.getTime(),
  iso: isNaN(d.getTime()) ? null : d.toISOString(),
});
const entries = [];
const put = async (name, value, expected) => {
  await kv.set(["kind", name], value);
  entries.push({ key: ["kind", name], value: expected });
};

await put("string", "héllo 😀 \"q\"\n", "héllo 😀 \"q\"\n");
await put("empty string", "", "");
await put("int", 42, 42);
await put("negative", -7, -7);
await put("double", 1.5, 1.5);
await put("big double", 1e21, 1e21);
await put("2^53", 2 ** 53, 2 ** 53);
await put("null", null, null);
await put("true", true, true);
await put("false", false, false);
await put("object", { a: 1, b: [1, "x", null], c: { d: "e" } }, { a: 1, b: [1, "x", null], c: { d: "e" } });
await put("array", [1, "two", [3]], [1, "two", [3]]);
await put("undefined", undefined, { $type: "undefined" });
await put("in object undefined", { u: undefined }, { u: { $type: "undefined" } });
await put("NaN", NaN, { $type: "number", value: "NaN" });
await put("Infinity", Infinity, { $type: "number", value: "Infinity" });
await put("-Infinity", -Infinity, { $type: "number", value: "-Infinity" });
await put("-0", -0, { $type: "number", value: "-0" });
await put("bigint", 12345678901234567890n, { $type: "bigint", value: "12345678901234567890" });
await put("negative bigint", -5n, { $type: "bigint", value: "-5" });
const d = new Date(1700000000123);
await put("date", d, date(d));
const bad = new Date(NaN);
await put("invalid date", bad, date(bad));
await put("map", new Map([["a", 1], [2, "b"], [{ k: 1 }, [true]]]), {
  $type: "map",
  entries: [["a", 1], [2, "b"], [{ k: 1 }, [true]]],
});
await put("set", new Set([1, "x", 2n]), {
  $type: "set",
  values: [1, "x", { $type: "bigint", value: "2" }],
});
const re = /a+\/b/gimsuy;
await put("regexp", re, { $type: "regexp", source: re.source, flags: re.flags });
const u8 = new Uint8Array([1, 2, 255]);
await put("top-level Uint8Array", u8, { $type: "bytes", hex: hex(u8) });
await put("u64", new Deno.KvU64(18446744073709551615n), { $type: "u64", value: "18446744073709551615" });
const views = {
  Uint8Array: new Uint8Array([0, 9, 250]),
  Int8Array: new Int8Array([-1, 2]),
  Uint8ClampedArray: new Uint8ClampedArray([300, 5]),
  Int16Array: new Int16Array([1, -2]),
  Uint16Array: new Uint16Array([65535]),
  Int32Array: new Int32Array([-100000]),
  Uint32Array: new Uint32Array([4000000000]),
  Float32Array: new Float32Array([1.5, -0]),
  Float64Array: new Float64Array([Math.PI]),
  BigInt64Array: new BigInt64Array([-3n]),
  BigUint64Array: new BigUint64Array([3n]),
  DataView: new DataView(new Uint8Array([7, 8, 9]).buffer),
};
for (const [kind, view] of Object.entries(views)) {
  await put(kind, { view }, { view: { $type: "typedarray", kind, hex: viewHex(view) } });
}
const whole = new Uint8Array([1, 2, 3, 4, 5, 6]);
const part = new Uint16Array(whole.buffer, 2, 2);
await put("view of part of a buffer", { part }, {
  part: { $type: "typedarray", kind: "Uint16Array", hex: viewHex(part) },
});
const ab = new Uint8Array([4, 5, 6]).buffer;
await put("ArrayBuffer", ab, { $type: "arraybuffer", hex: hex(new Uint8Array(ab)) });
await put("holey array", [1, , 3], { $type: "sparse", length: 3, properties: [["0", 1], ["2", 3]] });
const sparse = [];
sparse[1000] = "x";
await put("sparse array", sparse, { $type: "sparse", length: 1001, properties: [["1000", "x"]] });
const extra = [1];
extra.foo = "bar";
await put("array with a property", extra, {
  $type: "sparse",
  length: 1,
  properties: [["0", 1], ["foo", "bar"]],
});
const shared = { x: 1 };
await put("shared", { a: shared, b: shared }, {
  a: { $type: "shared", id: 0, value: { x: 1 } },
  b: { $type: "ref", id: 0 },
});
const cycle = { name: "c" };
cycle.self = cycle;
await put("circular", cycle, {
  $type: "shared",
  id: 0,
  value: { name: "c", self: { $type: "ref", id: 0 } },
});
const err = new TypeError("bad thing", { cause: "why" });
await put("error", err, {
  $type: "error",
  name: "TypeError",
  message: "bad thing",
  stack: err.stack,
  cause: "why",
});
const plain = new Error("plain");
await put("plain error", plain, { $type: "error", name: "Error", message: "plain", stack: plain.stack });
const range = new RangeError("r");
await put("range error", range, { $type: "error", name: "RangeError", message: "r", stack: range.stack });
await put("boxed number", new Number(3), { $type: "boxed", value: 3 });
await put("boxed string", new String("s"), { $type: "boxed", value: "s" });
await put("boxed boolean", new Boolean(false), { $type: "boxed", value: false });
await put("boxed bigint", Object(5n), { $type: "boxed", value: { $type: "bigint", value: "5" } });
await put("object with a $type property", { $type: "x", a: 1 }, {
  $type: "object",
  properties: [["$type", "x"], ["a", 1]],
});
await put("lone surrogate", "\ud800x", { $type: "string", utf16: [0xd800, 0x78] });

// Keys of every part type, and the JSON they decode to.
const keyParts = [
  [["k", 1n, -300n, 0n, 2n ** 70n], ["k", { bigint: "1" }, { bigint: "-300" }, { bigint: "0" }, { bigint: (2n ** 70n).toString() }]],
  [["k", 2.5, -1e300, 0, NaN, Infinity], ["k", 2.5, -1e300, 0, { number: "NaN" }, { number: "Infinity" }]],
  [["k", true, false, new Uint8Array([0, 1, 255])], ["k", true, false, { bytes: "0001ff" }]],
  [["k", "s\u0000x", "日本", ""], ["k", "s\u0000x", "日本", ""]],
];
for (const [key, json] of keyParts) {
  await kv.set(key, "key");
  entries.push({ key: json, value: "key" });
}
kv.close();
console.log(JSON.stringify({ entries }));
