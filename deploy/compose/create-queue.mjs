// The one-shot `create-queue` service of deploy/compose/compose.yaml: creates QUEUE_NAME in
// Azurite and puts each command-line argument on it as one message, then exits (0 on success).
//
//   QUEUE_NAME=demo AZURE_STORAGE_QUEUE_ENDPOINT=http://127.0.0.1:10001/devstoreaccount1 \
//     node deploy/compose/create-queue.mjs '{"order": 1}' 'hello'
//
// The sidecar never creates the queue it consumes (in production that is infrastructure's
// job), so the demo does it here. Plain Node.js 18+ (fetch, crypto) and nothing from npm, so it
// runs in the stock node image: the Queue service REST API with Shared Key signing for
// Azurite's well-known development account (published by Microsoft, not a secret). It waits up
// to 60 s for Azurite to accept connections. tests/compose.sh runs this file against a real
// Azurite.
import { createHmac } from "node:crypto";

const ACCOUNT = "devstoreaccount1";
const KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
// A service version every Azurite 3.x release knows, so --skipApiVersionCheck is not needed here.
const VERSION = "2021-12-02";
const WAIT_MS = 60_000;

function required(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`create-queue: ${name} is not set`);
    process.exit(2);
  }
  return value;
}

// Shared Key: HMAC-SHA256 over the verb, the standard headers, the x-ms-* headers and the
// resource (account + path, then the query parameters sorted by name).
function authorization(method, url, headers) {
  const standard = ["content-encoding", "content-language", "content-length", "content-md5",
    "content-type", "date", "if-modified-since", "if-match", "if-none-match",
    "if-unmodified-since", "range"].map((name) => (name === "content-length" && headers[name] === "0" ? "" : headers[name] ?? ""));
  const msHeaders = Object.keys(headers).filter((name) => name.startsWith("x-ms-")).sort()
    .map((name) => `${name}:${headers[name]}\n`).join("");
  let resource = `/${ACCOUNT}${url.pathname}`;
  for (const [name, value] of [...url.searchParams].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    resource += `\n${name.toLowerCase()}:${value}`;
  }
  const stringToSign = [method, ...standard].join("\n") + "\n" + msHeaders + resource;
  const signature = createHmac("sha256", Buffer.from(KEY, "base64")).update(stringToSign, "utf8").digest("base64");
  return `SharedKey ${ACCOUNT}:${signature}`;
}

async function call(method, url, body = "") {
  const headers = {
    "content-length": String(Buffer.byteLength(body)),
    "x-ms-date": new Date().toUTCString(),
    "x-ms-version": VERSION,
  };
  if (body) headers["content-type"] = "application/xml; charset=utf-8";
  headers.authorization = authorization(method, url, headers);
  const response = await fetch(url, { method, headers, body: body || undefined });
  const text = await response.text();
  if (!response.ok) {
    throw new Error(`${method} ${url.pathname}: HTTP ${response.status} ${text.replace(/\s+/g, " ").slice(0, 300)}`);
  }
}

// Until Azurite accepts connections (its container may still be starting); HTTP errors are
// not retried.
async function firstCall(method, url) {
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    try {
      return await call(method, url);
    } catch (error) {
      if (!(error instanceof TypeError) || Date.now() > deadline) throw error;
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
  }
}

const xml = (text) => text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

const queueName = required("QUEUE_NAME");
const service = required("AZURE_STORAGE_QUEUE_ENDPOINT").replace(/\/+$/, "");
const queue = new URL(`${service}/${encodeURIComponent(queueName)}`);
const messages = new URL(`${queue.href}/messages`);
try {
  // 201 when created, 204 when it already exists.
  await firstCall("PUT", queue);
  console.log(`queue ${queue.href} ready`);
  for (const text of process.argv.slice(2)) {
    await call("POST", messages, `<QueueMessage><MessageText>${xml(text)}</MessageText></QueueMessage>`);
    console.log(`sent: ${text}`);
  }
} catch (error) {
  console.error(`create-queue: ${error.cause?.message ?? error.message}`);
  process.exit(1);
}
