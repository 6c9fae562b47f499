// Ember's runtime interface client for nodejs20.x (/var/runtime/ric.mjs in
// the runtime image). It behaves as AWS's aws-lambda-ric does on Lambda:
// it loads the handler named by _HANDLER from LAMBDA_TASK_ROOT (CommonJS or
// an ES module: `.js` per the nearest package.json "type", `.mjs`, `.cjs`,
// or a package under node_modules), then polls the Runtime API at
// AWS_LAMBDA_RUNTIME_API for events, one at a time, and posts each result
// or Lambda's error document. Handlers may be async, return a promise, or
// take a callback. console output gets Lambda's "TIME\tREQUEST_ID\tLEVEL"
// prefix. (Why our own client: see docs/ARCHITECTURE.md, "Runtime images".)

import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import util from "node:util";
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";

const API = process.env.AWS_LAMBDA_RUNTIME_API || "127.0.0.1:9001";
const [API_HOST, API_PORT] = API.split(":");
const PREFIX = "/2018-06-01/runtime";
const TASK_ROOT = process.env.LAMBDA_TASK_ROOT || "/var/task";
const HANDLER = process.env._HANDLER || "";
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });

/** An error with Lambda's runtime error type (`Runtime.*`). */
class RuntimeError extends Error {
  constructor(type, message) {
    super(message);
    this.name = type;
  }
}

// --- the Runtime API ---------------------------------------------------

/** One request to the Runtime API; resolves to { status, headers, body }. */
function call(method, route, body, headers = {}) {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : Buffer.from(body);
    const req = http.request(
      {
        host: API_HOST,
        port: API_PORT,
        method,
        path: PREFIX + route,
        agent,
        headers: {
          ...headers,
          ...(data ? { "content-type": "application/json", "content-length": data.length } : {}),
        },
      },
      (res) => {
        const chunks = [];
        res.on("data", (c) => chunks.push(c));
        res.on("end", () =>
          resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }),
        );
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    req.end(data);
  });
}

/** Lambda's error document for a thrown value. */
function errorDocument(err) {
  if (err instanceof Error) {
    return {
      errorType: err.name || "Error",
      errorMessage: err.message,
      trace: String(err.stack || "").split("\n"),
    };
  }
  return { errorType: typeof err, errorMessage: String(err), trace: [] };
}

function errorHeaders(doc) {
  return { "lambda-runtime-function-error-type": String(doc.errorType).replace(/[^\x20-\x7e]/g, "") };
}

function toJson(value) {
  // As on Lambda: undefined is answered as null.
  return JSON.stringify(value === undefined ? null : value);
}

// --- console in Lambda's format ----------------------------------------

let currentRequestId;

function patchConsole() {
  const write = (level, stream) =>
    (...args) => {
      const line = util.format(...args).replace(/\n/g, "\r");
      stream.write(`${new Date().toISOString()}\t${currentRequestId ?? "undefined"}\t${level}\t${line}\n`);
    };
  console.log = write("INFO", process.stdout);
  console.info = write("INFO", process.stdout);
  console.debug = write("DEBUG", process.stdout);
  console.warn = write("WARN", process.stderr);
  console.error = write("ERROR", process.stderr);
  console.trace = write("TRACE", process.stderr);
}

// --- loading the handler -------------------------------------------------

/** "src/app.handler" -> ["src", "app", "handler"]. */
function splitHandler(full) {
  const slash = full.lastIndexOf("/");
  const moduleRoot = slash >= 0 ? full.slice(0, slash) : "";
  const rest = full.slice(slash + 1);
  const dot = rest.indexOf(".");
  if (dot <= 0 || dot === rest.length - 1) {
    throw new RuntimeError("Runtime.MalformedHandlerName", `Bad handler ${full}`);
  }
  return [moduleRoot, rest.slice(0, dot), rest.slice(dot + 1)];
}

function isFile(p) {
  try {
    return fs.statSync(p).isFile();
  } catch {
    return false;
  }
}

/** Whether the package.json nearest to `dir` says "type": "module". */
function typeModule(dir) {
  for (let d = dir; ; d = path.dirname(d)) {
    const pj = path.join(d, "package.json");
    if (isFile(pj)) {
      try {
        return JSON.parse(fs.readFileSync(pj, "utf8")).type === "module";
      } catch {
        return false;
      }
    }
    if (d === path.dirname(d) || d === path.dirname(TASK_ROOT)) return false;
  }
}

async function importFile(file) {
  return import(pathToFileURL(file).href);
}

/** Loads the module as Lambda does; returns its exports. */
async function loadModule(moduleRoot, name) {
  const base = path.resolve(TASK_ROOT, moduleRoot, name);
  // Anchored where Lambda's own client lives, so messages read as there.
  const requireHere = createRequire("/var/runtime/index.mjs");
  try {
    if (isFile(base)) return requireHere(base);
    if (isFile(base + ".js")) {
      return typeModule(path.dirname(base)) ? await importFile(base + ".js") : requireHere(base + ".js");
    }
    if (isFile(base + ".mjs")) return await importFile(base + ".mjs");
    if (isFile(base + ".cjs")) return requireHere(base + ".cjs");
    // A package (node_modules, NODE_PATH) by its name.
    const resolved = requireHere.resolve(path.join(moduleRoot, name), {
      paths: [TASK_ROOT, path.resolve(TASK_ROOT, moduleRoot), ...(process.env.NODE_PATH || "").split(":")],
    });
    return resolved.endsWith(".mjs") ? await importFile(resolved) : requireHere(resolved);
  } catch (e) {
    if (e instanceof SyntaxError) {
      throw new RuntimeError("Runtime.UserCodeSyntaxError", `${e.name}: ${e.message}`);
    }
    if (e && (e.code === "MODULE_NOT_FOUND" || e.code === "ERR_MODULE_NOT_FOUND")) {
      const err = new RuntimeError("Runtime.ImportModuleError", `Error: ${e.message}`);
      err.stack = `Runtime.ImportModuleError: Error: ${e.message}`;
      throw err;
    }
    throw e;
  }
}

async function loadHandler(full) {
  const [moduleRoot, name, handlerPath] = splitHandler(full);
  const mod = await loadModule(moduleRoot, name);
  let fn = handlerPath.split(".").reduce((o, k) => (o == null ? undefined : o[k]), mod);
  if (fn === undefined && mod && mod.default) {
    // A CommonJS module imported as an ES module.
    fn = handlerPath.split(".").reduce((o, k) => (o == null ? undefined : o[k]), mod.default);
  }
  if (typeof fn !== "function") {
    throw new RuntimeError("Runtime.HandlerNotFound", `${full} is undefined or not exported`);
  }
  return fn;
}

// --- one invocation --------------------------------------------------------

function contextFor(headers, deadlineMs) {
  const env = process.env;
  let clientContext;
  try {
    const cc = headers["lambda-runtime-client-context"];
    clientContext = cc ? JSON.parse(cc) : undefined;
  } catch {
    clientContext = undefined;
  }
  return {
    callbackWaitsForEmptyEventLoop: true,
    functionName: env.AWS_LAMBDA_FUNCTION_NAME,
    functionVersion: env.AWS_LAMBDA_FUNCTION_VERSION,
    invokedFunctionArn: headers["lambda-runtime-invoked-function-arn"],
    memoryLimitInMB: env.AWS_LAMBDA_FUNCTION_MEMORY_SIZE,
    awsRequestId: headers["lambda-runtime-aws-request-id"],
    logGroupName: env.AWS_LAMBDA_LOG_GROUP_NAME,
    logStreamName: env.AWS_LAMBDA_LOG_STREAM_NAME,
    identity: undefined,
    clientContext,
    getRemainingTimeInMillis: () => Math.max(deadlineMs - Date.now(), 0),
  };
}

/** Runs the handler; resolves to ["ok", value] or ["error", thrown]. */
function runHandler(handler, event, context) {
  return new Promise((resolve) => {
    let settled = false;
    const settle = (r) => {
      if (!settled) {
        settled = true;
        resolve(r);
      }
    };
    const callback = (err, value) => setImmediate(() => settle(err == null ? ["ok", value] : ["error", err]));
    context.done = callback;
    context.succeed = (value) => callback(null, value);
    context.fail = (err) => callback(err ?? new Error("handled"));
    try {
      const result = handler(event, context, callback);
      if (result && typeof result.then === "function") {
        result.then((v) => settle(["ok", v]), (e) => settle(["error", e]));
      } else if (handler.length < 3) {
        // A synchronous handler without a callback answers with its value.
        settle(["ok", result]);
      }
    } catch (e) {
      settle(["error", e]);
    }
  });
}

async function serve(handler) {
  for (;;) {
    const next = await call("GET", "/invocation/next");
    if (next.status !== 200) {
      throw new Error(`invocation/next answered ${next.status}: ${next.body}`);
    }
    const h = next.headers;
    const id = h["lambda-runtime-aws-request-id"];
    currentRequestId = id;
    if (h["lambda-runtime-trace-id"]) process.env._X_AMZN_TRACE_ID = h["lambda-runtime-trace-id"];
    else delete process.env._X_AMZN_TRACE_ID;
    const deadline = Number(h["lambda-runtime-deadline-ms"]) || Date.now() + 3000;
    let event;
    try {
      event = JSON.parse(next.body.toString("utf8") || "null");
    } catch {
      event = next.body.toString("utf8");
    }
    const [how, value] = await runHandler(handler, event, contextFor(h, deadline));
    let body;
    if (how === "ok") {
      try {
        body = toJson(value);
      } catch (e) {
        await postError(id, e);
        continue;
      }
      await call("POST", `/invocation/${id}/response`, body);
    } else {
      await postError(id, value);
    }
    currentRequestId = undefined;
  }
}

async function postError(id, err) {
  const doc = errorDocument(err);
  console.error("Invoke Error \t" + JSON.stringify(doc));
  await call("POST", `/invocation/${id}/error`, JSON.stringify(doc), errorHeaders(doc));
}

async function main() {
  patchConsole();
  let invoking;
  process.on("uncaughtException", async (e) => {
    // As on Lambda: the invocation fails and the runtime restarts.
    const doc = errorDocument(e);
    console.error("Uncaught Exception \t" + JSON.stringify(doc));
    try {
      if (currentRequestId) await postError(currentRequestId, e);
    } finally {
      process.exit(129);
    }
  });
  let handler;
  try {
    handler = await loadHandler(HANDLER);
  } catch (e) {
    const doc = errorDocument(e);
    console.error("Init Error \t" + JSON.stringify(doc));
    await call("POST", "/init/error", JSON.stringify(doc), errorHeaders(doc));
    process.exit(129);
  }
  invoking = serve(handler);
  await invoking;
}

main().catch((e) => {
  console.error("the runtime interface client failed:", e);
  process.exit(1);
});
