// Protocol Buffers in the browser: the schema is the one the service serves
// (/protos/duckcast.proto), parsed by the vendored protobuf.js (static/vendor/README).
//
// protobuf.js's own Type.decode compiles a decoder with `new Function`, which this page's CSP
// refuses (no 'unsafe-eval'). So decoding walks the reflected fields with protobuf.js's Reader:
// the schema and the wire reading are the library's; this file only dispatches on field types.

let loading = null;

function loadLibrary() {
  if (globalThis.protobuf) return Promise.resolve(globalThis.protobuf);
  return new Promise((resolve, reject) => {
    const script = document.createElement("script");
    script.src = "/static/vendor/protobuf.min.js";
    script.onload = () => resolve(globalThis.protobuf);
    script.onerror = () => reject(new Error("could not load protobuf.js"));
    document.head.append(script);
  });
}

// The schema, parsed once per page: {protobuf, root}.
export function schema() {
  loading ??= loadLibrary().then(async (protobuf) => {
    const root = await new protobuf.Root().load("/protos/duckcast.proto", { keepCase: true });
    root.resolveAll();
    return { protobuf, root };
  });
  return loading;
}

const PACKABLE = new Set([
  "double",
  "float",
  "int32",
  "uint32",
  "sint32",
  "fixed32",
  "sfixed32",
  "int64",
  "uint64",
  "sint64",
  "fixed64",
  "sfixed64",
  "bool",
]);

// Decodes one message of reflected type `type` into a plain object. Absent scalars take their
// proto3 defaults, enums come out as their names, int64 as JS numbers (exact below 2^53).
// Map fields are not handled: duckcast.proto has none.
export function decode(protobuf, type, bytes) {
  return readMessage(protobuf, type, protobuf.Reader.create(bytes), undefined);
}

function readMessage(protobuf, type, reader, length) {
  const end = length === undefined ? reader.len : reader.pos + length;
  const out = {};
  for (const field of type.fieldsArray) {
    if (field.repeated) out[field.name] = [];
    else if (!(field.resolvedType instanceof protobuf.Type))
      out[field.name] = defaultOf(field, protobuf);
  }
  while (reader.pos < end) {
    const tag = reader.uint32();
    const field = type.fieldsById[tag >>> 3];
    if (!field) {
      reader.skipType(tag & 7, 0, tag >>> 3);
      continue;
    }
    if (field.repeated && (tag & 7) === 2 && PACKABLE.has(field.type)) {
      const stop = reader.uint32() + reader.pos;
      while (reader.pos < stop) out[field.name].push(readValue(protobuf, field, reader));
    } else if (field.repeated) {
      out[field.name].push(readValue(protobuf, field, reader));
    } else {
      out[field.name] = readValue(protobuf, field, reader);
    }
  }
  return out;
}

function readValue(protobuf, field, reader) {
  const resolved = field.resolvedType;
  if (resolved instanceof protobuf.Type)
    return readMessage(protobuf, resolved, reader, reader.uint32());
  if (resolved instanceof protobuf.Enum) {
    const number = reader.int32();
    return resolved.valuesById[number] ?? number;
  }
  return reader[field.type]();
}

function defaultOf(field, protobuf) {
  if (field.resolvedType instanceof protobuf.Enum) return field.resolvedType.valuesById[0] ?? 0;
  if (field.type === "string") return "";
  if (field.type === "bool") return false;
  if (field.type === "bytes") return new Uint8Array();
  return 0;
}

// google.protobuf.Timestamp as a Date.
export function timestamp(ts) {
  return ts ? new Date(ts.seconds * 1000 + Math.floor(ts.nanos / 1e6)) : null;
}
