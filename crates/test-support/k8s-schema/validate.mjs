// Validates Kubernetes objects against the schemas published for them, with a checker nobody here
// wrote: the models of the npm packages `kubernetes-models` (core types),
// `@kubernetes-models/gateway-api` and `@kubernetes-models/istio`, generated from the Kubernetes
// OpenAPI spec and the Gateway API and Istio CRDs, each with a `.validate()` (ajv underneath).
//
//   node validate.mjs [--partial] < objects.json
//
// Reads a JSON array of objects on stdin, picks each one's model by `apiVersion` + `kind`, and
// prints one line per object: `ok <kind> <name>` or `error <kind> <name>: <message>`. Exits 0 when
// every object passed, 1 when one failed or had an apiVersion/kind no package has a model for
// (never a silent pass), 2 on bad usage, unreadable input, missing packages or a checker that
// failed otherwise.
//
// --partial checks server-side apply patches, which carry only the fields their manager owns:
// the models' errors are ajv error objects with a `keyword`; those whose keyword is `required`
// are dropped, every other one (type, enum, format, pattern, minimum, maxLength, oneOf, ...) stays.
//
// The packages are looked up in the node_modules directory named by NODE_PATH (its first entry),
// else in target/test-node/k8s-schema/node_modules of this repository, where ./scripts/test
// installs them from the package.json beside this file.

import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const PACKAGES = ["kubernetes-models", "@kubernetes-models/gateway-api", "@kubernetes-models/istio"];

function fail(message) {
  process.stderr.write(`validate.mjs: ${message}\n`);
  process.exit(2);
}

let partial = false;
for (const arg of process.argv.slice(2)) {
  if (arg === "--partial") {
    partial = true;
  } else {
    fail(`unknown argument ${JSON.stringify(arg)}; usage: node validate.mjs [--partial] < objects.json`);
  }
}

const here = path.dirname(fileURLToPath(import.meta.url));
const nodeModules = path.resolve(
  (process.env.NODE_PATH ?? "").split(path.delimiter).find((p) => p !== "") ??
    path.join(here, "../../../target/test-node/k8s-schema/node_modules"),
);
// Resolves from `nodeModules` first (ESM imports ignore NODE_PATH, so the models are loaded
// through their CommonJS builds, which all three packages ship).
const require = createRequire(path.join(path.dirname(nodeModules), "resolve-from-here.cjs"));

const versions = {};
for (const pkg of PACKAGES) {
  try {
    versions[pkg] = JSON.parse(readFileSync(path.join(nodeModules, pkg, "package.json"), "utf8")).version;
  } catch (e) {
    fail(
      `${pkg} is not installed in ${nodeModules} (${e.code ?? e.message}); run ./scripts/test, ` +
        "which installs crates/test-support/k8s-schema/package.json there",
    );
  }
}
const installed = PACKAGES.map((p) => `${p} ${versions[p]}`).join(", ");

// A DNS-subdomain group (optional) and a Kubernetes version: also keeps the lookup path inside
// the packages.
const API_VERSION = /^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/)?v[0-9]+((alpha|beta)[0-9]+)?$/;
const KIND = /^[A-Z][A-Za-z0-9]*$/;
const models = new Map();

// The model class for apiVersion + kind, or null. A module of the same path that is not a
// top-level kind (`apps/v1/DeploymentSpec`) has no `apiVersion`/`kind` of its own and is refused.
function modelFor(apiVersion, kind) {
  if (typeof apiVersion !== "string" || typeof kind !== "string") return null;
  if (!API_VERSION.test(apiVersion) || !KIND.test(kind)) return null;
  const key = `${apiVersion} ${kind}`;
  if (!models.has(key)) {
    let found = null;
    for (const pkg of PACKAGES) {
      let file;
      try {
        file = require.resolve(`${pkg}/${apiVersion}/${kind}`);
      } catch {
        continue;
      }
      const cls = require(file)[kind];
      if (typeof cls === "function" && cls.apiVersion === apiVersion && cls.kind === kind) {
        found = cls;
        break;
      }
    }
    models.set(key, found);
  }
  return models.get(key);
}

function describe(err) {
  let text = `${err.instancePath || "(root)"} ${err.message}`;
  if (err.keyword === "enum" && Array.isArray(err.params?.allowedValues)) {
    text += ` (${err.params.allowedValues.map((v) => JSON.stringify(v)).join(", ")})`;
  }
  return `${text} [${err.keyword}]`;
}

// null when `object` passes, else the message.
function check(object) {
  const { apiVersion, kind } = object;
  const Model = modelFor(apiVersion, kind);
  if (!Model) {
    let hint = "";
    if (apiVersion === "networking.istio.io/v1" || apiVersion === "security.istio.io/v1") {
      hint =
        "; these Istio models are generated from Istio 1.18's CRDs, which serve v1alpha3/v1beta1 only " +
        "(v1 is in @kubernetes-models/istio 3, which needs Node.js 22)";
    }
    return (
      `unknown apiVersion/kind ${JSON.stringify(apiVersion)} ${JSON.stringify(kind)}: ` +
      `no model for it in ${installed}${hint}`
    );
  }
  try {
    new Model(object).validate();
    return null;
  } catch (e) {
    if (!Array.isArray(e?.errors)) throw e;
    const errors = partial ? e.errors.filter((err) => err.keyword !== "required") : e.errors;
    return errors.length === 0 ? null : errors.map(describe).join("; ");
  }
}

let objects;
try {
  objects = JSON.parse(readFileSync(0, "utf8"));
} catch (e) {
  fail(`stdin is not JSON: ${e.message}`);
}
if (!Array.isArray(objects)) fail("stdin must be a JSON array of objects");

let failed = 0;
const lines = [];
for (const object of objects) {
  const isObject = object !== null && typeof object === "object" && !Array.isArray(object);
  const kind = isObject && typeof object.kind === "string" && object.kind !== "" ? object.kind : "<no kind>";
  const name =
    isObject && typeof object.metadata?.name === "string" && object.metadata.name !== ""
      ? object.metadata.name
      : "<unnamed>";
  let problem;
  try {
    problem = isObject ? check(object) : `not a JSON object: ${JSON.stringify(object)}`;
  } catch (e) {
    // Not a schema violation: a broken install or a model that failed otherwise.
    fail(`checking ${kind} ${name} failed: ${e?.stack ?? e}`);
  }
  if (problem === null) {
    lines.push(`ok ${kind} ${name}`);
  } else {
    failed += 1;
    lines.push(`error ${kind} ${name}: ${problem}`);
  }
}
process.stdout.write(lines.map((l) => `${l}\n`).join(""));
process.exitCode = failed === 0 ? 0 : 1;
