// The committed generated client must match what the server's current
// OpenAPI document generates.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { test } from "node:test";

import { generateSource, smolvmBinary } from "../scripts/generate.mjs";

const schemaPath = fileURLToPath(new URL("../src/generated/schema.ts", import.meta.url));
const snapshotPath = fileURLToPath(
  new URL("../../../crates/smolvm-server/tests/snapshots/openapi.json", import.meta.url),
);

/** Returns the OpenAPI document from `smolvm openapi`, else the server's committed snapshot. */
function openapiDocument(): string {
  const binary = smolvmBinary();
  if (existsSync(binary)) {
    return execFileSync(binary, ["openapi"], { encoding: "utf8", maxBuffer: 64 * 1024 * 1024 });
  }
  // The server's own tests keep this snapshot equal to `smolvm openapi`.
  console.log(`note: no smolvm binary at ${binary}; comparing against ${snapshotPath}`);
  return readFileSync(snapshotPath, "utf8");
}

test("generated schema is up to date", async () => {
  const expected = await generateSource(openapiDocument());
  const committed = readFileSync(schemaPath, "utf8");
  assert.ok(
    committed === expected,
    "src/generated/schema.ts is stale: run `npm run generate` in clients/typescript and commit it",
  );
});
