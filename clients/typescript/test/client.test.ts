// The Smolvm class against a fake fetch: request shapes, response parsing
// and error mapping, without a server.

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { Smolvm, SmolvmError, type ExecStreamChunk } from "../src/index.js";

const SANDBOX = {
  id: "sbx-test000001",
  status: "running",
  os: "linux",
  image: "default",
  memory: 512,
  disk_size: 2048,
  cpus: 1,
  backend: "qemu",
  accel: "kvm",
  network: "off",
  created_at: "2026-12-01T10:00:00.000Z",
};

/** A fetch that records each request and returns the response of a handler. */
class FakeFetch {
  readonly requests: Request[] = [];
  readonly bodies: Uint8Array[] = [];
  #handler: (request: Request) => Response | Promise<Response>;

  constructor(handler: (request: Request) => Response | Promise<Response>) {
    this.#handler = handler;
  }

  readonly fetch = async (request: Request): Promise<Response> => {
    this.requests.push(request);
    this.bodies.push(new Uint8Array(await request.clone().arrayBuffer()));
    return this.#handler(request);
  };

  get last(): Request {
    const request = this.requests.at(-1);
    assert.ok(request, "no request was sent");
    return request;
  }

  get lastBody(): string {
    return new TextDecoder().decode(this.bodies.at(-1));
  }
}

function json(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json", ...headers },
  });
}

function errorResponse(status: number, code: string, detail: string, field?: string): Response {
  return json(status, { detail, code, ...(field ? { field } : {}) }, { "x-smolvm-error-code": code });
}

function sse(events: string[], options: { end?: boolean } = {}): Response {
  const encoder = new TextEncoder();
  const body = new ReadableStream<Uint8Array>({
    start(controller) {
      for (const event of events) {
        controller.enqueue(encoder.encode(event));
      }
      if (options.end !== false) {
        controller.close();
      }
    },
  });
  return new Response(body, { status: 200, headers: { "content-type": "text/event-stream" } });
}

function event(name: string, data: unknown): string {
  return `event: ${name}\ndata: ${JSON.stringify(data)}\n\n`;
}

async function rejection(promise: Promise<unknown>): Promise<SmolvmError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof SmolvmError, `expected a SmolvmError, got ${String(error)}`);
    return error;
  }
  assert.fail("expected the call to fail");
}

async function collect(stream: AsyncIterable<ExecStreamChunk>): Promise<ExecStreamChunk[]> {
  const chunks: ExecStreamChunk[] = [];
  for await (const chunk of stream) {
    chunks.push(chunk);
  }
  return chunks;
}

describe("Smolvm requests", () => {
  test("default base URL is loopback port 8000", async () => {
    const fake = new FakeFetch(() => json(200, []));
    await new Smolvm({ fetch: fake.fetch }).sandbox.list();
    assert.equal(fake.last.url, "http://127.0.0.1:8000/sandboxes");
    assert.equal(fake.last.method, "GET");
  });

  test("token sent as bearer", async () => {
    const fake = new FakeFetch(() => json(200, []));
    await new Smolvm({ baseUrl: "http://localhost:9/", token: "s3cret", fetch: fake.fetch }).sandbox.list();
    assert.equal(fake.last.url, "http://localhost:9/sandboxes");
    assert.equal(fake.last.headers.get("authorization"), "Bearer s3cret");
  });

  test("no authorization header without token", async () => {
    const fake = new FakeFetch(() => json(200, []));
    await new Smolvm({ fetch: fake.fetch }).sandbox.list();
    assert.equal(fake.last.headers.get("authorization"), null);
  });

  test("create posts JSON, empty object by default", async () => {
    const fake = new FakeFetch(() => json(201, SANDBOX));
    const smolvm = new Smolvm({ fetch: fake.fetch });

    const created = await smolvm.sandbox.create();
    assert.deepEqual(created, SANDBOX);
    assert.equal(fake.last.method, "POST");
    assert.equal(fake.last.url, "http://127.0.0.1:8000/sandboxes");
    assert.equal(fake.last.headers.get("content-type"), "application/json");
    assert.equal(fake.lastBody, "{}");

    await smolvm.sandbox.create({ memory: 1024, network: { mode: "off" } });
    assert.deepEqual(JSON.parse(fake.lastBody), { memory: 1024, network: { mode: "off" } });
  });

  test("sandbox id is escaped in the path", async () => {
    const fake = new FakeFetch(() => json(200, SANDBOX));
    await new Smolvm({ fetch: fake.fetch }).sandbox.get("a/b c");
    assert.equal(new URL(fake.last.url).pathname, "/sandboxes/a%2Fb%20c");
  });

  test("get, stop and start hit their paths", async () => {
    const fake = new FakeFetch(() => json(200, SANDBOX));
    const smolvm = new Smolvm({ fetch: fake.fetch });

    await smolvm.sandbox.get("sbx-1");
    assert.equal(`${fake.last.method} ${new URL(fake.last.url).pathname}`, "GET /sandboxes/sbx-1");
    await smolvm.sandbox.stop("sbx-1");
    assert.equal(`${fake.last.method} ${new URL(fake.last.url).pathname}`, "POST /sandboxes/sbx-1/stop");
    await smolvm.sandbox.start("sbx-1");
    assert.equal(`${fake.last.method} ${new URL(fake.last.url).pathname}`, "POST /sandboxes/sbx-1/start");
  });

  test("delete accepts 204", async () => {
    const fake = new FakeFetch(() => new Response(null, { status: 204 }));
    const result = await new Smolvm({ fetch: fake.fetch }).sandbox.delete("sbx-1");
    assert.equal(result, undefined);
    assert.equal(fake.last.method, "DELETE");
    assert.equal(new URL(fake.last.url).pathname, "/sandboxes/sbx-1");
  });

  test("exec non-zero exit is a result", async () => {
    const output = {
      exit_code: 3,
      stdout: "",
      stderr: "oops\n",
      duration_ms: 4,
      stdout_truncated: false,
      stderr_truncated: false,
    };
    const fake = new FakeFetch(() => json(200, output));
    const body = { command: "exit 3", timeout: 5, shell: "raw" as const, cwd: "/tmp", env: { A: "1" } };

    const result = await new Smolvm({ fetch: fake.fetch }).sandbox.exec("sbx-1", body);
    assert.deepEqual(result, output);
    assert.equal(new URL(fake.last.url).pathname, "/sandboxes/sbx-1/exec");
    assert.deepEqual(JSON.parse(fake.lastBody), body);
  });

  test("files write sends raw bytes with query", async () => {
    const fake = new FakeFetch(() => json(200, { path: "/tmp/x y", bytes: 3 }));
    const smolvm = new Smolvm({ fetch: fake.fetch });

    const written = await smolvm.sandbox.files.write("sbx-1", "/tmp/x y", new Uint8Array([0, 255, 10]), {
      mode: 0o755,
      createParents: true,
    });
    assert.deepEqual(written, { path: "/tmp/x y", bytes: 3 });
    assert.equal(fake.last.method, "PUT");
    assert.equal(fake.last.headers.get("content-type"), "application/octet-stream");
    assert.deepEqual(fake.bodies.at(-1), new Uint8Array([0, 255, 10]));
    const url = new URL(fake.last.url);
    assert.equal(url.pathname, "/sandboxes/sbx-1/files");
    assert.equal(url.searchParams.get("path"), "/tmp/x y");
    assert.equal(url.searchParams.get("mode"), "755");
    assert.equal(url.searchParams.get("create_parents"), "true");
  });

  test("files write encodes strings as UTF-8", async () => {
    const fake = new FakeFetch(() => json(200, { path: "/tmp/t", bytes: 2 }));
    await new Smolvm({ fetch: fake.fetch }).sandbox.files.write("sbx-1", "/tmp/t", "é", { mode: "600" });
    assert.deepEqual(fake.bodies.at(-1), new Uint8Array([0xc3, 0xa9]));
    const url = new URL(fake.last.url);
    assert.equal(url.searchParams.get("mode"), "600");
    assert.equal(url.searchParams.has("create_parents"), false);
  });

  test("files write rejects invalid numeric mode", async () => {
    const fake = new FakeFetch(() => json(200, {}));
    const files = new Smolvm({ fetch: fake.fetch }).sandbox.files;
    await assert.rejects(files.write("sbx-1", "/tmp/t", "", { mode: 0o10000 }), RangeError);
    await assert.rejects(files.write("sbx-1", "/tmp/t", "", { mode: 1.5 }), RangeError);
    assert.equal(fake.requests.length, 0);
  });

  test("files read returns bytes", async () => {
    const bytes = new Uint8Array([1, 2, 3, 0, 255]);
    const fake = new FakeFetch(
      () => new Response(bytes, { headers: { "content-type": "application/octet-stream" } }),
    );
    const read = await new Smolvm({ fetch: fake.fetch }).sandbox.files.read("sbx-1", "/etc/hostname");
    assert.ok(read instanceof Uint8Array);
    assert.deepEqual(read, bytes);
    assert.equal(new URL(fake.last.url).searchParams.get("path"), "/etc/hostname");
  });

  test("files read of empty file", async () => {
    const fake = new FakeFetch(() => new Response(new Uint8Array(0), { headers: { "content-length": "0" } }));
    const read = await new Smolvm({ fetch: fake.fetch }).sandbox.files.read("sbx-1", "/tmp/empty");
    assert.equal(read.length, 0);
  });
});

describe("SmolvmError mapping", () => {
  test("404 carries status, code and detail", async () => {
    const fake = new FakeFetch(() => errorResponse(404, "sandbox_not_found", "no sandbox has id sbx-x"));
    const error = await rejection(new Smolvm({ fetch: fake.fetch }).sandbox.get("sbx-x"));
    assert.equal(error.status, 404);
    assert.equal(error.code, "sandbox_not_found");
    assert.equal(error.detail, "no sandbox has id sbx-x");
    assert.equal(error.field, undefined);
    assert.equal(error.name, "SmolvmError");
    assert.ok(error instanceof Error);
    assert.match(error.message, /no sandbox has id sbx-x/);
    assert.match(error.message, /404/);
    assert.match(error.message, /sandbox_not_found/);
    assert.equal(error.headers?.get("x-smolvm-error-code"), "sandbox_not_found");
  });

  test("422 names the field", async () => {
    const fake = new FakeFetch(() => errorResponse(422, "invalid_request", "memory must be at least 128", "memory"));
    const error = await rejection(new Smolvm({ fetch: fake.fetch }).sandbox.create({ memory: 1 }));
    assert.equal(error.status, 422);
    assert.equal(error.code, "invalid_request");
    assert.equal(error.field, "memory");
    assert.equal(error.partialOutput, undefined);
  });

  test("408 timeout exposes partial output", async () => {
    const body = {
      detail: "the command did not finish within 1 s",
      code: "command_timeout",
      exit_code: 137,
      stdout: "partial\n",
      stderr: "",
      duration_ms: 1000,
      stdout_truncated: false,
      stderr_truncated: false,
    };
    const fake = new FakeFetch(() =>
      json(408, body, { "x-smolvm-error-code": "command_timeout", "x-smolvm-sandbox-deleted": "false" }),
    );
    const error = await rejection(new Smolvm({ fetch: fake.fetch }).sandbox.exec("sbx-1", { command: "sleep 9", timeout: 1 }));
    assert.equal(error.status, 408);
    assert.equal(error.code, "command_timeout");
    assert.deepEqual(error.body, body);
    assert.equal(error.partialOutput?.stdout, "partial\n");
    assert.equal(error.partialOutput?.exit_code, 137);
    assert.equal(error.headers?.get("x-smolvm-sandbox-deleted"), "false");
  });

  test("code from header when body is not JSON", async () => {
    const fake = new FakeFetch(
      () =>
        new Response("upstream failed\n", {
          status: 503,
          headers: { "content-type": "text/plain", "x-smolvm-error-code": "host_unavailable" },
        }),
    );
    const error = await rejection(new Smolvm({ fetch: fake.fetch }).sandbox.list());
    assert.equal(error.status, 503);
    assert.equal(error.code, "host_unavailable");
    assert.equal(error.detail, "upstream failed");
    assert.equal(error.body, "upstream failed\n");
  });

  test("unknown code without body or header", async () => {
    const fake = new FakeFetch(() => new Response(null, { status: 502, statusText: "Bad Gateway" }));
    const error = await rejection(new Smolvm({ fetch: fake.fetch }).sandbox.delete("sbx-1"));
    assert.equal(error.status, 502);
    assert.equal(error.code, "unknown");
    assert.equal(error.detail, "Bad Gateway");
  });

  test("network failure is not a SmolvmError", async () => {
    const smolvm = new Smolvm({
      fetch: async () => {
        throw new TypeError("fetch failed");
      },
    });
    await assert.rejects(smolvm.sandbox.list(), (error: unknown) => {
      assert.ok(error instanceof TypeError);
      assert.ok(!(error instanceof SmolvmError));
      return true;
    });
  });
});

describe("execStream", () => {
  test("yields output then exit", async () => {
    const fake = new FakeFetch(() =>
      sse([
        event("stdout", { data: "1\n" }),
        ": keep-alive\n\n",
        event("stderr", { data: "warn\n" }),
        event("stdout", { data: "2\n" }),
        event("exit", { exit_code: 4, duration_ms: 12, timed_out: false, signal: null }),
      ]),
    );
    const smolvm = new Smolvm({ fetch: fake.fetch });
    const chunks = await collect(smolvm.sandbox.execStream("sbx-1", { command: "x" }));

    assert.deepEqual(chunks, [
      { type: "stdout", data: "1\n" },
      { type: "stderr", data: "warn\n" },
      { type: "stdout", data: "2\n" },
      { type: "exit", exitCode: 4, durationMs: 12, timedOut: false, signal: null },
    ]);
    assert.equal(fake.last.method, "POST");
    assert.equal(new URL(fake.last.url).pathname, "/sandboxes/sbx-1/exec/stream");
    assert.deepEqual(JSON.parse(fake.lastBody), { command: "x" });
  });

  test("timeout ends with timedOut exit", async () => {
    const fake = new FakeFetch(() =>
      sse([event("exit", { exit_code: 137, duration_ms: 1000, timed_out: true, signal: 9 })]),
    );
    const chunks = await collect(new Smolvm({ fetch: fake.fetch }).sandbox.execStream("sbx-1", { command: "x" }));
    assert.deepEqual(chunks, [{ type: "exit", exitCode: 137, durationMs: 1000, timedOut: true, signal: 9 }]);
  });

  test("skips unknown events", async () => {
    const fake = new FakeFetch(() =>
      sse([event("progress", { x: 1 }), event("exit", { exit_code: 0, duration_ms: 1, timed_out: false })]),
    );
    const chunks = await collect(new Smolvm({ fetch: fake.fetch }).sandbox.execStream("sbx-1", { command: "x" }));
    assert.deepEqual(chunks, [{ type: "exit", exitCode: 0, durationMs: 1, timedOut: false, signal: null }]);
  });

  test("error event raises SmolvmError", async () => {
    const fake = new FakeFetch(() =>
      sse([
        event("stdout", { data: "partial" }),
        event("error", { detail: "sandbox sbx-1 was deleted while the command ran", code: "sandbox_not_found" }),
      ]),
    );
    const received: ExecStreamChunk[] = [];
    const error = await rejection(
      (async () => {
        for await (const chunk of new Smolvm({ fetch: fake.fetch }).sandbox.execStream("sbx-1", { command: "x" })) {
          received.push(chunk);
        }
      })(),
    );
    assert.deepEqual(received, [{ type: "stdout", data: "partial" }]);
    assert.equal(error.status, 404);
    assert.equal(error.code, "sandbox_not_found");
    assert.match(error.detail, /deleted while the command ran/);
    assert.equal(error.headers, undefined);
  });

  test("error response raises before any chunk", async () => {
    const fake = new FakeFetch(() => errorResponse(409, "invalid_state", "sandbox sbx-1 is stopped"));
    const error = await rejection(collect(new Smolvm({ fetch: fake.fetch }).sandbox.execStream("sbx-1", { command: "x" })));
    assert.equal(error.status, 409);
    assert.equal(error.code, "invalid_state");
  });

  test("stream ending before exit raises", async () => {
    const fake = new FakeFetch(() => sse([event("stdout", { data: "1" })]));
    await assert.rejects(
      collect(new Smolvm({ fetch: fake.fetch }).sandbox.execStream("sbx-1", { command: "x" })),
      /ended before its exit event/,
    );
  });

  test("breaking out aborts the request", async () => {
    const fake = new FakeFetch(() => sse([event("stdout", { data: "started\n" })], { end: false }));
    const smolvm = new Smolvm({ fetch: fake.fetch });
    for await (const chunk of smolvm.sandbox.execStream("sbx-1", { command: "sleep 300" })) {
      assert.deepEqual(chunk, { type: "stdout", data: "started\n" });
      break;
    }
    assert.equal(fake.last.signal.aborted, true);
  });

  test("caller signal aborts the request", async () => {
    const fake = new FakeFetch(() => sse([event("stdout", { data: "started\n" })], { end: false }));
    const controller = new AbortController();
    const stream = new Smolvm({ fetch: fake.fetch }).sandbox.execStream("sbx-1", { command: "sleep 300" }, {
      signal: controller.signal,
    });
    const first = await stream.next();
    assert.deepEqual(first.value, { type: "stdout", data: "started\n" });
    controller.abort();
    assert.equal(fake.last.signal.aborted, true);
    await stream.return();
  });
});

describe("events", () => {
  test("yields lifecycle and lagged events", async () => {
    const created = { type: "sandbox.created", time: "2026-12-01T10:00:00Z", sandbox_id: "sbx-1" };
    const fake = new FakeFetch(() =>
      sse([`id: 1\n${event("sandbox.created", created)}`, 'event: lagged\ndata: {"missed":3}\n\n']),
    );
    const received = [];
    for await (const item of new Smolvm({ fetch: fake.fetch }).events()) {
      received.push(item);
    }
    assert.deepEqual(received, [
      { ...created, id: "1" },
      { type: "lagged", missed: 3 },
    ]);
    assert.equal(new URL(fake.last.url).pathname, "/sdk/v1/events");
  });
});
