import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { ServerSentEventParser, readServerSentEvents, type ServerSentEvent } from "../src/sse.js";

function parseAll(chunks: string[]): ServerSentEvent[] {
  const parser = new ServerSentEventParser();
  return chunks.flatMap((chunk) => parser.feed(chunk));
}

function byteStream(chunks: Uint8Array[]): ReadableStream<Uint8Array> {
  return new ReadableStream({
    start(controller) {
      for (const chunk of chunks) {
        controller.enqueue(chunk);
      }
      controller.close();
    },
  });
}

async function collect(stream: ReadableStream<Uint8Array>): Promise<ServerSentEvent[]> {
  const events: ServerSentEvent[] = [];
  for await (const event of readServerSentEvents(stream)) {
    events.push(event);
  }
  return events;
}

const EXEC_STREAM =
  'event: stdout\ndata: {"data":"1\\n"}\n\n' +
  ": keep-alive\n\n" +
  'event: stderr\ndata: {"data":"oops"}\n\n' +
  'event: exit\ndata: {"exit_code":0,"duration_ms":5,"timed_out":false,"signal":null}\n\n';

describe("ServerSentEventParser", () => {
  test("parses named events", () => {
    const events = parseAll([EXEC_STREAM]);
    assert.deepEqual(
      events.map((e) => e.event),
      ["stdout", "stderr", "exit"],
    );
    assert.equal(events[0]?.data, '{"data":"1\\n"}');
    assert.equal(events[2]?.data, '{"exit_code":0,"duration_ms":5,"timed_out":false,"signal":null}');
  });

  test("same events for every chunk split", () => {
    const whole = parseAll([EXEC_STREAM]);
    for (let split = 0; split <= EXEC_STREAM.length; split++) {
      const events = parseAll([EXEC_STREAM.slice(0, split), EXEC_STREAM.slice(split)]);
      assert.deepEqual(events, whole, `split at ${split}`);
    }
    assert.deepEqual(parseAll([...EXEC_STREAM]), whole, "one character at a time");
  });

  test("accepts CRLF and CR line endings", () => {
    const expected = [{ event: "a", data: "1", id: "" }, { event: "b", data: "2", id: "" }];
    assert.deepEqual(parseAll(["event: a\r\ndata: 1\r\n\r\nevent: b\r\ndata: 2\r\n\r\n"]), expected);
    assert.deepEqual(parseAll(["event: a\rdata: 1\r\revent: b\rdata: 2\r\r"]), expected);
  });

  test("CRLF split between chunks is one line end", () => {
    const events = parseAll(["data: 1\r", "\n", "\r", "\ndata: 2\r", "\n\r\n"]);
    assert.deepEqual(events, [
      { event: "message", data: "1", id: "" },
      { event: "message", data: "2", id: "" },
    ]);
  });

  test("joins multi-line data with newlines", () => {
    const events = parseAll(["data: first\ndata:second\ndata\ndata:  indented\n\n"]);
    assert.equal(events.length, 1);
    assert.equal(events[0]?.data, "first\nsecond\n\n indented");
  });

  test("defaults event type to message", () => {
    const events = parseAll(["data: x\n\n"]);
    assert.equal(events[0]?.event, "message");
  });

  test("resets event type after dispatch", () => {
    const events = parseAll(["event: stdout\ndata: 1\n\ndata: 2\n\n"]);
    assert.deepEqual(
      events.map((e) => e.event),
      ["stdout", "message"],
    );
  });

  test("skips comments and events without data", () => {
    const events = parseAll([": comment\n\nevent: empty\n\n:\n\ndata: real\n\n"]);
    assert.deepEqual(events, [{ event: "message", data: "real", id: "" }]);
  });

  test("keeps last event id", () => {
    const events = parseAll(["id: 7\ndata: a\n\ndata: b\n\nid: 8\ndata: c\n\nid: bad\0\ndata: d\n\n"]);
    assert.deepEqual(
      events.map((e) => e.id),
      ["7", "7", "8", "8"],
    );
  });

  test("ignores retry and unknown fields", () => {
    const events = parseAll(["retry: 1000\nfoo: bar\ndata: x\n\n"]);
    assert.deepEqual(events, [{ event: "message", data: "x", id: "" }]);
  });

  test("keeps an incomplete event pending", () => {
    const parser = new ServerSentEventParser();
    assert.deepEqual(parser.feed("event: exit\ndata: {}\n"), []);
    assert.deepEqual(parser.feed("\n"), [{ event: "exit", data: "{}", id: "" }]);
  });
});

describe("readServerSentEvents", () => {
  test("decodes characters split across byte chunks", async () => {
    const bytes = new TextEncoder().encode("data: héllo → 🦀\n\n");
    for (let split = 0; split <= bytes.length; split++) {
      const events = await collect(byteStream([bytes.slice(0, split), bytes.slice(split)]));
      assert.deepEqual(events, [{ event: "message", data: "héllo → 🦀", id: "" }], `split at ${split}`);
    }
  });

  test("strips a leading byte order mark", async () => {
    const bytes = new TextEncoder().encode("\uFEFFevent: a\ndata: 1\n\n");
    const events = await collect(byteStream([bytes]));
    assert.deepEqual(events, [{ event: "a", data: "1", id: "" }]);
  });

  test("discards an event cut off by the end of stream", async () => {
    const bytes = new TextEncoder().encode("data: 1\n\ndata: 2\n");
    const events = await collect(byteStream([bytes]));
    assert.deepEqual(events, [{ event: "message", data: "1", id: "" }]);
  });

  test("leaving the loop cancels the stream", async () => {
    let cancelled = false;
    const stream = new ReadableStream<Uint8Array>({
      pull(controller) {
        controller.enqueue(new TextEncoder().encode("data: tick\n\n"));
      },
      cancel() {
        cancelled = true;
      },
    });
    for await (const event of readServerSentEvents(stream)) {
      assert.equal(event.data, "tick");
      break;
    }
    assert.equal(cancelled, true);
  });
});
