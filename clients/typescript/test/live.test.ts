// The Smolvm class against a real `smolvm server` (SMOLVM_BIN, else
// ../../target/debug/smolvm). The sandbox suite also needs root, QEMU and
// the built default image, and boots one sandbox that all its checks share
// because each boot costs seconds. A suite that cannot run here prints
// `skipped: <reason>` and is reported as skipped.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import { Smolvm, SmolvmError, type ExecStreamChunk, type Sandbox } from "../src/index.js";
import { ServerProcess, sandboxSkipReason, serverSkipReason } from "./helpers/server.js";

const serverSkip = serverSkipReason();
const sandboxSkip = sandboxSkipReason();
if (serverSkip) {
  console.log(`skipped: live server tests: ${serverSkip}`);
}
if (sandboxSkip) {
  console.log(`skipped: live sandbox tests: ${sandboxSkip}`);
}

/** Upper bound for one boot; TCG without KVM takes tens of seconds. */
const BOOT_TIMEOUT_MS = 300_000;
/** Upper bound for a check that boots nothing. */
const CHECK_TIMEOUT_MS = 60_000;

// Skips go on each test rather than on its suite, so that node's summary
// counts them.
const serverCheck = { skip: serverSkip ?? false, timeout: CHECK_TIMEOUT_MS };
const sandboxCheck = { skip: sandboxSkip ?? false, timeout: CHECK_TIMEOUT_MS };
const sandboxBoot = { skip: sandboxSkip ?? false, timeout: BOOT_TIMEOUT_MS };

async function rejection(promise: Promise<unknown>): Promise<SmolvmError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof SmolvmError, `expected a SmolvmError, got ${String(error)}`);
    return error;
  }
  assert.fail("expected the call to fail");
}

describe("live server", () => {
  let server: ServerProcess;
  let smolvm: Smolvm;

  before(async () => {
    if (serverSkip) {
      return;
    }
    server = await ServerProcess.start();
    smolvm = new Smolvm({ baseUrl: server.baseUrl });
  });

  after(async () => {
    await server?.stop();
  });

  test("health reports ok", serverCheck, async () => {
    const health = await smolvm.health();
    assert.equal(health.status, "ok");
    assert.ok(health.version);
  });

  test("capabilities list features", serverCheck, async () => {
    const capabilities = await smolvm.capabilities();
    assert.equal(capabilities.api_version, "v1");
    assert.ok(capabilities.shell_modes.includes("raw"), `shell_modes: ${capabilities.shell_modes}`);
    assert.ok(capabilities.features.includes("exec_stream"), `features: ${capabilities.features}`);
    assert.ok(capabilities.features.includes("files"), `features: ${capabilities.features}`);
  });

  test("unknown id is sandbox_not_found", serverCheck, async () => {
    const id = "sbx-doesnotexist";
    const calls: Record<string, () => Promise<unknown>> = {
      get: () => smolvm.sandbox.get(id),
      exec: () => smolvm.sandbox.exec(id, { command: "true" }),
      "files.read": () => smolvm.sandbox.files.read(id, "/etc/hostname"),
      delete: () => smolvm.sandbox.delete(id),
    };
    for (const [name, call] of Object.entries(calls)) {
      const error = await rejection(call());
      assert.equal(error.status, 404, name);
      assert.equal(error.code, "sandbox_not_found", name);
      assert.match(error.detail, /sbx-doesnotexist/, name);
    }
  });

  test("unknown id in exec stream", serverCheck, async () => {
    const stream = smolvm.sandbox.execStream("sbx-doesnotexist", { command: "true" });
    const error = await rejection(stream.next());
    assert.equal(error.status, 404);
    assert.equal(error.code, "sandbox_not_found");
  });

  test("memory 1 is invalid_request", serverCheck, async () => {
    const error = await rejection(smolvm.sandbox.create({ memory: 1 }));
    assert.equal(error.status, 422);
    assert.equal(error.code, "invalid_request");
    assert.equal(error.field, "memory");
    assert.equal(error.headers?.get("x-smolvm-error-code"), "invalid_request");
  });

  test("unknown create field is invalid_request", serverCheck, async () => {
    const body = { memory: 512, colour: "blue" } as unknown as Parameters<typeof smolvm.sandbox.create>[0];
    const error = await rejection(smolvm.sandbox.create(body));
    assert.equal(error.status, 422);
    assert.equal(error.code, "invalid_request");
    assert.match(error.detail, /colour/);
  });

  test("list is empty on a fresh host", serverCheck, async () => {
    assert.deepEqual(await smolvm.sandbox.list(), []);
  });
});

describe("live server with token", () => {
  let server: ServerProcess;

  before(async () => {
    if (serverSkip) {
      return;
    }
    server = await ServerProcess.start(["--token", "test-token-1234"]);
  });

  after(async () => {
    await server?.stop();
  });

  test("missing token is unauthorized", serverCheck, async () => {
    const error = await rejection(new Smolvm({ baseUrl: server.baseUrl }).sandbox.list());
    assert.equal(error.status, 401);
    assert.equal(error.code, "unauthorized");
  });

  test("wrong token is unauthorized", serverCheck, async () => {
    const smolvm = new Smolvm({ baseUrl: server.baseUrl, token: "wrong" });
    const error = await rejection(smolvm.sandbox.list());
    assert.equal(error.code, "unauthorized");
  });

  test("right token is accepted", serverCheck, async () => {
    const smolvm = new Smolvm({ baseUrl: server.baseUrl, token: "test-token-1234" });
    assert.deepEqual(await smolvm.sandbox.list(), []);
  });
});

describe("live sandbox", () => {
  let server: ServerProcess;
  let smolvm: Smolvm;
  let sandbox: Sandbox | undefined;

  /** Returns the shared sandbox's id, or fails the check when create failed. */
  function id(): string {
    assert.ok(sandbox, "no sandbox: the create check failed");
    return sandbox.id;
  }

  before(async () => {
    if (sandboxSkip) {
      return;
    }
    server = await ServerProcess.start();
    smolvm = new Smolvm({ baseUrl: server.baseUrl });
  });

  after(async () => {
    if (!server) {
      return;
    }
    // Delete every sandbox of this server's data directory, even after a
    // failure: VMs must not outlive the test run.
    let leftover: string[] = sandbox ? [sandbox.id] : [];
    try {
      leftover = (await smolvm.sandbox.list()).map((s) => s.id);
      for (const sandboxId of leftover) {
        await smolvm.sandbox.delete(sandboxId);
      }
      leftover = [];
    } catch (error) {
      console.log(`cleanup over HTTP failed, falling back to the CLI: ${String(error)}`);
    }
    await server?.stop({ removeData: leftover.length === 0 });
    if (leftover.length > 0) {
      server.deleteWithCli(leftover);
    }
  });

  test("create boots a sandbox", sandboxBoot, async () => {
    sandbox = await smolvm.sandbox.create({ memory: 512, network: { mode: "off" } });
    assert.match(sandbox.id, /^sbx-/);
    assert.equal(sandbox.status, "running");
    assert.equal(sandbox.memory, 512);
    assert.equal(sandbox.network, "off");
  });

  test("list includes the sandbox", sandboxCheck, async () => {
    const ids = (await smolvm.sandbox.list()).map((s) => s.id);
    assert.deepEqual(ids, [id()]);
  });

  test("get returns its state", sandboxCheck, async () => {
    const got = await smolvm.sandbox.get(id());
    assert.equal(got.id, id());
    assert.equal(got.status, "running");
    assert.equal(got.created_at, sandbox?.created_at);
  });

  test("exec exit 0", sandboxCheck, async () => {
    const result = await smolvm.sandbox.exec(id(), { command: "echo hello" });
    assert.equal(result.exit_code, 0);
    assert.equal(result.stdout, "hello\n");
    assert.equal(result.stderr, "");
    assert.equal(result.stdout_truncated, false);
  });

  test("exec non-zero exit is a result", sandboxCheck, async () => {
    const result = await smolvm.sandbox.exec(id(), { command: "echo out; echo oops >&2; exit 3" });
    assert.equal(result.exit_code, 3);
    assert.equal(result.stdout, "out\n");
    assert.equal(result.stderr, "oops\n");
  });

  test("exec raw shell with env and cwd", sandboxCheck, async () => {
    const value = "it's $HOME; `id`";
    const printed = await smolvm.sandbox.exec(id(), {
      command: "printenv GREETING",
      shell: "raw",
      env: { GREETING: value },
    });
    assert.equal(printed.exit_code, 0);
    assert.equal(printed.stdout, `${value}\n`);

    const cwd = await smolvm.sandbox.exec(id(), { command: "pwd", cwd: "/tmp", timeout: 10 });
    assert.equal(cwd.stdout, "/tmp\n");
  });

  test("exec timeout keeps partial output", sandboxCheck, async () => {
    const error = await rejection(smolvm.sandbox.exec(id(), { command: "echo partial; sleep 30", timeout: 1 }));
    assert.equal(error.status, 408);
    assert.equal(error.code, "command_timeout");
    assert.equal(error.partialOutput?.stdout, "partial\n");
    assert.equal(error.headers?.get("x-smolvm-sandbox-deleted"), "false");

    const after = await smolvm.sandbox.exec(id(), { command: "echo still usable" });
    assert.equal(after.stdout, "still usable\n");
  });

  test("execStream yields output and exit", sandboxCheck, async () => {
    const chunks: ExecStreamChunk[] = [];
    const command = "for i in 1 2 3; do echo $i; sleep 0.2; done; echo err >&2; exit 4";
    for await (const chunk of smolvm.sandbox.execStream(id(), { command })) {
      chunks.push(chunk);
    }

    const text = (type: string) =>
      chunks.map((c) => (c.type === type && "data" in c ? c.data : "")).join("");
    assert.equal(text("stdout"), "1\n2\n3\n");
    assert.equal(text("stderr"), "err\n");
    const exit = chunks.at(-1);
    assert.ok(exit?.type === "exit", `last chunk is not exit: ${JSON.stringify(exit)}`);
    assert.equal(exit.exitCode, 4);
    assert.equal(exit.timedOut, false);
    assert.equal(exit.signal, null);
    assert.equal(chunks.filter((c) => c.type === "exit").length, 1);
  });

  test("execStream timeout ends with timedOut", sandboxCheck, async () => {
    const chunks: ExecStreamChunk[] = [];
    for await (const chunk of smolvm.sandbox.execStream(id(), { command: "sleep 30", timeout: 1 })) {
      chunks.push(chunk);
    }
    const exit = chunks.at(-1);
    assert.ok(exit?.type === "exit", `last chunk is not exit: ${JSON.stringify(exit)}`);
    assert.equal(exit.timedOut, true);
  });

  test("leaving execStream kills the command", sandboxCheck, async () => {
    for await (const chunk of smolvm.sandbox.execStream(id(), { command: "echo started; sleep 300", timeout: 600 })) {
      assert.deepEqual(chunk, { type: "stdout", data: "started\n" });
      break;
    }

    // The server notices the closed connection at its next keep-alive write.
    const deadline = Date.now() + 15_000;
    for (;;) {
      const check = await smolvm.sandbox.exec(id(), { command: "pgrep -x sleep || echo none" });
      if (check.stdout === "none\n") {
        break;
      }
      assert.ok(Date.now() < deadline, `sleep still runs after the client left: ${check.stdout}`);
      await sleep(500);
    }
  });

  test("files round trip", sandboxCheck, async () => {
    const data = new Uint8Array(300_000);
    for (let i = 0; i < data.length; i++) {
      data[i] = (i * 2_654_435_761) >>> 13;
    }
    const path = "/tmp/client-test/dir/data.bin";

    const written = await smolvm.sandbox.files.write(id(), path, data, { mode: 0o600, createParents: true });
    assert.deepEqual(written, { path, bytes: data.length });
    const read = await smolvm.sandbox.files.read(id(), path);
    assert.equal(read.length, data.length);
    assert.ok(Buffer.from(read).equals(Buffer.from(data)), "downloaded bytes differ from the upload");

    const stat = await smolvm.sandbox.exec(id(), { command: `stat -c %a ${path}` });
    assert.equal(stat.stdout, "600\n");
  });

  test("files round trip text and empty", sandboxCheck, async () => {
    await smolvm.sandbox.files.write(id(), "/tmp/hello.txt", "héllo\n");
    const cat = await smolvm.sandbox.exec(id(), { command: "cat /tmp/hello.txt" });
    assert.equal(cat.stdout, "héllo\n");

    const written = await smolvm.sandbox.files.write(id(), "/tmp/empty", new Uint8Array(0));
    assert.equal(written.bytes, 0);
    const read = await smolvm.sandbox.files.read(id(), "/tmp/empty");
    assert.equal(read.length, 0);
  });

  test("missing file is file_not_found", sandboxCheck, async () => {
    const error = await rejection(smolvm.sandbox.files.read(id(), "/tmp/no/such/file"));
    assert.equal(error.status, 404);
    assert.equal(error.code, "file_not_found");

    const upload = await rejection(smolvm.sandbox.files.write(id(), "/tmp/no/such/dir/file", "x"));
    assert.equal(upload.status, 404);
    assert.equal(upload.code, "file_not_found");
  });

  test("invalid env name is invalid_request", sandboxCheck, async () => {
    const error = await rejection(smolvm.sandbox.exec(id(), { command: "true", env: { "BAD=NAME": "x" } }));
    assert.equal(error.status, 422);
    assert.equal(error.code, "invalid_request");
  });

  test("stop and start", sandboxBoot, async () => {
    // Collect lifecycle events of this sandbox while it stops and starts.
    const listening = new AbortController();
    const seen: string[] = [];
    const collector = (async () => {
      try {
        for await (const event of smolvm.events({ signal: listening.signal })) {
          if (event.type !== "lagged" && event.sandbox_id === id()) {
            seen.push(event.type);
          }
        }
      } catch (error) {
        if (!listening.signal.aborted) {
          throw error;
        }
      }
    })();
    // The stream reports events from the moment the server accepts it.
    // NOTE: this wait is a guess at how long that takes; a slower server
    // would miss the first events and fail the check below.
    await sleep(500);

    try {
      const stopped = await smolvm.sandbox.stop(id());
      assert.equal(stopped.status, "stopped");

      const error = await rejection(smolvm.sandbox.exec(id(), { command: "true" }));
      assert.equal(error.status, 409);
      assert.equal(error.code, "invalid_state");

      const started = await smolvm.sandbox.start(id());
      assert.equal(started.status, "running");
      const result = await smolvm.sandbox.exec(id(), { command: "echo back" });
      assert.equal(result.stdout, "back\n");

      const deadline = Date.now() + 5_000;
      while (!seen.includes("sandbox.running") && Date.now() < deadline) {
        await sleep(100);
      }
    } finally {
      listening.abort();
      await collector;
    }
    assert.ok(seen.includes("sandbox.stopped"), `events seen: ${seen.join(", ")}`);
    assert.ok(seen.includes("sandbox.running"), `events seen: ${seen.join(", ")}`);
  });

  test("delete removes the sandbox", sandboxCheck, async () => {
    const sandboxId = id();
    await smolvm.sandbox.delete(sandboxId);

    const error = await rejection(smolvm.sandbox.get(sandboxId));
    assert.equal(error.status, 404);
    assert.equal(error.code, "sandbox_not_found");
    assert.deepEqual(await smolvm.sandbox.list(), []);
    sandbox = undefined;
  });
});
